// The haproxy driver: the parts in this folder put together. Each change is carried out as lib/render/plan.ts decides:
// runtime API commands over the admin socket, then the config file rewritten to match; or stage file →
// `haproxy -c` → rename → reload confirmed by the master CLI. A failover never waits on a reload: the master's
// part of a change is made at run time first, whatever becomes of the rest. The apply queue keeps one change in
// flight and decides about failures; an exit of the haproxy master is reported once, for ambassador to stop. A
// runtime dir lost while running is made again, and haproxy reached through its master until it restarts.

import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { hostPort } from '../common/address.ts';
import type { Logger } from '../common/log.ts';
import type { Options } from '../options/parse.ts';
import { afterFence, fencedTable, planChange, routingStep, type ServerAddress, type ServerTable } from '../render/plan.ts';
import { PROXY_NAME } from '../render/render.ts';
import { restoreRuntimeDir, runtimeFiles, writePrivate } from '../host/rundir.ts';
import { readTraffic, request, runtimeCommands, serverAddresses, serverSessions, type Traffic, type WorkerControl } from './admin.ts';
import { createFence } from './fence.ts';
import { createLiveConfigFile, installChecked } from './config.ts';
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
// How often the runtime dir is looked at between changes, so that one deleted while all is quiet is made again
// before the next failover needs it; and how long the master has to answer on its socket again after a SIGHUP.
const RUNTIME_DIR_CHECK_MS = 5_000;
const MASTER_SOCKET_BACK_MS = 5_000;

