// The clients of haproxy's two control sockets: the admin socket (runtime API: server changes, sessions)
// and the master CLI (`show proc`: the reload counter and the workers). One request per connection, each
// bounded in time; parsing the answers is pure.

import { connect } from 'node:net';

export const REQUEST_TIMEOUT_MS = 2_000;

// One request, the whole answer; rejects on a socket error or after timeoutMs.
export function request(socket: string, command: string, timeoutMs = REQUEST_TIMEOUT_MS): Promise<string> {
  return new Promise((resolve, reject) => {
    const connection = connect(socket);
    let answer = '';
    connection.setTimeout(timeoutMs, () => connection.destroy(new Error(`${socket}: no answer within ${timeoutMs} ms`)));
    connection.on('data', (data) => (answer += data.toString()));
    connection.on('end', () => resolve(answer));
    connection.on('error', reject);
    connection.end(command + '\n');
  });
}

// What haproxy answers when a runtime command did what it was asked; anything else is a refusal.
const DONE = /^(New server registered\.|Server deleted\.|IP changed from .*|no need to change the addr.*|.*port changed from .*)$/;

// Commands sent as one request, which haproxy runs back to back: a failover's fence and enable are one step.
// Undefined when haproxy answered each as done, else what it answered otherwise.
export async function runtimeCommands(socket: string, commands: readonly string[]): Promise<string | undefined> {
  try {
    const answer = await request(socket, commands.join('; '));
    const refused = answer.split('\n').map((line) => line.trim()).filter((line) => line !== '' && !DONE.test(line));
    return refused.length === 0 ? undefined : refused.join(' | ');
  } catch (err) {
    return (err as Error).message;
  }
}

// Current sessions per server of one proxy, from `show stat`.
export async function serverSessions(socket: string, proxy: string): Promise<Map<string, number>> {
  const csv = await request(socket, 'show stat -1 4 -1');
  const sessions = new Map<string, number>();
  for (const line of csv.split('\n')) {
    const [name, server, , , current] = line.split(',');
    if (name === proxy && server !== undefined && current !== undefined) sessions.set(server, Number(current));
  }
  return sessions;
}

// The master's view of its processes. `reloads` counts every reload the master did, `failedReloads` those whose
// config did not load; a worker's own `reloads` counts the reloads it has outlived (0: the newest).
export interface ProcessList {
  masterPid: number;
  reloads: number;
  failedReloads: number;
  workers: { pid: number; reloads: number }[];
}

export function parseShowProc(text: string): ProcessList | undefined {
  let master: Omit<ProcessList, 'workers'> | undefined;
  const workers: ProcessList['workers'] = [];
  for (const line of text.split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (fields[1] === 'master') {
      const failed = /\[failed: (\d+)\]/.exec(line);
      master = { masterPid: Number(fields[0]), reloads: Number(fields[2]), failedReloads: failed ? Number(failed[1]) : 0 };
    } else if (fields[1] === 'worker') {
      workers.push({ pid: Number(fields[0]), reloads: Number(fields[2]) });
    }
  }
  if (master === undefined || !Number.isInteger(master.reloads)) return undefined;
  return { ...master, workers };
}

// `show proc` on the master CLI; undefined while the master does not answer (it is loading, or gone).
export async function showProc(masterSocket: string, timeoutMs = REQUEST_TIMEOUT_MS): Promise<ProcessList | undefined> {
  return parseShowProc(await request(masterSocket, 'show proc', timeoutMs).catch(() => ''));
}
