// Owns the haproxy child (master-worker, foreground): starts it, feeds it configs and runtime commands, stops it.
// Each change is carried out as lib/plan.ts decides: runtime API commands over the admin socket, then the config
// file rewritten to match; or stage file → `haproxy -c` → rename → SIGHUP. One change in flight at a time,
// always ending on the newest; a config haproxy rejects never replaces the one serving.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { constants, readFileSync } from 'node:fs';
import { access, rename, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from './log.ts';
import type { Options } from './options.ts';
import { planChange, type ServerTable } from './plan.ts';
import { PROXY_NAME } from './render.ts';
import { commandLine, readPid, runtimeFiles, SetupError, writePrivate } from './rundir.ts';

export interface HaproxySettings {
  binary: string;
  configPath: string;
  runtimeDir: string;
  // runtime: the runtime API where it can express the change; reload: always a reload.
  apply: Options['apply'];
  // Master-only: fence a server that stops being the master (see lib/plan.ts).
  fence: boolean;
  log: Logger;
  // util-linux's setpriv (essential on Debian), to have the kernel SIGTERM haproxy when ambassador dies,
  // even by SIGKILL: an haproxy that outlived it would go on routing to a master etcd may since have
  // replaced. Without it, the next ambassador stops the one left behind (rundir.ts).
  setpriv?: string | undefined;
}

export type ApplyOutcome = 'applied' | 'unchanged' | 'rejected' | 'superseded';

// How an applied change reached haproxy.
export type ApplyPath = 'start' | 'runtime' | 'reload';

export interface ApplyResult {
  outcome: ApplyOutcome;
  path?: ApplyPath;
  ms: number;
}

// What haproxy should run: the config text, and the servers it describes.
export interface Wanted {
  config: string;
  servers: ServerTable;
}

export interface MasterExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  lastAlerts: string[];
}

// How haproxy is doing, for health and metrics.
export interface HaproxyStats {
  masterPid: number | undefined;
  // Worker processes under the master: 1 normally, more while old ones finish their sessions.
  workers: number;
  // The newest wanted config is live (false while one is being applied, or after haproxy refused it).
  current: boolean;
  refusedNewest: boolean;
  runtimeChanges: number;
  reloads: number;
  refused: number;
  runtimeFallbacks: number;
}

export interface Haproxy {
  apply(wanted: Wanted): Promise<ApplyResult>;
  stats(): HaproxyStats;
  // Resolves when the master exits for any reason other than stop().
  unexpectedExit: Promise<MasterExit>;
  stop(): Promise<void>;
}

// After "Loading success" the master re-executes itself and drops a SIGHUP that comes meanwhile (all of 60 sent
// 0-5 ms after it, none once its CLI answers): a SIGHUP waits until the master CLI answers, up to this bound.
const MASTER_READY_MS = 5_000;
const LOAD_TIMEOUT_MS = 60_000;
const RESEND_HUP_MS = 5_000;
// After "Loading success" the worker being replaced may accept connections for a few ms more, on the old state.
// A reload is done when that worker says its proxy stopped; the bound covers a worker that is already gone.
const OLD_WORKER_STOP_MS = 2_000;
const STOP_GRACE_MS = 5_000;
const KILL_AFTER_MS = 2_000;
const COMMAND_TIMEOUT_MS = 2_000;
const DRAIN_SWEEP_MS = 1_000;
// Small enough for haproxy's command line buffer; a failover's few commands always go in one.
const COMMANDS_PER_REQUEST = 40;

// The haproxy version line, or a SetupError saying why the executable cannot run.
export async function haproxyVersion(binary: string): Promise<string> {
  try {
    const { stdout } = await run(binary, ['-v']);
    return stdout.split('\n')[0]!.trim();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new SetupError(`haproxy executable not found: ${binary} (install haproxy or pass --haproxy)`);
    if (code === 'EACCES') throw new SetupError(`haproxy executable is not executable: ${binary}`);
    throw new SetupError(`haproxy executable ${binary} does not run: ${(err as Error).message}`);
  }
}

// An executable by name: on PATH, or in the sbin dirs, where Debian installs haproxy and which a user's PATH
// may lack. Undefined when there is none.
export async function findExecutable(name: string, env: Readonly<Record<string, string | undefined>>): Promise<string | undefined> {
  const dirs = [...(env.PATH ?? '').split(':').filter(Boolean), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    const path = `${dir}/${name}`;
    if (await access(path, constants.X_OK).then(() => true, () => false)) return path;
  }
  return undefined;
}

