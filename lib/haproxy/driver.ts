// The haproxy driver: the parts in this folder put together. Each change is carried out as lib/plan.ts decides:
// runtime API commands over the admin socket, then the config file rewritten to match; or stage file →
// `haproxy -c` → rename → reload confirmed by the master CLI. The apply queue keeps one change in flight and
// decides about failures; an exit of the haproxy master is reported once, for ambassador to stop.

import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.ts';
import type { Options } from '../options.ts';
import { afterFence, planChange, type ServerAddress, type ServerTable } from '../plan.ts';
import { runtimeFiles, writePrivate } from '../rundir.ts';
import { endpoint, proxySessions, readTraffic, serverStreams, runtimeCommands, serverAddresses, serverSessions, showProc, type Traffic } from './admin.ts';
import { installChecked, replaceConfig } from './config.ts';
import { startProcess, type HaproxyExit, type HaproxyProcess } from './process.ts';
import { kernelEndpoint, kernelOpenConnections } from './sockets.ts';
import { createApplyQueue, type ApplyResult, type Attempt, type QueueStats, type Wanted } from './queue.ts';
import { firstLoad, reload } from './reload.ts';

export type { ApplyPath, ApplyResult, Wanted } from './queue.ts';
export type { HaproxyExit } from './process.ts';
export type { ServerTraffic, Traffic } from './admin.ts';

export interface HaproxySettings {
  binary: string;
  configPath: string;
  runtimeDir: string;
  // runtime: the runtime API where it can express the change; reload: always a reload.
  apply: Options['apply'];
  // Master-only: fence a server that stops being the master (see lib/plan.ts).
  fence: boolean;
  // The proxies the config has (lib/render.ts).
  proxies: readonly string[];
  log: Logger;
  // util-linux's setpriv (essential on Debian), to have the kernel SIGTERM haproxy when ambassador dies,
  // even by SIGKILL: an haproxy that outlived it would go on routing to a master etcd may since have
  // replaced. Without it, the next ambassador stops the one left behind (rundir.ts).
  setpriv?: string | undefined;
}

// How haproxy is doing, for health and metrics.
export interface HaproxyStats extends QueueStats {
  masterPid: number | undefined;
  workers: number;
  runtimeFallbacks: number;
  // Fences after which haproxy still showed sessions on the old master when the wait for them ended.
  fencesUnconfirmed: number;
}

export interface Haproxy {
  apply(wanted: Wanted): Promise<ApplyResult>;
  // Try the newest state again, refused or failing (a resync).
  retryNow(): void;
  stats(): HaproxyStats;
  // What the traffic does now, read from haproxy within a short bound; undefined when it cannot be read.
  traffic(): Promise<Traffic | undefined>;
  // Resolves when the master exits for any reason other than stop(), a spawn that failed included.
  unexpectedExit: Promise<HaproxyExit>;
  stop(): Promise<void>;
}

const STOP_GRACE_MS = 5_000;
const KILL_AFTER_MS = 2_000;
// Small enough for haproxy's command line buffer; a failover's few commands always go in one.
const COMMANDS_PER_REQUEST = 40;
// A scrape must never hang on a slow admin socket.
const TRAFFIC_TIMEOUT_MS = 1_000;
// haproxy closes the sessions of a fenced server within a turn or two of its loop (well under a millisecond);
// this bounds the wait for one it cannot close.
const FENCE_CONFIRM_MS = 1_000;
const FENCE_POLL_MS = 1;
// haproxy's task applies an address within a turn of its loop.
const ADDRESS_CONFIRM_MS = 2_000;
// A live instance answers haproxy's close at once, and then haproxy's count drops; while haproxy still counts
// sessions, the kernel's tables (slower to read: all of the host's sockets) are asked only this long after the
// fence.
const KERNEL_AFTER_MS = 20;

// What is still open after a fence: the servers, the connections the kernel showed (socket inodes), and
// whether haproxy itself still counts a session on one of them.
interface StillOpen {
  servers: Set<string>;
  connections: Set<string>;
  counted: boolean;
}
// A fence leaves the proxy without a server for the instant before the enable that follows it in the same
// request; haproxy's alert about it arrives within a few ms.
const FENCE_ECHO_MS = 250;

