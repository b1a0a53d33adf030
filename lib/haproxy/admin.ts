// The clients of haproxy's two control sockets: the admin socket (runtime API: server changes, sessions)
// and the master CLI (`show proc`: the reload counter and the workers). One request per connection, each
// bounded in time; parsing the answers is pure. A worker command goes to the admin socket, or, when that path
// is lost (its runtime dir deleted), through the master CLI, which forwards `@1 <command>` to the current worker.

import { connect } from 'node:net';
import { hostPort } from '../common/address.ts';

const REQUEST_TIMEOUT_MS = 2_000;

// Where a worker command goes. The master re-creates its socket on every reload; a worker never re-creates its
// admin socket (a reload hands the new worker the old listener, unlinked path and all), so once that path is
// lost, commands go through the master.
export interface WorkerControl {
  adminSocket: string;
  masterSocket: string;
}

// The errors of a socket whose path is gone or barred, rather than of haproxy itself.
function lostPath(err: unknown): boolean {
  return ['ENOENT', 'ENOTDIR', 'EACCES', 'ECONNREFUSED'].includes((err as NodeJS.ErrnoException).code ?? '');
}

// A worker command (several joined by '; '), the whole answer.
export async function ask(control: WorkerControl, command: string, timeoutMs = REQUEST_TIMEOUT_MS): Promise<string> {
  try {
    return await request(control.adminSocket, command, timeoutMs);
  } catch (err) {
    if (!lostPath(err)) throw err;
  }
  return request(control.masterSocket, command.split('; ').map((part) => `@1 ${part}`).join('; '), timeoutMs);
}

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
// (`nothing changed` is haproxy 3.0's answer to an address it already has.)
const DONE = /^(New server registered\.|Server deleted\.|IP changed from .*|no need to change the addr.*|nothing changed|.*port changed from .*)$/;

// Commands sent as one request, which haproxy runs back to back: a failover's fence and enable are one step.
// Undefined when haproxy answered each as done, else what it answered otherwise.
export async function runtimeCommands(control: WorkerControl, commands: readonly string[]): Promise<string | undefined> {
  try {
    const answer = await ask(control, commands.join('; '));
    const refused = answer.split('\n').map((line) => line.trim()).filter((line) => line !== '' && !DONE.test(line));
    return refused.length === 0 ? undefined : refused.join(' | ');
  } catch (err) {
    return (err as Error).message;
  }
}

// `show stat` (CSV) as rows of the fields `wanted` (by the names of its header line), and nothing else: a proxy
// of 10,000 servers answers with ~100 fields a row, and an object of each row would be tens of MB to collect.
function parseStat<F extends string>(csv: string, wanted: readonly F[]): Record<F, string>[] {
  const [header, ...lines] = csv.split('\n');
  if (!header?.startsWith('# ')) return [];
  const names = header.slice(2).split(',');
  const at = wanted.map((name) => names.indexOf(name));
  return lines
    .filter((line) => line.includes(','))
    .map((line) => {
      const values = line.split(',');
      return Object.fromEntries(wanted.map((name, i) => [name, values[at[i]!] ?? ''])) as Record<F, string>;
    });
}

// Current sessions per server, by `<proxy>/<server>`.
export async function serverSessions(control: WorkerControl): Promise<Map<string, number>> {
  const rows = parseStat(await ask(control, 'show stat -1 4 -1'), ['pxname', 'svname', 'scur']);
  return new Map(rows.map((row) => [`${row.pxname}/${row.svname}`, Number(row.scur)]));
}

// Current sessions of the given servers (`<proxy>/<server>`). A proxy of 10,000 servers answers `show stat`
// with 10,000 rows, and a fence asks every millisecond: so each server's numeric id (haproxy's `sid`) is
// learnt from the first whole-proxy answer into `sids`, and later asks read its one row. A row that does not
// name the server asked for (it was deleted, its id reused) sends that server back to a whole-proxy read. A
// server haproxy does not list has none.
export async function proxySessions(control: WorkerControl, ids: readonly string[], sids: Map<string, number>): Promise<Map<string, number>> {
  const sessions = new Map<string, number>();
  const unknown = new Set<string>();
  for (const id of ids) {
    const sid = sids.get(id);
    const row = sid === undefined ? undefined : statRows(await ask(control, `show stat ${proxyOf(id)} 4 ${sid}`), new Set([id])).get(id);
    if (row === undefined) unknown.add(id);
    else sessions.set(id, row.scur);
  }
  for (const proxy of new Set([...unknown].map(proxyOf))) {
    for (const [id, row] of statRows(await ask(control, `show stat ${proxy} 4 -1`), unknown)) {
      sessions.set(id, row.scur);
      sids.set(id, row.sid);
    }
  }
  return sessions;
}