// --once: the config checked and written, then the haproxy of this runtime dir reloaded, or one started
// in the background (master-worker daemon) that outlives us. Resolves with what was done.
export async function applyOnce(settings: HaproxySettings, config: string): Promise<'reloaded' | 'started'> {
  const { binary, configPath, runtimeDir } = settings;
  const problem = await installChecked(binary, configPath, config);
  if (problem !== undefined) throw new SetupError(`haproxy rejected the config: ${problem}`);
  const pidFile = runtimeFiles(runtimeDir).haproxyPid;
  const running = await readPid(pidFile);
  if (running !== undefined && (await commandLine(running)).includes(configPath)) {
    const before = childrenOf(running);
    const reloaded = () => childrenOf(running).some((pid) => !before.includes(pid));
    for (let attempt = 0; attempt < 5 && !reloaded(); attempt++) {
      process.kill(running, 'SIGHUP');
      for (let waited = 0; waited < 2000 && !reloaded(); waited += 25) await sleep(25);
    }
    if (!reloaded()) throw new SetupError(`haproxy ${running} did not reload`);
    return 'reloaded';
  }
  await unlink(pidFile).catch(() => {});
  // The launcher exits once the daemon is up; the daemon may keep the stderr pipe, so wait for the exit only.
  const launcher = spawn(binary, ['-W', '-D', '-p', pidFile, '-f', configPath], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let stderr = '';
  launcher.stderr!.on('data', (data) => (stderr += data));
  const code = await new Promise<number | null>((resolve, reject) => launcher.on('exit', resolve).on('error', reject));
  launcher.stderr!.destroy();
  if (code !== 0) {
    const alerts = stderr.split('\n').filter((line) => line.includes('[ALERT]'));
    throw new SetupError(`haproxy did not start (exit ${code}): ${alerts.join(' | ') || stderr.trim()}`);
  }
  return 'started';
}

export function createHaproxy(settings: HaproxySettings): Haproxy {
  const { binary, configPath, runtimeDir, log, setpriv } = settings;
  const { adminSocket, masterSocket, haproxyPid } = runtimeFiles(runtimeDir);
  let child: ChildProcess | undefined;
  let stopping = false;
  let liveConfig: string | undefined;
  let liveServers: ServerTable = new Map();
  let wanted: Wanted | undefined;
  let rejected: string | undefined;
  let busy = false;
  let sweepDue = false;
  let sweepTimer: NodeJS.Timeout | undefined;
  let waiters: { config: string; resolve: (result: ApplyResult) => void }[] = [];
  const counts = { runtimeChanges: 0, reloads: 0, refused: 0, runtimeFallbacks: 0 };
  // Waits on haproxy's output: each is shown every line, and undefined when the master exits.
  const lineWaits = new Set<(line: string | undefined) => void>();
  const lastAlerts: string[] = [];
  let reportExit: (exit: MasterExit) => void = () => {};
  const unexpectedExit = new Promise<MasterExit>((resolve) => (reportExit = resolve));

  const onOutputLine = (line: string) => {
    const text = line.trim();
    if (text === '') return;
    for (const wait of lineWaits) wait(text);
    if (text.startsWith('[ALERT]')) {
      lastAlerts.push(text);
      if (lastAlerts.length > 5) lastAlerts.shift();
    }
    log[outputLevel(text)](`haproxy: ${text}`);
  };

  // The first output line `pick` gives a value for; `fallback` after `ms`, when the master exits, or on cancel().
  const nextLine = <T>(pick: (line: string) => T | undefined, ms: number, fallback: T) => {
    let cancel = () => {};
    const value = new Promise<T>((resolve) => {
      const finish = (result: T) => {
        clearTimeout(timer);
        lineWaits.delete(wait);
        resolve(result);
      };
      const wait = (line: string | undefined) => {
        const result = line === undefined ? fallback : pick(line);
        if (result !== undefined) finish(result);
      };
      const timer = setTimeout(() => finish(fallback), ms);
      lineWaits.add(wait);
      cancel = () => finish(fallback);
    });
    return { value, cancel };
  };

  // True on "Loading success"; false on "Loading failure", when the master exits, or after LOAD_TIMEOUT_MS.
  const nextLoad = async (): Promise<boolean> => {
    const pick = (line: string) => (/Loading success/.test(line) ? 'success' : /Loading failure/.test(line) ? 'failure' : undefined);
    const result = await nextLine(pick, LOAD_TIMEOUT_MS, 'silent').value;
    if (result === 'silent' && child) log.error(`haproxy: no "Loading success" or "Loading failure" within ${LOAD_TIMEOUT_MS / 1000} s`);
    return result === 'success';
  };

  const start = async (): Promise<boolean> => {
    const loaded = nextLoad();
    // Its own process group: a Ctrl-C on the terminal reaches ambassador, which then stops haproxy in order.
    const args = ['-W', '-db', '-S', `${masterSocket},mode,600`, '-f', configPath];
    const [command, commandArgs] = setpriv ? [setpriv, ['--pdeathsig', 'SIGTERM', binary, ...args]] : [binary, args];
    const proc = spawn(command, commandArgs, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    child = proc;
    proc.on('error', (err) => log.error(`haproxy: ${err.message}`));
    createInterface({ input: proc.stdout! }).on('line', onOutputLine);
    createInterface({ input: proc.stderr! }).on('line', onOutputLine);
    proc.on('exit', (code, signal) => {
      child = undefined;
      for (const wait of lineWaits) wait(undefined);
      void unlink(haproxyPid).catch(() => {});
      // Its last lines may still be in the pipe: let them arrive before reporting.
      if (!stopping) setTimeout(() => reportExit({ code, signal, lastAlerts: [...lastAlerts] }), 50);
    });
    if (proc.pid !== undefined) await writePrivate(haproxyPid, `${proc.pid}\n`);
    log.info('haproxy: started', { pid: proc.pid, config: configPath });
    return loaded;
  };

  const reload = async (): Promise<boolean> => {
    if (!(await masterAnswers(masterSocket, MASTER_READY_MS))) log.warn(`haproxy: master CLI silent for ${MASTER_READY_MS / 1000} s; sending SIGHUP anyway`);
    const loaded = nextLoad();
    const oldWorkerStopped = nextLine((line) => line.includes(`Proxy ${PROXY_NAME} stopped`) || undefined, OLD_WORKER_STOP_MS, false);
    // A SIGHUP can still be lost; one sent while haproxy is loading is dropped, so sending it again is safe.
    const again = setInterval(() => {
      log.warn(`haproxy: no answer to SIGHUP within ${RESEND_HUP_MS / 1000} s; sending it again`);
      child?.kill('SIGHUP');
    }, RESEND_HUP_MS);
    child?.kill('SIGHUP');
    try {
      if (!(await loaded)) return false;
      await oldWorkerStopped.value;
      return true;
    } finally {
      clearInterval(again);
      oldWorkerStopped.cancel();
    }
  };

  // Stage, check, swap, load: the path for a first start and for every reload.
  const checkAndLoad = async (next: Wanted): Promise<boolean> => {
    const problem = await installChecked(binary, configPath, next.config);
    if (problem !== undefined) {
      log.error('haproxy: rejected the new config; the last good one keeps serving', { reason: problem });
      return false;
    }
    if (child ? await reload() : await start()) return true;
    if (child && liveConfig !== undefined) {
      // The master kept the old worker: put the file back in step with what is live.
      await replaceConfig(configPath, liveConfig);
      log.error('haproxy: failed to load the new config; the last good one keeps serving', { reason: lastAlerts.at(-1) });
    }
    return false;
  };


  // The runtime path: commands in order, then the file rewritten to describe what is now live.
  const applyAtRuntime = async (next: Wanted): Promise<boolean> => {
    const plan = planChange(liveServers, next.servers, { fence: settings.fence });
    if (plan.kind === 'reload') {
      log.info(`haproxy: reloading, the runtime API cannot do this change: ${plan.reason}`);
      return false;
    }
    if (plan.kind === 'runtime') {
      for (let i = 0; i < plan.commands.length; i += COMMANDS_PER_REQUEST) {
        const batch = plan.commands.slice(i, i + COMMANDS_PER_REQUEST);
        const failure = await runtimeCommands(adminSocket, batch);
        if (failure !== undefined) {
          log.warn(`haproxy: runtime commands failed, reloading instead: ${batch.join('; ')}`, { answer: failure });
          counts.runtimeFallbacks++;
          return false;
        }
        for (const command of batch) log.debug(`haproxy: ${command}`);
      }
      liveServers = plan.next;
    }
    await replaceConfig(configPath, next.config);
    return true;
  };

  const applyOne = async (next: Wanted): Promise<ApplyPath | undefined> => {
    try {
      if (child && settings.apply === 'runtime' && (await applyAtRuntime(next))) return 'runtime';
      const path = child ? 'reload' : 'start';
      if (!(await checkAndLoad(next))) return undefined;
      liveServers = next.servers;
      return path;
    } catch (err) {
      log.error('haproxy: could not apply the new config', { reason: (err as Error).message });
      return undefined;
    }
  };

  // Deletes draining servers that have no session left; one that still has some is looked at again later.
  const sweepDrained = async () => {
    const draining = [...liveServers].filter(([, server]) => server.state === 'drain').map(([name]) => name);
    if (draining.length === 0 || !child) return;
    const sessions = await serverSessions(adminSocket).catch(() => new Map<string, number>());
    const table = new Map(liveServers);
    for (const name of draining) {
      if ((sessions.get(name) ?? 1) > 0) continue;
      const id = `${PROXY_NAME}/${name}`;
      if ((await runtimeCommands(adminSocket, [`set server ${id} state maint`, `del server ${id}`])) === undefined) {
        table.delete(name);
        log.debug(`haproxy: deleted drained server ${name}`);
      }
    }
    liveServers = table;
  };

  const scheduleSweep = () => {
    const draining = [...liveServers.values()].some((server) => server.state === 'drain');
    if (!draining || sweepTimer || stopping) return;
    sweepTimer = setTimeout(() => {
      sweepTimer = undefined;
      sweepDue = true;
      if (!busy) void drain();
    }, DRAIN_SWEEP_MS);
    sweepTimer.unref();
  };

  const drain = async () => {
    busy = true;
    try {
      while (!stopping) {
        if (wanted !== undefined && wanted.config !== liveConfig && wanted.config !== rejected) {
          const next = wanted;
          const batch = waiters.splice(0);
          const began = performance.now();
          const path = await applyOne(next);
          if (path) liveConfig = next.config;
          else rejected = next.config;
          if (path === 'runtime') counts.runtimeChanges++;
          if (path === 'reload') counts.reloads++;
          if (!path) counts.refused++;
          const ms = Math.round(performance.now() - began);
          for (const waiter of batch) {
            const outcome = waiter.config !== next.config ? 'superseded' : path ? 'applied' : 'rejected';
            waiter.resolve(path && outcome === 'applied' ? { outcome, path, ms } : { outcome, ms });
          }
        } else if (sweepDue) {
          sweepDue = false;
          await sweepDrained();
        } else {
          break;
        }
      }
      for (const waiter of waiters.splice(0)) {
        const outcome = waiter.config === liveConfig ? 'unchanged' : waiter.config === rejected ? 'rejected' : 'superseded';
        waiter.resolve({ outcome, ms: 0 });
      }
    } finally {
      busy = false;
      scheduleSweep();
    }
  };

  return {
    apply: (next) =>
      new Promise<ApplyResult>((resolve) => {
        waiters.push({ config: next.config, resolve });
        wanted = next;
        if (!busy) void drain();
      }),
    unexpectedExit,
    stats: () => ({
      masterPid: child?.pid,
      workers: child?.pid === undefined ? 0 : childrenOf(child.pid).length,
      current: !busy && wanted !== undefined && wanted.config === liveConfig,
      refusedNewest: wanted !== undefined && wanted.config === rejected,
      ...counts,
    }),
    stop: async () => {
      stopping = true;
      clearTimeout(sweepTimer);
      const proc = child;
      if (!proc || proc.pid === undefined) return;
      const exited = new Promise((resolve) => proc.once('exit', resolve));
      // SIGUSR1: workers stop accepting and finish their sessions; SIGTERM, then SIGKILL, if they take too long.
      proc.kill('SIGUSR1');
      if (await within(exited, STOP_GRACE_MS)) return;
      log.warn('haproxy: still has sessions open; closing them', { after_ms: STOP_GRACE_MS });
      proc.kill('SIGTERM');
      if (await within(exited, KILL_AFTER_MS)) return;
      proc.kill('SIGKILL');
      await exited;
    },
  };
}

// haproxy says WARNING for every step of a normal reload or stop; those are routine, the rest is not.
const ROUTINE = /Proxy \S+ stopped|(Former|Current) worker \(\d+\) exited with code 0|Exiting Master process|All workers exited|Reexecuting Master/;

// What our own runtime commands did (maintenance in and out); ambassador logs those changes itself.
const OURS = /\) : CLI : |going DOWN for maintenance|leaving forced maintenance|is going DOWN for drain|leaving forced drain/;
// Also true for the instant a failover fences the old master before enabling the new one.
const NO_SERVER = /has no server available/;

function outputLevel(line: string): 'debug' | 'info' | 'warn' | 'error' {
  if (line.startsWith('[NOTICE]') || ROUTINE.test(line) || OURS.test(line)) return 'debug';
  if (line.startsWith('[WARNING]') || NO_SERVER.test(line)) return 'warn';
  if (line.startsWith('[ALERT]')) return 'error';
  return 'info';
}

// Commands sent as one request, which haproxy runs back to back: a failover's fence and enable are one step.
// Undefined when haproxy answered each as done, else what it answered otherwise.
const DONE = /^(New server registered\.|Server deleted\.|IP changed from .*|no need to change the addr.*|.*port changed from .*)$/;

function runtimeCommands(socket: string, commands: string[]): Promise<string | undefined> {
  return adminRequest(socket, commands.join('; ')).then(
    (answer) => {
      const refused = answer.split('\n').map((line) => line.trim()).filter((line) => line !== '' && !DONE.test(line));
      return refused.length === 0 ? undefined : refused.join(' | ');
    },
    (err: Error) => err.message,
  );
}

function adminRequest(socket: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const connection = connect(socket);
    let answer = '';
    connection.setTimeout(COMMAND_TIMEOUT_MS, () => connection.destroy(new Error(`no answer within ${COMMAND_TIMEOUT_MS} ms`)));
    connection.on('data', (data) => (answer += data.toString()));
    connection.on('end', () => resolve(answer));
    connection.on('error', reject);
    connection.end(command + '\n');
  });
}

