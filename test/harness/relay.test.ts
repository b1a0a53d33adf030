// The test relay itself (harness/relay.ts): it must never reorder a stream, or the faults it makes are not
// the network's. A numbered stream goes through it while its delay drops from 300 ms to none.

import { createServer, connect, type Socket } from 'node:net';
import * as assert from 'uvu/assert';
import { limitedSuite, within } from '../../harness/limits.ts';
import { freePort } from '../../harness/net.ts';
import { startRelay } from '../../harness/relay.ts';

const test = limitedSuite('the test relay');

test('keeps a stream in order when its delay drops while chunks are held (5 runs)', async () => {
  const port = await freePort();
  let received = '';
  const accepted = new Set<Socket>();
  const server = createServer((socket) => {
    accepted.add(socket);
    socket.on('data', (data) => (received += data));
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  try {
    for (let run = 0; run < 5; run++) {
      received = '';
      const relay = await startRelay(`127.0.0.1:${port}`);
      const socket: Socket = connect(Number(relay.endpoint.split(':')[1]), '127.0.0.1');
      try {
        await within(new Promise((resolve) => socket.once('connect', resolve)), 2000, 'connected');
        socket.setNoDelay(true);
        relay.delay(300);
        let sent = 0;
        const began = performance.now();
        // One numbered line every millisecond or so; the delay drops to 0 while 300 ms of them are held.
        while (performance.now() - began < 800) {
          if (sent === 400) relay.delay(0);
          socket.write(`${String(sent++).padStart(6, '0')}\n`);
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
        const expected = sent;
        await within(
          (async () => {
            while (received.split('\n').length - 1 < expected) await new Promise((resolve) => setTimeout(resolve, 10));
          })(),
          3000,
          'every line through',
        );
        const lines = received.trim().split('\n').map(Number);
        const inversions = lines.filter((n, i) => i > 0 && n < lines[i - 1]!).length;
        assert.is(inversions, 0, `run ${run + 1}: ${inversions} line(s) out of order`);
        assert.ok(relay.queuedBehind() > 0, `run ${run + 1}: no chunk came while others were held with the delay at 0: the race was not reached`);
      } finally {
        socket.destroy();
        await relay.close();
      }
    }
  } finally {
    for (const socket of accepted) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
});

test.run();