export function createHaproxy(settings: HaproxySettings, log: Logger): Haproxy {
  const { binary, configPath, runtimeDir, setpriv } = settings;
  const { adminSocket, masterSocket, haproxyPid } = runtimeFiles(runtimeDir);
  let child: HaproxyProcess | undefined;
  let stopping = false;
  let liveServers: ServerTable = { proxies: new Map(), draining: new Map() };
  let runtimeFallbacks = 0;
  let runtimeDirRestored = 0;
  let masterBlocked: string | undefined;
  let restoring: Promise<void> | undefined;
  const file = createLiveConfigFile(configPath, log);

  // The runtime dir made right again, and the master's socket with it: a master re-creates its socket on every
  // reload, even one that fails (the config may be gone with the dir; the worker serving keeps serving). Only
  // between changes, never during a start or a reload.
  const restore = () =>
    (restoring ??= (async () => {
      try {
        const was = await restoreRuntimeDir(runtimeDir);
        if (was !== 'as it was') {
          runtimeDirRestored++;
          log.warn(`haproxy: runtime dir ${runtimeDir} ${was}`);
          if (child?.pid !== undefined) await writePrivate(haproxyPid, `${child.pid}\n`);
        }
        if (!child?.running() || existsSync(masterSocket)) return;
        log.warn('haproxy: its sockets are gone; the master reloads to listen on its socket again, and haproxy is reached through its master from now on');
        if (!existsSync(configPath)) file.lost();
        child.signal('SIGHUP');
        for (const deadline = performance.now() + MASTER_SOCKET_BACK_MS; performance.now() < deadline; await sleep(10)) {
          if (await request(masterSocket, 'show proc', 500).then(() => true, () => false)) return;
        }
        log.error(`haproxy: the master did not listen on ${masterSocket} again within ${MASTER_SOCKET_BACK_MS / 1000} s`);
      } catch (err) {
        log.error(`haproxy: runtime dir ${runtimeDir} cannot be made right: ${(err as Error).message}`);
      } finally {
        restoring = undefined;
      }
    })());
  // Whether the runtime dir or haproxy's sockets in it are gone or barred (a stat each: a few microseconds).
  const runtimeDirLost = () => !existsSync(runtimeDir) || !existsSync(masterSocket);
  const control: WorkerControl = { adminSocket, masterSocket };
  const fence = createFence({ control, log, drainFirst: settings.drainBeforeFence, workers: () => child?.workers() ?? [] });
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
    // The pid file lets a later ambassador stop an haproxy this one left behind; without it, setpriv's death
    // signal still stops it, so failing to write it is said and not fatal.
    if (proc.pid !== undefined) await writePrivate(haproxyPid, `${proc.pid}\n`).catch((err: Error) => log.warn(`haproxy: cannot write ${haproxyPid}: ${err.message}`));
    log.info('haproxy: started', { pid: proc.pid, config: configPath });
    const loaded = await firstLoad({ ...proc, control });
    return loaded.kind === 'loaded' ? { kind: 'applied', path: 'start' } : loaded;
  };

  // Makes `target` live at run time, step by step, each confirmed (see lib/render/plan.ts). False when it needs a
  // reload instead (a fence it needed is made first). `configOf` renders a table, for the reload that ends a
  // frozen fence.
  const applyAtRuntime = async (target: ServerTable, configOf: Wanted['configOf']): Promise<boolean> => {
    const plan = planChange(liveServers, target, { fence: settings.fence });
    if (plan.kind === 'none') return true;
    const served = [...target.proxies.values()].some((servers) => servers.some((server) => server.enabled));
    fenceEchoUntil = plan.fence.length > 0 && served ? performance.now() + FENCE_ECHO_MS : 0;
    const fenced = await fence.run(plan.fence, plan.fenced, sendCommands);
    if (fenced === 'failed') return false;
    if (fenced === 'frozen') {
      // A reload to the fenced state (the new master still closed) leaves the frozen streams to the old worker,
      // which the fence stops; then the rest of the change, from there.
      const closed = fencedTable(target);
      const closedConfig = configOf(closed);
      const install = await installChecked(binary, configPath, closedConfig);
      if (install.kind !== 'installed' || (await reloadChild(child!)).kind !== 'applied') return false;
      liveServers = closed;
      file.installed(closedConfig);
      await fence.confirm(plan.fenced);
      return applyAtRuntime(target, configOf);
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
    return true;
  };

  const sendCommands = async (commands: readonly string[]): Promise<boolean> => {
    for (let i = 0; i < commands.length; i += COMMANDS_PER_REQUEST) {
      const batch = commands.slice(i, i + COMMANDS_PER_REQUEST);
      const failure = await runtimeCommands(control, batch);
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
      // An answer that cannot be read is asked again until the bound, like one that is not there yet.
      for (const proxy of proxies) for (const [id, at] of await serverAddresses(control, proxy).catch(() => new Map<string, string>())) live.set(id, at);
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

  const attempt = async (next: Wanted, newer: () => boolean): Promise<Attempt> => {
    if (stopping || (child !== undefined && !child.running())) return { kind: 'failed', reason: 'haproxy is not running' };
    if (child !== undefined && runtimeDirLost()) await restore();
    const result = await change(next, newer);
    const blocked = child ? masterClosed(next.servers) : undefined;
    if (blocked !== undefined && blocked !== masterBlocked) log.error(`haproxy: the master cannot be opened: ${blocked}; the primary port has no server until it can`);
    masterBlocked = blocked;
    return result;
  };

  // One try at making `next` live; the master's part of it at least, at run time, if all else fails.
  const change = async (next: Wanted, newer: () => boolean): Promise<Attempt> => {
    const servers = [...next.servers.proxies.values()].reduce((sum, list) => sum + list.length, 0);
    const tooMany =
      servers > settings.maxServers
        ? `${servers} servers: more than the ${settings.maxServers} haproxy can open under the open-file limit of ${settings.fileLimit} (a descriptor per server, two per connection); raise the limit (LimitNOFILE=, ulimit -n)`
        : undefined;
    const runtime = child !== undefined && settings.apply === 'runtime';
    if (runtime && tooMany === undefined && (await applyAtRuntime(next.servers, next.configOf))) {
      // Under a burst of changes the file is written for the last of them (every reload installs its own).
      if (await file.live(next.config, newer())) queue.sweepSoon();
      return { kind: 'applied', path: 'runtime' };
    }
    // The rest needs a reload, or cannot be made at all: the master's part of it first, at run time.
    if (runtime && settings.fence) await applyAtRuntime(routingStep(liveServers, next.servers), next.configOf);
    // What haproxy runs when the change is not made whole, in the file.
    const partly = async () => {
      if (child && (await file.live(next.configOf(liveServers)))) queue.sweepSoon();
    };
    if (tooMany !== undefined) {
      await partly();
      return { kind: 'refused', reason: tooMany };
    }
    const install = await installChecked(binary, configPath, next.config);
    if (install.kind !== 'installed') {
      await partly();
      return install;
    }
    const loaded: Attempt = child ? await reloadChild(child) : await start();
    if (loaded.kind === 'applied') {
      liveServers = next.servers;
      file.installed(next.config);
    } else {
      // The master kept the old worker.
      await partly();
    }
    return loaded;
  };

  // Why the master `wanted` enables is not open in haproxy, if it is not (after an attempt that did not make the
  // whole change).
  const masterClosed = (wanted: ServerTable): string | undefined => {
    const live = new Map((liveServers.proxies.get(PROXY_NAME) ?? []).map((server) => [server.server, server]));
    const closed = (wanted.proxies.get(PROXY_NAME) ?? []).filter((server) => server.enabled && !live.get(server.server)?.enabled);
    if (closed.length === 0 || !settings.fence) return undefined;
    return `${closed.map((server) => server.name).join(', ')} (${hostPort(closed[0]!.address, closed[0]!.port)}) could not be opened at run time`;
  };

  const reloadChild = async (proc: HaproxyProcess): Promise<Attempt> => {
    const behind = file.behind();
    if (behind !== undefined) log.warn(`haproxy: reloading while ${configPath} may not describe what is live (${behind})`);
    const loaded = await reload({ ...proc, control }, settings.proxies, log);
    return loaded.kind === 'loaded' ? { kind: 'applied', path: 'reload' } : loaded;
  };

  // Between changes: writes the config file if it lags, and deletes draining servers that have no session
  // left; true while either is still to do.
  const sweep = async (): Promise<boolean> => {
    const fileLags = await file.write();
    return (await sweepDrained()) || fileLags;
  };

  const sweepDrained = async (): Promise<boolean> => {
    if (liveServers.draining.size === 0 || !child?.running()) return false;
    // Sessions that cannot be read now are read at the next sweep: every server is kept meanwhile.
    const sessions = await serverSessions(control).catch(() => new Map<string, number>());
    const draining = new Map(liveServers.draining);
    for (const id of liveServers.draining.keys()) {
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
    liveServers = { proxies: liveServers.proxies, draining };
    return draining.size > 0;
  };

  const queue = createApplyQueue({ attempt, sweep, log });

  // A runtime dir deleted or changed while all is quiet is made right before the next change needs it.
  const looking = setInterval(() => {
    if (child?.running() && !queue.stats().busy && runtimeDirLost()) void restore();
  }, RUNTIME_DIR_CHECK_MS);
  looking.unref();

  return {
    apply: (next) => queue.apply(next),
    idle: () => queue.idle(),
    retryNow: () => queue.retryNow(),
    unexpectedExit,
    stats: () => ({
      ...queue.stats(),
      masterPid: child?.running() ? child.pid : undefined,
      workers: child?.workers().length ?? 0,
      runtimeFallbacks,
      ...fence.stats(),
      masterBlocked,
      runtimeDirRestored,
      configFileBehind: file.behind(),
    }),
    traffic: async () => (child?.running() ? readTraffic(control, settings.proxies, TRAFFIC_TIMEOUT_MS).catch(() => undefined) : undefined),
    stop: async () => {
      stopping = true;
      clearInterval(looking);
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
