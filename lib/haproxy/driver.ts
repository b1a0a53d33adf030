// The haproxy driver: the parts in this folder put together. Each change is carried out as lib/render/plan.ts decides:
// runtime API commands over the admin socket, then the config file rewritten to match; or stage file →
// `haproxy -c` → rename → reload confirmed by the master CLI. A failover never waits on a reload: the master's
// part of a change is made at run time first, whatever becomes of the rest. The apply queue keeps one change in
// flight and decides about failures; an exit of the haproxy master is reported once, for ambassador to stop. A
// runtime dir lost while running is made again, and haproxy reloaded to listen in it (reached through its master meanwhile).

import { hostPort } from '../common/address.ts';
import type { Logger } from '../common/log.ts';
import { routingStep, type ServerTable } from '../render/plan.ts';
import { PROXY_NAME } from '../render/render.ts';
import { runtimeFiles, writePrivate } from '../host/rundir.ts';
import { readTraffic, runtimeCommands, serverSessions, type Traffic as ShowStat, type WorkerControl } from './admin.ts';
import { createHoldTotals, readHold, type HoldCounts } from './holds.ts';
import { createDirKeeper } from './keeper.ts';
import { createRuntimePath, type Live } from './runtime.ts';
import { createFence } from './fence.ts';
import { createLiveConfigFile, installChecked, writeHoldScript } from './config.ts';
import { logOutput, startProcess, type HaproxyExit, type HaproxyProcess } from './process.ts';
import { createApplyQueue, type ApplyResult, type Attempt, type QueueStats, type Wanted } from './queue.ts';
import { firstLoad, reload } from './reload.ts';

export type { ApplyPath, ApplyResult, Wanted } from './queue.ts';
export type { HaproxyExit } from './process.ts';
export type { ServerTraffic } from './admin.ts';
export type { HoldCounts } from './holds.ts';

// What the traffic does now: `show stat`'s figures, and the hold's counts per proxy (undefined while nothing
// holds, or haproxy does not say).
export type Traffic = ShowStat & { hold: ReadonlyMap<string, HoldCounts> | undefined };

interface HaproxySettings {
  binary: string;
  configPath: string;
  runtimeDir: string;
  // runtime: the runtime API where it can express the change; reload: always a reload.
  apply: 'runtime' | 'reload';
  // Master-only: fence a server that stops being the master (see lib/render/plan.ts).
  fence: boolean;
  // Drain a server before its fence (haproxy 2.7-3.1: lib/haproxy/fence.ts).
  drainBeforeFence: boolean;
  // The proxies the config has (lib/render/render.ts).
  proxies: readonly string[];
  // The open-file limit haproxy runs under, and the most servers it can open under it (lib/haproxy/config.ts):
  // a state with more is refused before haproxy sees it.
  fileLimit: number;
  maxServers: number;
  // The hold's script, which the config loads, when new connections are held (lib/render/hold.ts).
  holdScript: string | undefined;
  // Patroni's replica port: a replica that stops qualifying has its sessions cut (--replica-sessions).
  cutReplicas: boolean;
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
  // Why the newest state's master is not open in haproxy, while it is not.
  masterBlocked: string | undefined;
  // Times the runtime dir was found missing or changed, and made right again.
  runtimeDirRestored: number;
  // Why the config file does not describe what haproxy runs, while it does not.
  configFileBehind: string | undefined;
}

