// The haproxy master process, and nothing else: starts it (master-worker, foreground, master CLI on a private
// socket), hands its output on line by line (and says at what level each deserves), signals it, and stops it
// in order. A spawn that fails is an exit.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Logger } from '../common/log.ts';
import { stopInSteps } from '../host/stop.ts';
import { haproxyEnvironment } from './config.ts';
import { setTimeout as sleep } from 'node:timers/promises';

export interface HaproxyExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  // Why it could not run at all (a spawn error), if that is how it ended.
  error?: string;
  // Its last [ALERT] lines, which say why it stopped.
  lastAlerts: string[];
}

interface ProcessSettings {
  binary: string;
  configPath: string;
  masterSocket: string;
  // util-linux's setpriv, to have the kernel SIGTERM haproxy when ambassador dies, even by SIGKILL.
  setpriv?: string | undefined;
}

export interface HaproxyProcess {
  pid: number | undefined;
  masterSocket: string;
  // Every output line (stdout and stderr), trimmed; returns a function that stops the listening.
  onLine(listener: (line: string) => void): () => void;
  exited: Promise<HaproxyExit>;
  running(): boolean;
  signal(name: NodeJS.Signals): void;
  // Worker processes under the master: 1 normally, more while replaced ones finish their sessions.
  workers(): number[];
  // SIGUSR1 (workers finish their sessions), then SIGTERM after graceMs, then SIGKILL after killAfterMs.
  stop(graceMs: number, killAfterMs: number): Promise<void>;
}

const ALERTS_KEPT = 5;

export function startProcess(settings: ProcessSettings): HaproxyProcess {
  const { binary, configPath, masterSocket, setpriv } = settings;
  const args = ['-W', '-db', '-S', `${masterSocket},mode,600`, '-f', configPath];
  const [command, commandArgs] = setpriv ? [setpriv, ['--pdeathsig', 'SIGTERM', binary, ...args]] : [binary, args];
  // Its own process group: a Ctrl-C on the terminal reaches ambassador, which then stops haproxy in order.
  const child = spawn(command, commandArgs, { env: haproxyEnvironment(), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const listeners = new Set<(line: string) => void>();
  const lastAlerts: string[] = [];
  let alive = child.pid !== undefined;

  const onOutput = (raw: string) => {
    const line = raw.trim();
    if (line === '') return;
    if (line.startsWith('[ALERT]')) {
      lastAlerts.push(line);
      if (lastAlerts.length > ALERTS_KEPT) lastAlerts.shift();
    }
    for (const listener of listeners) listener(line);
  };
  createInterface({ input: child.stdout! }).on('line', onOutput);
  createInterface({ input: child.stderr! }).on('line', onOutput);

  const exited = new Promise<HaproxyExit>((resolve) => {
    // 'error' without 'exit' is a spawn that failed (ENOENT, EAGAIN...): the process never ran.
    child.once('error', (err) => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) return;
      alive = false;
      resolve({ code: null, signal: null, error: err.message, lastAlerts: [...lastAlerts] });
    });
    child.once('exit', (code, signal) => {
      alive = false;
      // Its last lines may still be in the pipes: let them arrive before reporting.
      setTimeout(() => resolve({ code, signal, lastAlerts: [...lastAlerts] }), 50);
    });
  });

  const signal = (name: NodeJS.Signals) => {
    if (alive) child.kill(name);
  };

  return {
    pid: child.pid,
    masterSocket,
    onLine: (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    exited,
    running: () => alive,
    signal,
    workers: () => (alive && child.pid !== undefined ? childrenOf(child.pid) : []),
    stop: async (graceMs, killAfterMs) => {
      const gone = (ms: number) => (alive ? Promise.race([exited.then(() => true), sleep(ms, false, { ref: false })]) : Promise.resolve(true));
      if (!(await stopInSteps([['SIGUSR1', graceMs], ['SIGTERM', killAfterMs]], signal, gone))) signal('SIGKILL');
      await exited;
    },
  };
}

// A process that is gone has no children.
export function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

// Whether a process runs (a zombie counts, briefly, until its parent reaps it).
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

// haproxy's own output, at the level it deserves.
export function logOutput(line: string, log: Logger, fenceEchoUntil: number): void {
  if (NO_SERVER.test(line) && performance.now() < fenceEchoUntil) log.debug(`haproxy: ${line} (for the instant between fencing the old master and enabling the new one)`);
  else log[outputLevel(line)](`haproxy: ${line}`);
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
