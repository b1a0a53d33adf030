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
  close(): Promise<void>;
}

// With dropAfterMs, every connection is reset that long after it opens, as a flapping link would.
export async function startRelay(target: string, options: { dropAfterMs?: number } = {}): Promise<Relay> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const listenPort = await freePort();
  let silent = false;
  let delayMs = 0;
  let accepted = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    accepted++;
    const upstream = connect(port, host);
    if (options.dropAfterMs !== undefined) setTimeout(() => client.resetAndDestroy(), options.dropAfterMs).unref();
    for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
      sockets.add(from);
      // When each direction's last held chunk goes out: a later chunk never overtakes it, whatever the delay
      // became in between (TCP does not reorder a stream's bytes, and a relay that did would corrupt it).
      let lastOutAt = 0;
      from.on('data', (data) => {
        if (silent) return;
        const outAt = Math.max(performance.now() + delayMs, lastOutAt);
        if (outAt <= performance.now()) return void to.write(data);
        lastOutAt = outAt;
        setTimeout(() => !to.destroyed && to.write(data), outAt - performance.now());
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