interface Haproxy {
  apply(wanted: Wanted): Promise<ApplyResult>;
  // Resolves when no change is being made.
  idle(): Promise<void>;
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
// A scrape must never hang on a slow admin socket.
const TRAFFIC_TIMEOUT_MS = 1_000;

export function createHaproxy(settings: HaproxySettings, log: Logger): Haproxy {
  const { binary, configPath, runtimeDir, setpriv } = settings;
  const { adminSocket, masterSocket, haproxyPid } = runtimeFiles(runtimeDir);
  const control: WorkerControl = { adminSocket, masterSocket };
  const live: Live = { servers: { proxies: new Map(), draining: new Map() }, runtimeFallbacks: 0, fenceEchoUntil: 0 };
  let child: HaproxyProcess | undefined;
  let stopping = false;
  let masterBlocked: string | undefined;
  let reportExit: (exit: HaproxyExit) => void = () => {};
  const unexpectedExit = new Promise<HaproxyExit>((resolve) => (reportExit = resolve));
  const file = createLiveConfigFile(configPath, log);
  const fence = createFence({ control, log, drainFirst: settings.drainBeforeFence, workers: () => child?.workers() ?? [] });
  // The hold's script: written anew by the first change, and again before any config is read if it is gone.
  let holdScriptWritten = false;
  const writeHold = async () => {
    if (settings.holdScript === undefined) return;
    await writeHoldScript(settings.holdScript, holdScriptWritten);
    holdScriptWritten = true;
  };
  const filesLost = async () => {
    await writeHold();
    file.lost();
    await file.write();
  };
  const keeper = createDirKeeper({ runtimeDir, log, child: () => child, busy: () => queue.stats().busy, filesLost, proxies: settings.proxies });

  const reloadChild = async (proc: HaproxyProcess): Promise<Attempt> => {
    const behind = file.behind();
    if (behind !== undefined) log.warn(`haproxy: reloading while ${configPath} may not describe what is live (${behind})`);
    const loaded = await reload({ ...proc, control }, settings.proxies, log);
    return loaded.kind === 'loaded' ? { kind: 'applied', path: 'reload' } : loaded;
  };
  const applyAtRuntime = createRuntimePath(live, {
    control,
    fence,
    log,
    fencing: settings.fence,
    cutReplicas: settings.cutReplicas,
    holding: settings.holdScript !== undefined,
    sweepSoon: () => queue.sweepSoon(),
    reloadTo: async (config) => {
      const install = await installChecked(binary, configPath, config);
      if (install.kind !== 'installed' || (await reloadChild(child!)).kind !== 'applied') return false;
      file.installed(config);
      return true;
    },
  });

  const start = async (): Promise<Attempt> => {
    const proc = startProcess({ binary, configPath, masterSocket, setpriv });
    child = proc;
    proc.onLine((line) => logOutput(line, log, live.fenceEchoUntil));
    void proc.exited.then((exit) => {
      if (!stopping) reportExit(exit);
    });
    // The pid file lets a later ambassador stop an haproxy this one left behind; without it, setpriv's death
    // signal still stops it, so failing to write it is said and not fatal.
    if (proc.pid !== undefined) await writePrivate(haproxyPid, `${proc.pid}\n`).catch((err: Error) => log.warn(`haproxy: cannot write ${haproxyPid}: ${err.message}`));
    log.info('haproxy: started', { pid: proc.pid, config: configPath });
    const loaded = await firstLoad({ ...proc, control });
    return loaded.kind === 'loaded' ? { kind: 'applied', path: 'start' } : loaded;
  };

  const attempt = async (next: Wanted, newer: () => boolean): Promise<Attempt> => {
    if (stopping || (child !== undefined && !child.running())) return { kind: 'failed', reason: 'haproxy is not running' };
    await keeper.ensure();
    const result = await change(next, newer);
    const blocked = child && settings.fence ? masterClosed(live.servers, next.servers) : undefined;
    if (blocked !== undefined && blocked !== masterBlocked) log.error(`haproxy: the master cannot be opened: ${blocked}; the primary port has no server until it can`);
    masterBlocked = blocked;
    return result;
  };

  // One try at making `next` live; the master's part of it at least, at run time, if all else fails.
  const change = async (next: Wanted, newer: () => boolean): Promise<Attempt> => {
    const tooMany = overBound(next.servers, settings);
    const runtime = child !== undefined && settings.apply === 'runtime';
    if (runtime && tooMany === undefined && (await applyAtRuntime(next.servers, next.configOf))) {
      // Under a burst of changes the file is written for the last of them (every reload installs its own).
      if (await file.live(next.config, newer())) queue.sweepSoon();
      return { kind: 'applied', path: 'runtime' };
    }
    // The rest needs a reload, or cannot be made at all: the master's part of it first, at run time.
    if (runtime && settings.fence) await applyAtRuntime(routingStep(live.servers, next.servers), next.configOf);
    // What haproxy runs when the change is not made whole, in the file.
    const partly = async () => {
      if (child && (await file.live(next.configOf(live.servers)))) queue.sweepSoon();
    };
    if (tooMany !== undefined) {
      await partly();
      return { kind: 'refused', reason: tooMany };
    }
    const written = await writeHold().then(
      () => undefined,
      (err: Error) => `cannot write ${settings.holdScript}: ${err.message}`,
    );
    if (written !== undefined) return { kind: 'failed', reason: written };
    const install = await installChecked(binary, configPath, next.config);
    if (install.kind !== 'installed') {
      await partly();
      return install;
    }
    const loaded: Attempt = child ? await reloadChild(child) : await start();
    if (loaded.kind !== 'applied') {
      // The master kept the old worker.
      await partly();
      return loaded;
    }
    live.servers = next.servers;
    file.installed(next.config);
    return loaded;
  };

  // Between changes: writes the config file if it lags, and deletes draining servers that have no session
  // left; true while either is still to do.
  const sweep = async (): Promise<boolean> => {
    const fileLags = await file.write();
    return (await sweepDrained(live, control, log, child)) || fileLags;
  };

  const queue = createApplyQueue({ attempt, sweep, log });
  const holdTotals = createHoldTotals();

  return {
    apply: (next) => queue.apply(next),
    idle: () => queue.idle(),
    retryNow: () => queue.retryNow(),
    unexpectedExit,
    stats: () => ({
      ...queue.stats(),
      masterPid: child?.running() ? child.pid : undefined,
      workers: child?.workers().length ?? 0,
      runtimeFallbacks: live.runtimeFallbacks,
      ...fence.stats(),
      masterBlocked,
      runtimeDirRestored: keeper.restored(),
      configFileBehind: file.behind(),
    }),
    // Traffic that cannot be read is left out of this scrape, not made up.
    traffic: async () => {
      if (!child?.running()) return undefined;
      const stat = await readTraffic(control, settings.proxies, TRAFFIC_TIMEOUT_MS).catch(() => undefined);
      if (stat === undefined) return undefined;
      const hold = settings.holdScript === undefined ? undefined : await readHold(control, TRAFFIC_TIMEOUT_MS).catch(() => undefined);
      return { ...stat, hold: hold && holdTotals(hold) };
    },
    stop: async () => {
      stopping = true;
      keeper.stop();
      queue.stop();
      await child?.stop(STOP_GRACE_MS, KILL_AFTER_MS);
    },
  };
}

// Why a state is refused before haproxy sees it: more servers than haproxy can open under its file limit.
function overBound(wanted: ServerTable, settings: HaproxySettings): string | undefined {
  const servers = [...wanted.proxies.values()].reduce((sum, list) => sum + list.length, 0);
  if (servers <= settings.maxServers) return undefined;
  return `${servers} servers: more than the ${settings.maxServers} haproxy can open under the open-file limit of ${settings.fileLimit} (a descriptor per server, two per connection); raise the limit (LimitNOFILE=, ulimit -n)`;
}

// Why the master `wanted` enables is not open in what haproxy runs, if it is not (after an attempt that did not
// make the whole change).
function masterClosed(running: ServerTable, wanted: ServerTable): string | undefined {
  const live = new Map((running.proxies.get(PROXY_NAME) ?? []).map((server) => [server.server, server]));
  const closed = (wanted.proxies.get(PROXY_NAME) ?? []).filter((server) => server.enabled && !live.get(server.server)?.enabled);
  if (closed.length === 0) return undefined;
  return `${closed.map((server) => server.name).join(', ')} (${hostPort(closed[0]!.address, closed[0]!.port)}) could not be opened at run time`;
}

// Deletes the draining servers that have no session left; true while some still have sessions.
async function sweepDrained(live: Live, control: WorkerControl, log: Logger, child: HaproxyProcess | undefined): Promise<boolean> {
  if (live.servers.draining.size === 0 || !child?.running()) return false;
  // Sessions that cannot be read now are read at the next sweep: every server is kept meanwhile.
  const sessions = await serverSessions(control).catch(() => new Map<string, number>());
  const draining = new Map(live.servers.draining);
  for (const id of live.servers.draining.keys()) {
    const open = sessions.get(id) ?? 1;
    if (open > 0) {
      log.debug(`haproxy: drained server ${id} kept, ${open} session(s) open`);
      continue;
    }
    if ((await runtimeCommands(control, [`set server ${id} state maint`, `del server ${id}`])) === undefined) {
      draining.delete(id);
      log.debug(`haproxy: deleted drained server ${id}`);
    }
  }
  live.servers = { proxies: live.servers.proxies, draining };
  return draining.size > 0;
}
