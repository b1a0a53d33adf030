// The fence of a failover, made and confirmed: the old master's servers put in maintenance and their sessions
// shut down, then a wait until none of their sessions is left open, before lib/haproxy/driver.ts enables the new
// master. How "none left open" is known depends on the haproxy release (see confirm); parsing is pure here,
// asking haproxy and the kernel are the effects. It never enables a server itself.

import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../common/log.ts';
import type { ServerAddress } from '../render/plan.ts';
import { ask, proxySessions, serverStreams, showProc, type WorkerControl } from './admin.ts';
import { kernelEndpoint, kernelOpenConnections } from './sockets.ts';

// haproxy closes the sessions of a fenced server within a turn or two of its loop (well under a millisecond);
// this bounds the wait for one it cannot close.
const FENCE_CONFIRM_MS = 1_000;
const POLL_MS = 1;
// A live instance answers haproxy's close at once, and then haproxy's count drops; while haproxy still counts
// sessions, the kernel's tables (slower to read: all of the host's sockets) are asked only this long after the
// fence.
const KERNEL_AFTER_MS = 20;
// A stream still listed this long after its server's sessions were shut, while haproxy counts none on it, is one
// haproxy froze (below): it will not end by itself.
const FROZEN_AFTER_MS = 50;
// A connection attempt to a live instance ends within this; one to a host that vanished does not, and is shut
// down anyway when this has passed.
const CONNECTING_WAIT_MS = 250;

// From haproxy 2.7 to 3.1, a stream shut down while it waits for its server's connection can freeze: it stays
// listed, and its client and server connections stay open, with no byte moving, until the process ends
// (haproxy commit 51611a5b7, "BUG/MEDIUM: stream: Fix a possible freeze during a forced shut on a stream",
// in 3.2; measured on Debian 13's 3.0.11: 713 frozen streams in 300 fences under load, 0 with the drain first).
// On those releases the fenced servers are first put in drain, so that no new stream picks them, and their
// sessions are shut once none is connecting.
export function fenceDrainsFirst(haproxyVersion: string): boolean {
  const match = /version (\d+)\.(\d+)/i.exec(haproxyVersion);
  if (!match) return false;
  const release = Number(match[1]) * 100 + Number(match[2]);
  return release >= 207 && release < 302;
}

