// Every process a test starts is tracked here and stopped by its pid when the test ends, pass or fail,
// and at the latest when the test process exits: an orphaned haproxy would hold its port for the next run.
// A process is known by its pid and start time, so a pid the kernel has since given to another is never signalled.

import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { stopInSteps } from '../lib/host/stop.ts';

// pid → start time when tracked; and every process ever tracked, to check that none is left running.
const tracked = new Map<number, string>();
const everTracked: { pid: number; started: string }[] = [];

// A running (not zombie) process's start time, or undefined.
function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] === 'Z' ? undefined : fields[19];
  } catch {
    return undefined;
  }
}

// Whether a child has not ended yet: one killed by a signal has no exit code, only its signal.
export function isRunning(child: ChildProcess | undefined): child is ChildProcess {
  return child !== undefined && child.exitCode === null && child.signalCode === null;
}

// A probe that says whether this very process still runs.
export function processOf(pid: number): () => boolean {
  const started = startTime(pid);
  return () => started !== undefined && startTime(pid) === started;
}

// Tracks a running process; with `command`, only if its command line names it (a pid file can be stale).
export function track(pid: number | undefined, command?: string): void {
  if (pid === undefined || tracked.has(pid)) return;
  if (command !== undefined && !readCommandLine(pid).includes(command)) return;
  const started = startTime(pid);
  if (started === undefined) return;
  tracked.set(pid, started);
  everTracked.push({ pid, started });
}

function readCommandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

export function startProcess(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  track(child.pid);
  child.on('exit', () => child.pid !== undefined && tracked.delete(child.pid));
  return child;
}

export function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {}
}

// SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone.
export async function stopPid(pid: number, graceMs = 3000): Promise<void> {
  const started = tracked.get(pid);
  const alive = started !== undefined ? () => startTime(pid) === started : processOf(pid);
  const gone = async (ms: number) => {
    for (let waited = 0; waited < ms && alive(); waited += 25) await sleep(25);
    return !alive();
  };
  await stopInSteps([['SIGTERM', graceMs], ['SIGKILL', 2000]], (name) => signal(pid, name), gone);
  tracked.delete(pid);
}

// For a pid read from a pid file: stopped only if tracked while it ran, so never a process that reused it.
export async function stopIfTracked(pid: number): Promise<void> {
  if (tracked.has(pid)) await stopPid(pid);
}

// Stops what is still tracked, then fails if any process a test started still runs.
export async function stopAll(): Promise<void> {
  await Promise.all([...tracked.keys()].map((pid) => stopPid(pid)));
  const left = everTracked.filter(({ pid, started }) => startTime(pid) === started);
  if (left.length > 0) {
    for (const { pid } of left) signal(pid, 'SIGKILL');
    throw new Error(`left running after the tests: ${left.map(({ pid }) => `${pid} (${readCommandLine(pid).replaceAll('\0', ' ').trim()})`).join(', ')}`);
  }
}

process.on('exit', () => {
  for (const [pid, started] of tracked) if (startTime(pid) === started) signal(pid, 'SIGKILL');
});