export function createHaproxy(settings: HaproxySettings): Haproxy {
  const { binary, configPath, runtimeDir, log, setpriv } = settings;
  const { adminSocket, masterSocket, haproxyPid } = runtimeFiles(runtimeDir);
  let child: HaproxyProcess | undefined;
  let stopping = false;
  let liveServers: ServerTable = { proxies: new Map(), draining: new Map() };
  let runtimeFallbacks = 0;
  let fencesUnconfirmed = 0;
  // Connections to a fenced server that outlived a fence's bound while haproxy counted no session on them:
  // streams haproxy lost. Reported once; later fences do not wait on them again.
  const lostConnections = new Set<string>();
  // Whether this haproxy lists a server's streams (`show sess server`, 3.2 and later); asked at the first fence.
  let listsStreams: boolean | undefined;
  // The numeric ids of servers fenced so far (proxySessions).
  const serverIds = new Map<string, number>();
  // Until when a "no server available" from haproxy is the echo of a fence we made, not news.
  let fenceEchoUntil = 0;
  let reportExit: (exit: HaproxyExit) => void = () => {};
  const unexpectedExit = new Promise<HaproxyExit>((resolve) => (reportExit = resolve));

  const logOutput = (line: string) => {
    if (NO_SERVER.test(line) && performance.now() < fenceEchoUntil) {
      log.debug(`haproxy: ${line} (for the instant between fencing the old master and enabling the new one)`);
    } else {
      log[outputLevel(line)](`haproxy: ${line}`);
    }
  };

  const start = async (): Promise<Attempt> => {
    const proc = startProcess({ binary, configPath, masterSocket, setpriv });
    child = proc;
    proc.onLine(logOutput);
    void proc.exited.then((exit) => {
      if (!stopping) reportExit(exit);
    });
    if (proc.pid !== undefined) await writePrivate(haproxyPid, `${proc.pid}\n`).catch(() => {});
    log.info('haproxy: started', { pid: proc.pid, config: configPath });
    const loaded = await firstLoad({ ...proc, adminSocket });
    return loaded.kind === 'loaded' ? { kind: 'applied', path: 'start' } : loaded;
  };

  // The runtime path, step by step, each confirmed (see lib/plan.ts); then the file rewritten to describe what
  // is now live. False when the change needs a reload instead.
  const applyAtRuntime = async (next: Wanted): Promise<boolean> => {
    const plan = planChange(liveServers, next.servers, { fence: settings.fence });
    if (plan.kind === 'none') {
      await replaceConfig(configPath, next.config);
      return true;
    }
    const served = [...next.servers.proxies.values()].some((servers) => servers.some((server) => server.enabled));
    fenceEchoUntil = plan.fence.length > 0 && served ? performance.now() + FENCE_ECHO_MS : 0;
    if (!(await sendCommands(plan.fence))) return false;
    if (plan.fenced.length > 0) await confirmFence(plan.fenced);
    if (plan.kind === 'reload') {
      liveServers = afterFence(liveServers, plan.fenced);
      log.info(`haproxy: reloading, the runtime API cannot do this change: ${plan.reason}`);
      return false;
    }
    if (!(await sendCommands(plan.changes))) return false;
    if (plan.moved.length > 0 && !(await confirmAddresses(plan.moved))) return false;
    if (!(await sendCommands(plan.enables))) return false;
    liveServers = plan.next;
    if (liveServers.draining.size > 0) queue.sweepSoon();
    await replaceConfig(configPath, next.config);
    return true;
  };

  const sendCommands = async (commands: readonly string[]): Promise<boolean> => {
    for (let i = 0; i < commands.length; i += COMMANDS_PER_REQUEST) {
      const batch = commands.slice(i, i + COMMANDS_PER_REQUEST);
      const failure = await runtimeCommands(adminSocket, batch);
      if (failure !== undefined) {
        log.warn(`haproxy: runtime commands failed, reloading instead: ${batch.join('; ')}`, { answer: failure });
        runtimeFallbacks++;
        return false;
      }
      for (const command of batch) log.debug(`haproxy: ${command}`);
    }
    return true;
  };

  // Waits until haproxy runs each moved server at its new address (from 2.9 it applies one after answering),
  // within ADDRESS_CONFIRM_MS; false if it does not, for a reload to make sure.
  const confirmAddresses = async (moved: readonly ServerAddress[]): Promise<boolean> => {
    const deadline = performance.now() + ADDRESS_CONFIRM_MS;
    const proxies = [...new Set(moved.map(({ id }) => id.slice(0, id.indexOf('/'))))];
    for (;;) {
      const live = new Map<string, string>();
      for (const proxy of proxies) for (const [id, at] of await serverAddresses(adminSocket, proxy).catch(() => new Map<string, string>())) live.set(id, at);
      const pending = moved.filter(({ id, address, port }) => live.get(id) !== endpoint(address, port));
      if (pending.length === 0) return true;
      if (performance.now() >= deadline) {
        log.warn(`haproxy: ${pending.map(({ id }) => id).join(', ')} not at the new address ${ADDRESS_CONFIRM_MS} ms after the change; reloading instead`);
        runtimeFallbacks++;
        return false;
      }
      await sleep(FENCE_POLL_MS);
    }
  };

  // Waits until no session to a fenced server is left open, within FENCE_CONFIRM_MS; past that, the rest of
  // the change goes ahead: a session haproxy cannot close must not keep the new master closed.
  const confirmFence = async (fenced: readonly ServerAddress[]) => {
    const deadline = performance.now() + FENCE_CONFIRM_MS;
    const askKernelAt = performance.now() + KERNEL_AFTER_MS;
    const stopped = new Set<number>();
    let open: StillOpen;
    for (;;) {
      open = await openAfterFence(fenced, stopped, performance.now() >= askKernelAt);
      if (open.servers.size === 0) return;
      if (performance.now() >= deadline) break;
      await sleep(FENCE_POLL_MS);
    }
    fencesUnconfirmed++;
    const servers = [...open.servers].join(', ');
    if (open.counted) {
      log.warn(`haproxy: sessions to ${servers} still open ${FENCE_CONFIRM_MS} ms after the fence; opening the new master anyway`);
      return;
    }
    for (const inode of open.connections) lostConnections.add(inode);
    log.warn(
      `haproxy: ${open.connections.size} connection(s) to ${servers} still open ${FENCE_CONFIRM_MS} ms after the fence, though haproxy counts no session on it: ` +
        'streams haproxy lost track of (no byte moves through them, and it will not close them); opening the new master anyway, and not waiting on these again',
    );
  };

  // What of the fenced servers may still carry a client's bytes. From 3.2 haproxy lists the streams of a
  // server (a stream lives until its connections are closed); before, its session count is all it says, and
  // a killed session stays counted until the far end closes too (never, if its host is down): then the
  // kernel says, KERNEL_AFTER_MS after the fence, whether haproxy has closed its side of each connection.
  // A worker a reload left behind cannot be told to shut sessions (its proxies are stopping): the kernel
  // says whether one still holds a connection to a fenced server, and then it is stopped, with its sessions.
  const openAfterFence = async (fenced: readonly ServerAddress[], stopped: Set<number>, pastCountOnly: boolean): Promise<StillOpen> => {
    const ids = fenced.map(({ id }) => id);
    let listed: Map<string, number> | undefined;
    if (listsStreams !== false) {
      const answer = await serverStreams(adminSocket, ids).catch(() => null);
      if (answer !== null) [listsStreams, listed] = [answer !== undefined, answer];
    }
    const sessions = listed ?? (await proxySessions(adminSocket, ids, serverIds).catch(() => undefined));
    const counted = fenced.filter(({ id }) => sessions === undefined || (sessions.get(id) ?? 0) > 0);
    const workers = child?.workers() ?? [];
    if (counted.length === 0 && workers.length <= 1) return { servers: new Set(), connections: new Set(), counted: false };
    if (!pastCountOnly && workers.length <= 1) return { servers: new Set(counted.map(({ id }) => id)), connections: new Set(), counted: true };
    const endpoints = new Map(fenced.flatMap((server) => {
      const endpoint = kernelEndpoint(server.address, server.port);
      return endpoint === undefined ? [] : [[endpoint, server] as const];
    }));
    // The current worker has outlived the fewest reloads; without the master's answer none is taken for old.
    const list = workers.length > 1 ? await showProc(masterSocket) : undefined;
    const current = list ? [...list.workers].sort((a, b) => a.reloads - b.reloads)[0]?.pid : undefined;
    const old = (pid: number) => list !== undefined && pid !== current;
    const open: StillOpen = { servers: new Set(), connections: new Set(), counted: false };
    const add = (server: ServerAddress, inode?: string) => {
      open.servers.add(server.id);
      if (inode !== undefined) open.connections.add(inode);
      if (counted.includes(server)) open.counted = true;
    };
    for (const pid of workers) {
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
      if (count > 0 && old(pid) && !stopped.has(pid)) {
        stopped.add(pid);
        log.warn(`haproxy: stopping worker ${pid}, left by a reload, which holds ${count} session(s) to fenced ${[...held].join(', ')}`);
        process.kill(pid, 'SIGTERM');
      }
    }
    // A server by DNS name has no address the kernel knows: haproxy's count is all there is.
    for (const server of counted) if (!endpoints.has(kernelEndpoint(server.address, server.port) ?? '')) add(server);
    return open;
  };

  const attempt = async (next: Wanted, liveConfig: string | undefined): Promise<Attempt> => {
    if (stopping || (child !== undefined && !child.running())) return { kind: 'failed', reason: 'haproxy is not running' };
    if (child && settings.apply === 'runtime' && (await applyAtRuntime(next))) return { kind: 'applied', path: 'runtime' };
    const install = await installChecked(binary, configPath, next.config);
    if (install.kind !== 'installed') return install;
    const loaded: Attempt = child ? await reloadChild(child) : await start();
    if (loaded.kind === 'applied') {
      liveServers = next.servers;
    } else if (child && liveConfig !== undefined) {
      // The master kept the old worker: put the file back in step with what is live.
      await replaceConfig(configPath, liveConfig).catch(() => {});
    }
    return loaded;
  };

  const reloadChild = async (proc: HaproxyProcess): Promise<Attempt> => {
    const loaded = await reload({ ...proc, adminSocket }, settings.proxies, log);
    return loaded.kind === 'loaded' ? { kind: 'applied', path: 'reload' } : loaded;
  };

  // Deletes draining servers that have no session left; true while some still have sessions.
  const sweep = async (): Promise<boolean> => {
    if (liveServers.draining.size === 0 || !child?.running()) return false;
    const sessions = await serverSessions(adminSocket).catch(() => new Map<string, number>());
    const draining = new Map(liveServers.draining);
    for (const id of liveServers.draining.keys()) {
      if ((sessions.get(id) ?? 1) > 0) continue;
      if ((await runtimeCommands(adminSocket, [`set server ${id} state maint`, `del server ${id}`])) === undefined) {
        draining.delete(id);
        log.debug(`haproxy: deleted drained server ${id}`);
      }
    }
    liveServers = { proxies: liveServers.proxies, draining };
    return draining.size > 0;
  };

  const queue = createApplyQueue({ attempt, sweep, log });

  return {
    apply: (next) => queue.apply(next),
    retryNow: () => queue.retryNow(),
    unexpectedExit,
    stats: () => ({
      ...queue.stats(),
      masterPid: child?.running() ? child.pid : undefined,
      workers: child?.workers().length ?? 0,
      runtimeFallbacks,
      fencesUnconfirmed,
    }),
    traffic: async () => (child?.running() ? readTraffic(adminSocket, settings.proxies, TRAFFIC_TIMEOUT_MS).catch(() => undefined) : undefined),
    stop: async () => {
      stopping = true;
      queue.stop();
      await child?.stop(STOP_GRACE_MS, KILL_AFTER_MS);
    },
  };
}

// haproxy says WARNING for every step of a normal reload or stop; those are routine, the rest is not.
const ROUTINE = /Proxy \S+ stopped|(Former|Current) worker \(\d+\) exited with code 0|Exiting Master process|All workers exited|Reexecuting Master/;

// What our own runtime commands did (maintenance in and out); ambassador logs those changes itself.
const OURS = /\) : CLI : |going DOWN for maintenance|leaving forced maintenance|is going DOWN for drain|leaving forced drain/;
// Real news when no fence of ours explains it: a master that is down, say.
const NO_SERVER = /has no server available/;

function outputLevel(line: string): 'debug' | 'info' | 'warn' | 'error' {
  if (line.startsWith('[NOTICE]') || ROUTINE.test(line) || OURS.test(line)) return 'debug';
  if (line.startsWith('[WARNING]') || NO_SERVER.test(line)) return 'warn';
  if (line.startsWith('[ALERT]')) return 'error';
  return 'info';
}