const proxyOf = (id: string) => id.slice(0, id.indexOf('/'));

// The rows of a `show stat` answer for the servers `wanted`; only those rows are split.
function statRows(answer: string, wanted: ReadonlySet<string>): Map<string, { scur: number; sid: number }> {
  if (!answer.startsWith('# ')) throw new Error(`show stat: ${answer.trim().split('\n')[0]}`);
  const names = answer.slice(2, answer.indexOf('\n')).split(',');
  const [scur, sid] = [names.indexOf('scur'), names.indexOf('sid')];
  const rows = new Map<string, { scur: number; sid: number }>();
  for (const line of answer.split('\n')) {
    // A row starts "<proxy>,<server>,": the id is "<proxy>/<server>".
    const proxyEnd = line.indexOf(',');
    const id = `${line.slice(0, proxyEnd)}/${line.slice(proxyEnd + 1, line.indexOf(',', proxyEnd + 1))}`;
    if (!wanted.has(id)) continue;
    const fields = line.split(',');
    rows.set(id, { scur: Number(fields[scur]), sid: Number(fields[sid]) });
  }
  return rows;
}

// The streams haproxy still holds for each of the given servers (`<proxy>/<server>`), by `show sess server`
// (haproxy 3.2 and later). A stream lives until its connections are closed, so none listed means none open.
// Undefined when this haproxy ignores the filter (before 3.2 it lists every stream, the CLI's own included).
export async function serverStreams(control: WorkerControl, ids: readonly string[]): Promise<Map<string, number> | undefined> {
  const streams = new Map<string, number>();
  for (const id of ids) {
    const answer = await ask(control, `show sess server ${id}`);
    const lines = answer.split('\n').filter((line) => line.startsWith('0x'));
    if (lines.some((line) => line.includes(' fe=GLOBAL '))) return undefined;
    streams.set(id, lines.length);
  }
  return streams;
}

// The address and port haproxy runs each server of `proxy` at (`show servers state`), by `<proxy>/<server>`.
export async function serverAddresses(control: WorkerControl, proxy: string): Promise<Map<string, string>> {
  const answer = await ask(control, `show servers state ${proxy}`);
  const lines = answer.split('\n');
  const header = lines.find((line) => line.startsWith('# be_id'));
  if (header === undefined) throw new Error(`show servers state ${proxy}: ${answer.trim().split('\n')[0]}`);
  const names = header.slice(2).split(' ');
  const [name, address, port] = ['srv_name', 'srv_addr', 'srv_port'].map((field) => names.indexOf(field)) as [number, number, number];
  const addresses = new Map<string, string>();
  for (const line of lines) {
    const fields = line.split(' ');
    if (line.startsWith('#') || fields.length < names.length) continue;
    addresses.set(`${proxy}/${fields[name]}`, hostPort(fields[address]!, Number(fields[port])));
  }
  return addresses;
}

// What the traffic does, per server of our proxies and for haproxy as a whole.
export interface ServerTraffic {
  proxy: string;
  server: string;
  sessions: number;
  sessionsTotal: number;
  connectionErrors: number;
  responseErrors: number;
  // haproxy's status: UP, DOWN, MAINT, DRAIN, "UP 1/2" (going down), "no check"...
  status: string;
  secondsSinceStatusChange: number;
  bytesIn: number;
  bytesOut: number;
  queued: number;
}

export interface Traffic {
  servers: ServerTraffic[];
  connections: number;
  connectionsTotal: number;
  connectionRate: number;
}

const TRAFFIC_FIELDS = ['pxname', 'svname', 'scur', 'stot', 'econ', 'eresp', 'status', 'lastchg', 'bin', 'bout', 'qcur'] as const;