// The streams `show sess` lists for each server (`<proxy>/<server>`) asked about, and how many of them are
// still connecting to it (their server side before "established": states 1-7).
export function streamsOf(showSess: string, ids: readonly string[]): Map<string, { listed: number; connecting: number }> {
  const streams = new Map(ids.map((id) => [id, { listed: 0, connecting: 0 }]));
  for (const line of showSess.split('\n')) {
    if (!line.startsWith('0x')) continue;
    const backend = / be=(\S+) /.exec(line)?.[1];
    const server = / srv=(\S+) /.exec(line)?.[1];
    const counts = streams.get(`${backend}/${server}`);
    if (counts === undefined) continue;
    counts.listed++;
    const state = Number(/ scb=\[(\d+),/.exec(line)?.[1] ?? 8);
    if (state >= 1 && state <= 7) counts.connecting++;
  }
  return streams;
}

interface FenceSettings {
  control: WorkerControl;
  log: Logger;
  drainFirst: boolean;
  // The haproxy worker processes now.
  workers(): number[];
}

// How a fence ended: confirmed (none of the fenced servers' sessions is open); frozen (haproxy holds streams it
// will not end: the driver reloads, and this worker is stopped once it is old); unconfirmed (the bound passed:
// the new master is opened anyway); failed (a command was refused: a reload instead).
type FenceOutcome = 'confirmed' | 'frozen' | 'unconfirmed' | 'failed';

// What is still open after a fence: the servers, the connections the kernel showed (socket inodes), and
// whether haproxy itself still counts a session on one of them.
interface StillOpen {
  servers: Set<string>;
  connections: Set<string>;
  counted: boolean;
  frozen: boolean;
}

export function createFence(settings: FenceSettings) {
  const { control, log } = settings;
  let unconfirmed = 0;
  let frozen = 0;
  // Connections to a fenced server that outlived a fence's bound while haproxy counted no session on them:
  // reported once; later fences do not wait on them again.
  const lostConnections = new Set<string>();
  // Whether this haproxy lists a server's streams (`show sess server`, 3.2 and later); asked at the first fence.
  let listsStreams: boolean | undefined;
  // The numeric ids of servers fenced so far (proxySessions).
  const serverIds = new Map<string, number>();

  // Until no stream is connecting to the servers, within CONNECTING_WAIT_MS.
  const connectsDone = async (ids: readonly string[]) => {
    for (const deadline = performance.now() + CONNECTING_WAIT_MS; performance.now() < deadline; await sleep(POLL_MS)) {
      // An unanswered `show sess` ends the wait: what is still open is then judged by counts and the kernel.
      const streams = streamsOf(await ask(control, 'show sess').catch(() => ''), ids);
      if ([...streams.values()].every(({ connecting }) => connecting === 0)) return;
    }
  };

  // What haproxy counts on each server: its streams where it lists them (3.2 and later), else its sessions;
  // undefined when it does not answer.
  const sessionCounts = async (ids: readonly string[]): Promise<Map<string, number> | undefined> => {
    if (listsStreams !== false && !settings.drainFirst) {
      // Unanswered: asked again at the next check, nothing learned about this haproxy meanwhile.
      const answer = await serverStreams(control, ids).catch(() => null);
      if (answer !== null) listsStreams = answer !== undefined;
      if (answer) return answer;
    }
    return proxySessions(control, ids, serverIds).catch(() => undefined);
  };

  // What of the fenced servers may still carry a client's bytes. From 3.2 haproxy lists the streams of a
  // server (a stream lives until its connections are closed); on 2.7-3.1 `show sess` lists every stream, so a
  // frozen one shows; before, its session count is all it says, and a killed session stays counted until the
  // far end closes too (never, if its host is down): then the kernel says, KERNEL_AFTER_MS after the fence,
  // whether haproxy has closed its side of each connection. A worker a reload left behind cannot be told to
  // shut sessions (its proxies are stopping): the kernel says whether one still holds a connection to a
  // fenced server, and then it is stopped, with its sessions.
  const openAfterFence = async (fenced: readonly ServerAddress[], stopped: Map<number, Set<string>>, sinceMs: number): Promise<StillOpen> => {
    const ids = fenced.map(({ id }) => id);
    // No counts: every fenced server is taken as holding sessions, for the kernel to say otherwise.
    const counts = await sessionCounts(ids);
    const counted = fenced.filter(({ id }) => counts === undefined || (counts.get(id) ?? 0) > 0);
    const workers = settings.workers();
    const open: StillOpen = { servers: new Set(), connections: new Set(), counted: false, frozen: false };
    // On 2.7-3.1 a stream listed beyond what haproxy counts on its server is one it froze (a killed session
    // whose far end has not closed stays counted, but is no longer listed).
    if (settings.drainFirst) {
      // Unanswered: no stream is taken for frozen now; the workers' kernel check below still runs.
      const streams = streamsOf(await ask(control, 'show sess').catch(() => ''), ids);
      const frozen = fenced.filter(({ id }) => (streams.get(id)?.listed ?? 0) > (counts?.get(id) ?? 0));
      if (frozen.length > 0) {
        for (const { id } of frozen) open.servers.add(id);
        open.frozen = sinceMs >= FROZEN_AFTER_MS;
        if (workers.length <= 1 && (counted.length === 0 || sinceMs < KERNEL_AFTER_MS)) return open;
      }
    }
    const add = (server: ServerAddress, inode?: string) => {
      open.servers.add(server.id);
      if (inode !== undefined) open.connections.add(inode);
      if (counted.includes(server)) open.counted = true;
    };
    // haproxy's own count is trusted for the current worker until KERNEL_AFTER_MS: a live instance answers
    // the close at once.
    const kernelForCurrent = counted.length > 0 && sinceMs >= KERNEL_AFTER_MS;
    if (workers.length <= 1 && !kernelForCurrent) {
      for (const server of counted) add(server);
      return open;
    }
    const endpoints = new Map(fenced.flatMap((server) => {
      const endpoint = kernelEndpoint(server.address, server.port);
      return endpoint === undefined ? [] : [[endpoint, server] as const];
    }));
    // The current worker has outlived the fewest reloads. Without the master's answer none is taken for old,
    // and the kernel is asked about each.
    const list = workers.length > 1 ? await showProc(control.masterSocket) : undefined;
    const current = list ? [...list.workers].sort((a, b) => a.reloads - b.reloads)[0]?.pid : undefined;
    const old = (pid: number) => list !== undefined && pid !== current;
    for (const pid of workers) {
      // A stopped worker holds its sessions until it has exited, which closes them all.
      const stoppedHolding = stopped.get(pid);
      if (stoppedHolding !== undefined) {
        for (const id of stoppedHolding) open.servers.add(id);
        continue;
      }
      if (!old(pid) && list !== undefined && !kernelForCurrent) {
        for (const server of counted) add(server);
        continue;
      }
      const connections = await kernelOpenConnections(pid, new Set(endpoints.keys())).catch(() => undefined);
      if (connections === undefined) {
        if (!old(pid)) for (const server of counted) add(server);
        continue;
      }
      const held = new Set<string>();
      let count = 0;
      for (const [inode, endpoint] of connections) {
        if (lostConnections.has(inode)) continue;
        const server = endpoints.get(endpoint)!;
        add(server, inode);
        held.add(server.id);
        count++;
      }
      if (count > 0 && old(pid)) {
        stopped.set(pid, held);
        log.warn(`haproxy: stopping worker ${pid}, left by a reload, which holds ${count} session(s) to fenced ${[...held].join(', ')}`);
        process.kill(pid, 'SIGTERM');
      }
    }
    // A server by DNS name has no address the kernel knows: haproxy's count is all there is.
    for (const server of counted) if (!endpoints.has(kernelEndpoint(server.address, server.port) ?? '')) add(server);
    return open;
  };

  // Waits until no session to a fenced server is left open, within FENCE_CONFIRM_MS; past that, the rest of
  // the change goes ahead: a session haproxy cannot close must not keep the new master closed. Frozen streams
  // are not waited on: only a reload ends them.
  const confirm = async (fenced: readonly ServerAddress[], fencedAt: number): Promise<Exclude<FenceOutcome, 'failed'>> => {
    const deadline = fencedAt + FENCE_CONFIRM_MS;
    // Old workers stopped by this fence, and the fenced servers each held.
    const stopped = new Map<number, Set<string>>();
    let open: StillOpen;
    for (;;) {
      open = await openAfterFence(fenced, stopped, performance.now() - fencedAt);
      if (open.servers.size === 0) return 'confirmed';
      if (open.frozen) {
        frozen++;
        log.warn(`haproxy: streams to ${[...open.servers].join(', ')} froze when their sessions were shut (an haproxy 2.7-3.1 bug): reloading, and stopping the worker that holds them before the new master is enabled`);
        return 'frozen';
      }
      if (performance.now() >= deadline) break;
      await sleep(POLL_MS);
    }
    unconfirmed++;
    const servers = [...open.servers].join(', ');
    if (open.counted || open.connections.size === 0) {
      log.warn(`haproxy: sessions to ${servers} still open ${FENCE_CONFIRM_MS} ms after the fence; opening the new master anyway`);
      return 'unconfirmed';
    }
    for (const inode of open.connections) lostConnections.add(inode);
    log.warn(
      `haproxy: ${open.connections.size} connection(s) to ${servers} still open ${FENCE_CONFIRM_MS} ms after the fence, though haproxy counts no session on it: ` +
        'streams haproxy lost track of (no byte moves through them, and it will not close them); opening the new master anyway, and not waiting on these again',
    );
    return 'unconfirmed';
  };

  return {
    // The fence: (on 2.7-3.1 the servers drained and their connection attempts let finish first) the commands
    // sent, then confirmed.
    run: async (commands: readonly string[], fenced: readonly ServerAddress[], send: (commands: readonly string[]) => Promise<boolean>): Promise<FenceOutcome> => {
      if (settings.drainFirst && fenced.length > 0) {
        if (!(await send(fenced.map(({ id }) => `set server ${id} state drain`)))) return 'failed';
        await connectsDone(fenced.map(({ id }) => id));
      }
      if (!(await send(commands))) return 'failed';
      return fenced.length > 0 ? confirm(fenced, performance.now()) : 'confirmed';
    },
    // After the reload that follows a frozen fence: the old worker, which holds the frozen streams, is stopped
    // and waited on.
    confirm: (fenced: readonly ServerAddress[]) => confirm(fenced, performance.now()),
    stats: () => ({ fencesUnconfirmed: unconfirmed, fencesFrozen: frozen }),
  };
}
