// Loopback networking for tests: free ports, small named TCP backends, and a client that asks who answers.
// Only 127.0.0.0/8 is ever a target.

import { createServer, connect, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, host, resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface Backend {
  name: string;
  host: string;
  port: number;
  // Connections currently open to this backend.
  sockets: Set<Socket>;
  // Connections it has accepted since it started.
  accepted(): number;
  close(): Promise<void>;
}

// A backend that greets every connection with its name and keeps it open until the client closes, as a
// database does: it reads what comes, and closes its side when the client (or haproxy) closes.
export async function startBackend(name: string, host: string, port: number): Promise<Backend> {
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server: Server = createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.resume();
    socket.write(`${name}\n`);
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
  return {
    name,
    host,
    port,
    sockets,
    accepted: () => accepted,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

// Connects, returns the first line the far side sends, or '' if it closes (or says nothing) first.
export function whoAnswers(port: number, host = '127.0.0.1', timeoutMs = 3000): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, host);
    // Clients speak first, so that recording backends can tell a session from a health check (recorder.ts).
    socket.write('hello\n');
    let received = '';
    const done = (answer: string) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => done(''), timeoutMs);
    socket.on('data', (data) => {
      received += data.toString();
      if (received.includes('\n')) done(received.split('\n')[0]!);
    });
    socket.on('error', () => done(''));
    socket.on('close', () => done(''));
  });
}

// An open session: connects and reads the greeting, then stays open until closed by either side.
export interface Session {
  greeting: string;
  closed: Promise<void>;
  isClosed(): boolean;
  close(): void;
}

export async function openSession(port: number, host = '127.0.0.1'): Promise<Session> {
  const socket = connect(port, host);
  socket.write('hello\n');
  let closed = false;
  const closedPromise = new Promise<void>((resolve) => socket.on('close', () => ((closed = true), resolve())));
  socket.on('error', () => {});
  const greeting = await new Promise<string>((resolve) => {
    let received = '';
    socket.on('data', (data) => {
      received += data.toString();
      if (received.includes('\n')) resolve(received.split('\n')[0]!);
    });
    socket.on('close', () => resolve(''));
  });
  return { greeting, closed: closedPromise, isClosed: () => closed, close: () => socket.destroy() };
}

// Polls `probe` until it returns a value `accept` likes; fails with the last value after `timeoutMs`.
export async function eventually<T>(probe: () => Promise<T> | T, accept: (value: T) => boolean, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T;
  for (;;) {
    last = await probe();
    if (accept(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last value: ${JSON.stringify(last)}`);
    await sleep(50);
  }
}

// Asks `count` times and returns the answers, to see how connections spread.
export async function answers(port: number, count: number): Promise<string[]> {
  const result: string[] = [];
  for (let i = 0; i < count; i++) result.push(await whoAnswers(port));
  return result;
}

// Who answered `count` new connections through `port`: each name once, sorted.
export async function answeredBy(port: number, count: number): Promise<string[]> {
  return [...new Set(await answers(port, count))].sort();
}

// Leaves about `count` closed connections in TIME_WAIT (for a minute), as a busy host has them: the kernel's
// connection table that lib/haproxy/sockets.ts reads grows by as many rows.
export async function leaveTimeWait(count: number, host = '127.0.0.9'): Promise<void> {
  const server = createServer((socket) => socket.end());
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, host, resolve));
  const { port } = server.address() as { port: number };
  let made = 0;
  const once = () =>
    new Promise<void>((resolve) => {
      // From many source addresses: one has fewer ephemeral ports than a busy host has connections.
      const socket = connect({ port, host, localAddress: `127.0.1.${1 + (made++ % 200)}` });
      socket.on('data', () => {}).on('end', () => socket.end()).on('close', () => resolve()).on('error', () => resolve());
    });
  try {
    while (made < count) await Promise.all(Array.from({ length: 200 }, once));
  } finally {
    server.close();
  }
}
