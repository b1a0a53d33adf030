// A loopback TCP relay that can go silent: it keeps connections open but forwards no byte either way,
// as a network partition does (no reset, no close), and can heal; and that can add latency.

import { createServer, connect, type Socket } from 'node:net';
import { freePort } from './net.ts';

export interface Relay {
  endpoint: string;
  // Connections accepted so far.
  connections(): number;
  partition(): void;
  heal(): void;
  // Every byte is held this long each way from now on (0: none).
  delay(ms: number): void;
  // Chunks that came while the delay was 0 but earlier ones were still held, and so waited behind them: each
  // is one a relay that wrote at once would have let overtake.
  queuedBehind(): number;
  close(): Promise<void>;
}

// With dropAfterMs, every connection is reset that long after it opens, as a flapping link would.
export async function startRelay(target: string, options: { dropAfterMs?: number } = {}): Promise<Relay> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const listenPort = await freePort();
  let silent = false;
  let delayMs = 0;
  let accepted = 0;
  let queuedBehind = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    accepted++;
    const upstream = connect(port, host);
    if (options.dropAfterMs !== undefined) setTimeout(() => client.resetAndDestroy(), options.dropAfterMs).unref();
    for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
      sockets.add(from);
      // Each direction's held chunks, oldest first, each with the time it is due: a chunk goes out at once only
      // when none is held, so a drop of the delay never lets a later chunk overtake an earlier one (TCP does
      // not reorder a stream's bytes, and a relay that did would hand its peer a broken stream).
      const held: { dueAt: number; data: Buffer }[] = [];
      let timer: NodeJS.Timeout | undefined;
      const flushWhenDue = () => (timer = setTimeout(flush, Math.max(0, held[0]!.dueAt - performance.now())));
      const flush = () => {
        timer = undefined;
        while (held.length > 0 && held[0]!.dueAt <= performance.now()) {
          const { data } = held.shift()!;
          if (!to.destroyed) to.write(data);
        }
        if (held.length > 0) flushWhenDue();
      };
      from.on('data', (data: Buffer) => {
        if (silent) return;
        if (held.length === 0 && delayMs === 0) return void to.write(data);
        if (delayMs === 0) queuedBehind++;
        held.push({ dueAt: Math.max(performance.now() + delayMs, held.at(-1)?.dueAt ?? 0), data });
        if (timer === undefined) flushWhenDue();
      });
      from.on('error', () => to.destroy());
      from.on('close', () => {
        sockets.delete(from);
        to.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(listenPort, '127.0.0.1', resolve));
  return {
    endpoint: `127.0.0.1:${listenPort}`,
    connections: () => accepted,
    partition: () => {
      silent = true;
    },
    delay: (ms) => {
      delayMs = ms;
    },
    queuedBehind: () => queuedBehind,
    // Bytes dropped while silent leave those streams broken: end them, as a peer timing out would.
    heal: () => {
      silent = false;
      for (const socket of sockets) socket.destroy();
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