function trafficOf(stat: Record<(typeof TRAFFIC_FIELDS)[number], string>[], info: string, proxies: readonly string[]): Traffic {
  const field = (row: Record<string, string>, name: string) => Number(row[name] || 0);
  const servers = stat
    .filter((row) => proxies.includes(row.pxname) && row.svname !== 'BACKEND' && row.svname !== 'FRONTEND')
    .map((row) => ({
      proxy: row.pxname,
      server: row.svname,
      sessions: field(row, 'scur'),
      sessionsTotal: field(row, 'stot'),
      connectionErrors: field(row, 'econ'),
      responseErrors: field(row, 'eresp'),
      status: row.status,
      secondsSinceStatusChange: field(row, 'lastchg'),
      bytesIn: field(row, 'bin'),
      bytesOut: field(row, 'bout'),
      queued: field(row, 'qcur'),
    }));
  const infoField = (name: string) => Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(info)?.[1] ?? 0);
  return { servers, connections: infoField('CurrConns'), connectionsTotal: infoField('CumConns'), connectionRate: infoField('ConnRate') };
}

// Both reads in one request, within timeoutMs.
export async function readTraffic(control: WorkerControl, proxies: readonly string[], timeoutMs: number): Promise<Traffic> {
  const answer = await ask(control, 'show info; show stat -1 4 -1', timeoutMs);
  const statAt = answer.indexOf('# pxname');
  if (statAt < 0) throw new Error('haproxy gave no stats');
  return trafficOf(parseStat(answer.slice(statAt), TRAFFIC_FIELDS), answer.slice(0, statAt), proxies);
}

// The master's view of its processes. `reloads` counts every reload the master did, `failedReloads` those whose
// config did not load (from haproxy 3.1 counted since the master last re-executed itself, i.e. for the reload
// under way); a worker's own `reloads` counts the reloads it has outlived (0: the newest), and `leaving` says it
// is listed among the old workers. (From 3.1 a reload lists the new worker, and the one it replaces as old,
// before the new one has loaded its config: `show proc` alone does not say a reload is done.)
export interface ProcessList {
  masterPid: number;
  reloads: number;
  failedReloads: number;
  workers: { pid: number; reloads: number; leaving: boolean }[];
}

export function parseShowProc(text: string): ProcessList | undefined {
  let master: Omit<ProcessList, 'workers'> | undefined;
  const workers: ProcessList['workers'] = [];
  let leaving = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('# ')) leaving = line.trim() === '# old workers';
    const fields = line.trim().split(/\s+/);
    if (fields[1] === 'master') {
      const failed = /\[failed: (\d+)\]/.exec(line);
      master = { masterPid: Number(fields[0]), reloads: Number(fields[2]), failedReloads: failed ? Number(failed[1]) : 0 };
    } else if (fields[1] === 'worker') {
      workers.push({ pid: Number(fields[0]), reloads: Number(fields[2]), leaving });
    }
  }
  if (master === undefined || !Number.isInteger(master.reloads)) return undefined;
  return { ...master, workers };
}

// The newest of these workers: the one that has outlived the fewest reloads.
export function newestWorker(workers: ProcessList['workers']): number | undefined {
  return [...workers].sort((a, b) => a.reloads - b.reloads)[0]?.pid;
}

// The pid of the worker that answers on the admin socket: a worker answers there only once it has loaded its
// config. Undefined when none answers within timeoutMs.
export async function answeringWorker(control: WorkerControl, timeoutMs = REQUEST_TIMEOUT_MS): Promise<number | undefined> {
  // None answering is what this asks about: any failure to ask says the same.
  const answer = await ask(control, 'show info', timeoutMs).catch(() => '');
  const pid = /^Pid: (\d+)$/m.exec(answer)?.[1];
  return pid === undefined ? undefined : Number(pid);
}

// `show proc` on the master CLI; undefined while the master does not answer (it is loading, or gone).
export async function showProc(masterSocket: string, timeoutMs = REQUEST_TIMEOUT_MS): Promise<ProcessList | undefined> {
  return parseShowProc(await request(masterSocket, 'show proc', timeoutMs).catch(() => ''));
}
