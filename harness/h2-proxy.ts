// A gRPC-aware proxy in front of one etcd endpoint (HTTP/2 without TLS, call by call) that can break watch
// streams on purpose, one gRPC message at a time: go deaf (keep every watch stream open but pass none of etcd's
// answers on), swap two of etcd's watch responses, or lose one. What a proxy or a server with a bug, or a
// relay that reorders, looks like to a client; every other call goes through untouched, and counted.

import { connect, constants, createServer, type ClientHttp2Session, type Http2Server, type ServerHttp2Session } from 'node:http2';
import { freePort } from './net.ts';

export interface H2Proxy {
  endpoint: string;
  // Watch responses are dropped from now on (streams stay open), until unmuted.
  muteWatches(): void;
  unmuteWatches(): void;
  // The next watch response that holds `first` (a key, say) is held back and passed on right after the next
  // one that holds `second`: the two arrive swapped. Resolves when they have been passed on.
  swapNext(first: string, second: string): Promise<void>;
  // The next watch response that holds `text` is dropped. Resolves when it has been.
  loseNext(text: string): Promise<void>;
  // Resolves when the next watch response that holds `text` has been passed on.
  passed(text: string): Promise<void>;
  // Watch streams opened through the proxy so far, and open now.
  watchStreams(): number;
  openWatchStreams(): number;
  // Calls made through the proxy to a gRPC method ('/etcdserverpb.Auth/Authenticate', say), and calls that etcd
  // answered with an error whose message holds `text`.
  calls(method: string): number;
  errors(text: string): number;
  close(): Promise<void>;
}

const WATCH = '/etcdserverpb.Watch/Watch';

// A plan for the next watch response that holds some text: dropped, or held until one that holds `then`.
interface Plan {
  text: Buffer;
  kind: 'swap' | 'lose' | 'pass';
  then?: Buffer;
  // The message held, and the stream it came on (a swap is within one stream).
  held?: { message: Buffer; stream: number };
  done(): void;
}

export async function startH2Proxy(target: string): Promise<H2Proxy> {
  const port = await freePort();
  let upstream: ClientHttp2Session | undefined;
  const session = () => {
    if (!upstream || upstream.closed || upstream.destroyed) upstream = connect(`http://${target}`).on('error', () => {});
    return upstream;
  };
  let muted = false;
  let watches = 0;
  let openWatches = 0;
  const calls = new Map<string, number>();
  const errorMessages: string[] = [];
  const plans: Plan[] = [];
  const server: Http2Server = createServer();
  const sessions = new Set<ServerHttp2Session>();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });

  // What of a watch response goes on now, in order, as the plans say.
  const passWatchMessage = (message: Buffer, stream: number): Buffer[] => {
    if (muted) return [];
    const plan = plans.find((p) => (p.held === undefined ? message.includes(p.text) : p.held.stream === stream && message.includes(p.then!)));
    if (plan === undefined) return [message];
    if (plan.kind === 'pass') {
      plans.splice(plans.indexOf(plan), 1);
      setImmediate(plan.done);
      return [message];
    }
    if (plan.kind === 'lose') {
      plans.splice(plans.indexOf(plan), 1);
      plan.done();
      return [];
    }
    if (plan.held === undefined) {
      plan.held = { message, stream };
      return [];
    }
    plans.splice(plans.indexOf(plan), 1);
    setImmediate(plan.done);
    return [message, plan.held.message];
  };

  server.on('stream', (down, headers) => {
    const path = headers[constants.HTTP2_HEADER_PATH] as string;
    const watch = path === WATCH;
    calls.set(path, (calls.get(path) ?? 0) + 1);
    // etcd's error is in the trailers, or in the headers of an answer that has nothing else.
    const noteError = (fields: Record<string, unknown>) => {
      const message = fields['grpc-message'];
      if (typeof message === 'string' && fields['grpc-status'] !== '0') errorMessages.push(decodeURIComponent(message));
    };
    const streamId = watch ? ++watches : 0;
    if (watch) {
      openWatches++;
      down.once('close', () => openWatches--);
    }
    const forward = Object.fromEntries(Object.entries(headers).filter(([name]) => !name.startsWith(':') || name === ':path' || name === ':method'));
    const up = session().request(forward, { endStream: false });
    up.on('response', (responseHeaders) => {
      noteError(responseHeaders);
      const { [constants.HTTP2_HEADER_STATUS]: status, ...rest } = responseHeaders;
      if (!down.headersSent && !down.destroyed) down.respond({ ':status': status ?? 200, ...rest }, { waitForTrailers: true });
    });
    // A watch stream is cut into gRPC messages (a flag byte and a 4-byte length, then the message).
    let pending = Buffer.alloc(0);
    up.on('data', (chunk: Buffer) => {
      if (down.destroyed) return;
      if (!watch) return void down.write(chunk);
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 5 && pending.length >= 5 + pending.readUInt32BE(1)) {
        const length = 5 + pending.readUInt32BE(1);
        const message = pending.subarray(0, length);
        pending = pending.subarray(length);
        for (const out of passWatchMessage(Buffer.from(message), streamId)) down.write(out);
      }
    });
    let trailers = {};
    up.on('trailers', (sent) => {
      noteError(sent);
      trailers = sent;
    });
    down.on('wantTrailers', () => down.sendTrailers(trailers));
    up.on('end', () => {
      if (!down.destroyed) down.end();
    });
    up.on('error', () => down.destroy());
    down.on('data', (chunk) => up.write(chunk));
    down.on('end', () => up.end());
    down.on('error', () => up.destroy());
    down.on('close', () => up.destroy());
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const plan = (kind: Plan['kind'], text: string, then?: string) =>
    new Promise<void>((done) => plans.push({ kind, text: Buffer.from(text), ...(then !== undefined ? { then: Buffer.from(then) } : {}), done }));
  return {
    endpoint: `127.0.0.1:${port}`,
    muteWatches: () => {
      muted = true;
    },
    unmuteWatches: () => {
      muted = false;
    },
    swapNext: (first, second) => plan('swap', first, second),
    loseNext: (text) => plan('lose', text),
    passed: (text) => plan('pass', text),
    watchStreams: () => watches,
    openWatchStreams: () => openWatches,
    calls: (method) => calls.get(method) ?? 0,
    errors: (text) => errorMessages.filter((message) => message.includes(text)).length,
    close: async () => {
      upstream?.destroy();
      for (const s of sessions) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
