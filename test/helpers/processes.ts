// Every process a test starts is tracked here and stopped by its pid when the test ends, pass or fail,
// and at the latest when the test process exits: an orphaned haproxy would hold its port for the next run.

import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

// pid → its command line when tracked, so that a pid reused by another process is never signalled.
const tracked = new Map<number, string>();

function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

export function track(pid: number | undefined): void {
  if (pid !== undefined && !tracked.has(pid)) tracked.set(pid, commandLine(pid));
}

function stillOurs(pid: number): boolean {
  return tracked.has(pid) && commandLine(pid) === tracked.get(pid);
}

export function untrack(pid: number | undefined): void {
  if (pid !== undefined) tracked.delete(pid);
}

export function startProcess(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  track(child.pid);
  child.on('exit', () => untrack(child.pid));
  return child;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie is dead for our purposes.
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

export function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {}
}

// SIGTERM, then SIGKILL after `graceMs`; resolves once the pid is gone.
export async function stopPid(pid: number, graceMs = 3000): Promise<void> {
  signal(pid, 'SIGTERM');
  for (let waited = 0; waited < graceMs; waited += 25) {
    if (!isAlive(pid)) break;
    await sleep(25);
  }
  if (isAlive(pid)) signal(pid, 'SIGKILL');
  for (let waited = 0; waited < 2000 && isAlive(pid); waited += 25) await sleep(25);
  untrack(pid);
}

export async function stopAll(): Promise<void> {
  await Promise.all([...tracked.keys()].map((pid) => (stillOurs(pid) ? stopPid(pid) : untrack(pid))));
}

process.on('exit', () => {
  for (const pid of tracked.keys()) if (stillOurs(pid)) signal(pid, 'SIGKILL');
});
