// The recording backends' own process (see recorder.ts): listens as each NAME@HOST:PORT[/deaf] given, greets every
// connection with its name, and writes one line per accept and per close to stdout, timed by the machine's
// monotonic clock (CLOCK_MONOTONIC, the clock every process here reads with process.hrtime.bigint()).
// A close is the first sign of it: the peer's FIN, a reset, or our own end. A deaf backend reads nothing after
// its greeting, as a database busy with a long statement: it sees no close either. Stops when stdin closes.

import { createServer, type Socket } from 'node:net';

const sockets = new Set<Socket>();
let nextId = 0;
const out: string[] = [];
const say = (line: string) => {
  out.push(line);
  if (out.length >= 256) flush();
};
const flush = () => {
  if (out.length > 0) process.stdout.write(out.splice(0).join('\n') + '\n');
};
setInterval(flush, 50).unref();

const listening = process.argv.slice(2).map((spec) => {
  const match = /^([^@]+)@(.+):(\d+)(\/deaf)?$/.exec(spec);
  if (!match) throw new Error(`not NAME@HOST:PORT[/deaf]: ${spec}`);
  const [, name, host, port, deaf] = match as unknown as [string, string, string, string, string | undefined];
  const server = createServer({ pauseOnConnect: deaf !== undefined }, (socket) => {
    const id = ++nextId;
    say(`accept ${process.hrtime.bigint()} ${name} ${id}`);
    sockets.add(socket);
    if (deaf) {
      socket.on('error', () => {});
      socket.write(`${name}\n`);
      return;
    }
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      say(`close ${process.hrtime.bigint()} ${name} ${id}`);
    };
    // The first sign of a close, as soon as it is read: 'end' is a FIN, 'error' a reset. ('close' comes only
    // in a later phase of the event loop, after other connections' events read in the same turn.)
    socket.on('end', () => {
      close();
      socket.destroy();
    });
    socket.on('error', close);
    socket.on('close', () => {
      close();
      sockets.delete(socket);
    });
    // A client says something first; a health check never does. The first byte marks a session.
    let spoke = false;
    socket.on('data', () => {
      if (spoke) return;
      spoke = true;
      say(`session ${process.hrtime.bigint()} ${name} ${id}`);
    });
    socket.write(`${name}\n`);
  });
  return new Promise<void>((resolve, reject) => server.once('error', reject).listen(Number(port), host, resolve));
});
await Promise.all(listening);
process.stdout.write('ready\n');
process.stdin.on('end', () => {
  for (const socket of sockets) socket.destroy();
  flush();
  process.exit(0);
});
process.stdin.resume();
