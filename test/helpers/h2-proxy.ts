// A gRPC-aware proxy in front of one etcd endpoint (HTTP/2 without TLS, call by call), that can go deaf on
// watches: it keeps every watch stream open but stops passing etcd's answers on, while every other call goes
// through. What a proxy that drops a stream, or a server that stops sending on one, looks like to a client.

import { connect, constants, createServer, type ClientHttp2Session, type Http2Server, type ServerHttp2Session } from 'node:http2';
import { freePort } from './net.ts';

export interface H2Proxy {
  endpoint: string;
  // Watch responses are dropped from now on (streams stay open), until unmuted.
  muteWatches(): void;
  unmuteWatches(): void;
  // Watch streams opened through the proxy so far.
  watchStreams(): number;
  close(): Promise<void>;
}

const WATCH = '/etcdserverpb.Watch/Watch';

export async function startH2Proxy(target: string): Promise<H2Proxy> {
  const port = await freePort();
  let upstream: ClientHttp2Session | undefined;
  const session = () => {
    if (!upstream || upstream.closed || upstream.destroyed) upstream = connect(`http://${target}`).on('error', () => {});
    return upstream;
  };
  let muted = false;
  let watches = 0;
  const server: Http2Server = createServer();
  const sessions = new Set<ServerHttp2Session>();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  server.on('stream', (down, headers) => {
    const path = headers[constants.HTTP2_HEADER_PATH] as string;
    const watch = path === WATCH;
    if (watch) watches++;
    const forward = Object.fromEntries(Object.entries(headers).filter(([name]) => !name.startsWith(':') || name === ':path' || name === ':method'));
    const up = session().request(forward, { endStream: false });
    up.on('response', (responseHeaders) => {
      const { [constants.HTTP2_HEADER_STATUS]: status, ...rest } = responseHeaders;
      if (!down.headersSent && !down.destroyed) down.respond({ ':status': status ?? 200, ...rest }, { waitForTrailers: true });
    });
    up.on('data', (chunk) => {
      if (watch && muted) return;
      if (!down.destroyed) down.write(chunk);
    });
    let trailers = {};
    up.on('trailers', (sent) => (trailers = sent));
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
  return {
    endpoint: `127.0.0.1:${port}`,
    muteWatches: () => {
      muted = true;
    },
    unmuteWatches: () => {
      muted = false;
    },
    watchStreams: () => watches,
    close: async () => {
      upstream?.destroy();
      for (const s of sessions) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
