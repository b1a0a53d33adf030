// The haproxy driver: the parts in this folder put together. Each change is carried out as lib/plan.ts decides:
// runtime API commands over the admin socket, then the config file rewritten to match; or stage file →
// `haproxy -c` → rename → reload confirmed by the master CLI. The apply queue keeps one change in flight and
// decides about failures; an exit of the haproxy master is reported once, for ambassador to stop.

import { setTimeout as sleep } from 'node:timers/promises';
import { hostPort } from '../address.ts';
import type { Logger } from '../log.ts';
import type { Options } from '../options.ts';
import { afterFence, fencedTable, planChange, type ServerAddress, type ServerTable } from '../plan.ts';
import { runtimeFiles, writePrivate } from '../rundir.ts';
import { readTraffic, runtimeCommands, serverAddresses, serverSessions, type Traffic } from './admin.ts';
import { createFence } from './fence.ts';
import { installChecked, replaceConfig } from './config.ts';
import { startProcess, type HaproxyExit, type HaproxyProcess } from './process.ts';
import { createApplyQueue, type ApplyResult, type Attempt, type QueueStats, type Wanted } from './queue.ts';
import { firstLoad, reload } from './reload.ts';

export type { ApplyPath, ApplyResult, Wanted } from './queue.ts';
export type { HaproxyExit } from './process.ts';
export type { ServerTraffic, Traffic } from './admin.ts';

interface HaproxySettings {
  binary: string;
  configPath: string;
  runtimeDir: string;
  // runtime: the runtime API where it can express the change; reload: always a reload.
  apply: Options['apply'];
  // Master-only: fence a server that stops being the master (see lib/plan.ts).
  fence: boolean;
  // Drain a server before its fence (haproxy 2.7-3.1: lib/haproxy/fence.ts).
  drainBeforeFence: boolean;
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
  // Fences whose shut-down streams froze (haproxy 2.7-3.1), ended by a reload before the new master opened.
  fencesFrozen: number;
}

interface Haproxy {
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
const FENCE_POLL_MS = 1;
// haproxy's task applies an address within a turn of its loop.
const ADDRESS_CONFIRM_MS = 2_000;
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
  const fence = createFence({ adminSocket, masterSocket, log, drainFirst: settings.drainBeforeFence, workers: () => child?.workers() ?? [] });
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
    const fenced = await fence.run(plan.fence, plan.fenced, sendCommands);
    if (fenced === 'failed') return false;
    if (fenced === 'frozen') {
      // A reload to the fenced state (the new master still closed) leaves the frozen streams to the old worker,
      // which the fence stops; then the rest of the change, from there.
      const install = await installChecked(binary, configPath, next.fencedConfig());
      if (install.kind !== 'installed' || (await reloadChild(child!)).kind !== 'applied') return false;
      liveServers = fencedTable(next.servers);
      await fence.confirm(plan.fenced);
      return applyAtRuntime(next);
    }
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
      const pending = moved.filter(({ id, address, port }) => live.get(id) !== hostPort(address, port));
      if (pending.length === 0) return true;
      if (performance.now() >= deadline) {
        log.warn(`haproxy: ${pending.map(({ id }) => id).join(', ')} not at the new address ${ADDRESS_CONFIRM_MS} ms after the change; reloading instead`);
        runtimeFallbacks++;
        return false;
      }
      await sleep(FENCE_POLL_MS);
    }
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
      const open = sessions.get(id) ?? 1;
      if (open > 0) {
        log.debug(`haproxy: drained server ${id} kept, ${open} session(s) open`);
        continue;
      }
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
      ...fence.stats(),
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
const OURS = /\) : CLI : |going DOWN for maintenance|leaving forced maintenance|is going DOWN for drain|enters drain state|leaving forced drain/;
// Real news when no fence of ours explains it: a master that is down, say.
const NO_SERVER = /has no server available/;

function outputLevel(line: string): 'debug' | 'info' | 'warn' | 'error' {
  if (line.startsWith('[NOTICE]') || ROUTINE.test(line) || OURS.test(line)) return 'debug';
  if (line.startsWith('[WARNING]') || NO_SERVER.test(line)) return 'warn';
  if (line.startsWith('[ALERT]')) return 'error';
  return 'info';
}
