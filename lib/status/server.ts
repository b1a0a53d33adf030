// The HTTP side of --status: GET and HEAD only, each path answered by `respond`, a failure of it a 500 with its
// message; never cached. It knows nothing of what it serves (lib/status/status.ts).

import { createServer } from 'node:http';
import type { Socket } from 'node:net';

// A scraper, a health check and a person or two. Past this many connections the oldest that has no request
// under way is closed for each new one: a flood of idle connections takes neither the file descriptors a
// failover needs nor the place of the next health check. Idle ones are closed after IDLE_MS anyway.
const MAX_CONNECTIONS = 32;
const IDLE_MS = 10_000;

export interface StatusAnswer {
  code: number;
  type: string;
  body: string;
}

export interface StatusServer {
  close(): Promise<void>;
}

export function serveStatus(host: string, port: number, respond: (path: string) => Promise<StatusAnswer>): Promise<StatusServer> {
  const server = createServer((request, response) => {
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    respond(new URL(request.url ?? '/', 'http://status').pathname).then(
      ({ code, type, body }) => response.writeHead(code, { 'content-type': type, 'cache-control': 'no-store' }).end(request.method === 'HEAD' ? undefined : body),
      (err: Error) => response.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
    );
  });
  // Open connections, oldest first, each with whether a request is under way on it.
  const open = new Map<Socket, { busy: boolean }>();
  server.on('connection', (socket: Socket) => {
    open.set(socket, { busy: false });
    socket.once('close', () => open.delete(socket));
    if (open.size <= MAX_CONNECTIONS) return;
    for (const [idle, state] of open) {
      if (state.busy || idle === socket) continue;
      idle.destroy();
      break;
    }
  });
  server.on('request', (request, response) => {
    const state = open.get(request.socket);
    if (state === undefined) return;
    state.busy = true;
    response.once('close', () => (state.busy = false));
  });
  server.headersTimeout = IDLE_MS;
  server.requestTimeout = IDLE_MS;
  server.keepAliveTimeout = IDLE_MS / 2;
  server.setTimeout(IDLE_MS, (socket) => socket.destroy());
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve({ close: () => new Promise((done) => server.close(() => done())) }));
  });
}
