// A load client in its own process: opens new connections to 127.0.0.1:PORT as fast as CONCURRENCY
// allows, each read until the backend's greeting, then closed. Runs until stdin closes or DURATION_MS
// passes, then prints {"ok":N,"failed":N,"seconds":S} on stdout.

import { connect } from 'node:net';

const [port, durationMs, concurrency] = process.argv.slice(2).map(Number) as [number, number, number];
let ok = 0;
let failed = 0;
let running = true;
const started = performance.now();
const finish = () => {
  if (!running) return;
  running = false;
};
setTimeout(finish, durationMs);
process.stdin.on('end', finish).resume();

const once = () =>
  new Promise<void>((resolve) => {
    const socket = connect(port, '127.0.0.1');
    // It speaks first, so that recording backends can tell a session from a health check (harness/recorder.ts).
    socket.write('hello\n');
    let greeted = false;
    socket.setTimeout(3000, () => socket.destroy());
    socket.on('data', () => {
      greeted = true;
      socket.destroy();
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      if (greeted) ok++;
      else failed++;
      resolve();
    });
  });

await Promise.all(
  Array.from({ length: concurrency }, async () => {
    while (running) await once();
  }),
);
process.stdout.write(JSON.stringify({ ok, failed, seconds: (performance.now() - started) / 1000 }) + '\n');
process.exit(0);