// True once the master CLI answers, i.e. the master runs its loop and will act on a signal.
async function masterAnswers(socket: string, withinMs: number): Promise<boolean> {
  const deadline = performance.now() + withinMs;
  while (performance.now() < deadline) {
    if ((await adminRequest(socket, 'show proc').catch(() => '')).includes('master')) return true;
    await sleep(2);
  }
  return false;
}

// Current sessions per server of our proxy, from `show stat`.
async function serverSessions(socket: string): Promise<Map<string, number>> {
  const csv = await adminRequest(socket, 'show stat -1 4 -1');
  const sessions = new Map<string, number>();
  for (const line of csv.split('\n')) {
    const [proxy, server, , , current] = line.split(',');
    if (proxy === PROXY_NAME && server !== undefined && current !== undefined) sessions.set(server, Number(current));
  }
  return sessions;
}

// Writes the config to a stage file next to its place, then renames it over the one in place: a reader never
// sees half a file. For what haproxy already runs; a new config goes through installChecked.
async function replaceConfig(configPath: string, config: string): Promise<void> {
  const stagePath = `${configPath}.new`;
  await writePrivate(stagePath, config);
  await rename(stagePath, configPath);
}

// Writes the config to a stage file next to its place and has haproxy check it; only a config haproxy
// accepts is renamed over the one in place. Undefined when installed, else haproxy's error lines.
async function installChecked(binary: string, configPath: string, config: string): Promise<string | undefined> {
  const stagePath = `${configPath}.new`;
  await writePrivate(stagePath, config);
  const problem = await check(binary, stagePath);
  if (problem === undefined) await rename(stagePath, configPath);
  return problem;
}

// haproxy's verdict on a config file: undefined when valid, else its error lines.
async function check(binary: string, path: string): Promise<string | undefined> {
  try {
    await run(binary, ['-c', '-f', path]);
    return undefined;
  } catch (err) {
    const output = String((err as { stderr?: string }).stderr ?? '') || (err as Error).message;
    const alerts = output.split('\n').filter((line) => line.includes('[ALERT]'));
    return (alerts.length > 0 ? alerts : output.split('\n')).map((line) => line.trim()).filter(Boolean).slice(0, 5).join(' | ');
  }
}

function run(binary: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(binary, args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(err, { stdout, stderr }));
      else resolve({ stdout, stderr });
    });
  });
}

function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return Promise.race([promise.then(() => true), sleep(ms).then(() => false)]);
}
