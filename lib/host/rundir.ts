// The private runtime dir: made private (0700) or refused, held by one ambassador at a time, and cleared of
// an haproxy that a killed ambassador left behind. Files are written fresh, never through a link placed there.

import { constants } from 'node:fs';
import { access, chmod, lstat, mkdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../common/log.ts';
import { stopInSteps } from './stop.ts';

const STOP_GRACE_MS = 5_000;
const KILL_AFTER_MS = 2_000;

// The files a runtime dir holds, named in this one place.
export function runtimeFiles(dir: string) {
  return { adminSocket: `${dir}/admin.sock`, masterSocket: `${dir}/master.sock`, haproxyPid: `${dir}/haproxy.pid`, ambassadorPid: `${dir}/ambassador.pid`, holdScript: `${dir}/hold.lua` };
}

// A failure to set up (runtime dir, haproxy executable, config dir): ambassador exits 1 with its message.
export class SetupError extends Error {}

// The runtime dir holds the config (by default), the admin sockets and the pid files: private to us, or refused.
// A directory ambassador did not make is never changed: one open to others may be shared (`/tmp`, a service's
// folder), and making it private would break whatever else uses it.
export async function prepareRuntimeDir(dir: string): Promise<void> {
  const made = await mkdir(dir, { recursive: true, mode: 0o700 });
  const info = await lstat(dir);
  const uid = process.getuid?.() ?? 0;
  if (!info.isDirectory()) throw new SetupError(`runtime dir ${dir} is not a directory (a link or a file is in the way)`);
  if (info.uid !== uid) throw new SetupError(`runtime dir ${dir} belongs to uid ${info.uid}, not to this user (uid ${uid}): choose another --runtime-dir`);
  if ((info.mode & 0o077) === 0) return;
  const mode = (info.mode & 0o7777).toString(8).padStart(4, '0');
  // Only a dir this call made can be open here, through an odd umask: it is ours to close.
  if (made !== undefined) return chmod(dir, 0o700);
  throw new SetupError(`runtime dir ${dir} is open to others (mode ${mode}) and may be shared: ambassador keeps its admin sockets in a private dir and never changes one it did not make; give it a dir of its own, e.g. --runtime-dir=${dir.replace(/\/+$/, '')}/ambassador`);
}

// The runtime dir as prepareRuntimeDir left it, made again if it went missing while running, or given back its
// mode if it was changed (it is ours: it passed prepareRuntimeDir). Says what it found.
export async function restoreRuntimeDir(dir: string): Promise<'as it was' | 'was deleted: made it again' | 'had its mode changed: made it private again'> {
  const info = await lstat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (info === undefined) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
    // Still held by this ambassador.
    await writePrivate(runtimeFiles(dir).ambassadorPid, `${process.pid}\n`);
    return 'was deleted: made it again';
  }
  if (!info.isDirectory()) throw new SetupError(`runtime dir ${dir} is no longer a directory`);
  if ((info.mode & 0o777) === 0o700) return 'as it was';
  await chmod(dir, 0o700);
  return 'had its mode changed: made it private again';
}

// One ambassador per runtime dir; an haproxy left behind by one that was killed is stopped before we start ours.
export async function claimRuntimeDir(runtimeDir: string, configPath: string, log: Logger): Promise<void> {
  await refuseIfOwned(runtimeDir);
  const files = runtimeFiles(runtimeDir);
  const leftover = await readPid(files.haproxyPid);
  if (leftover !== undefined && (await commandLine(leftover)).includes(configPath)) {
    // Its ambassador.pid gone (deleted with a file or two), but its ambassador alive: not left behind.
    const parent = await parentOf(leftover);
    if (parent !== undefined && parent !== process.pid && (await commandLine(parent)).includes('ambassador')) {
      throw new SetupError(`another ambassador (pid ${parent}) is running with runtime dir ${runtimeDir}`);
    }
    log.warn('stopping an haproxy left behind by an earlier ambassador', { pid: leftover });
    await terminate(leftover);
  }
  await writePrivate(files.ambassadorPid, `${process.pid}\n`);
  const configDir = dirname(configPath);
  await access(configDir, constants.W_OK).catch(() => {
    throw new SetupError(`cannot write the haproxy config: directory ${configDir} is missing or not writable`);
  });
}

export async function refuseIfOwned(runtimeDir: string): Promise<void> {
  const owner = await readPid(runtimeFiles(runtimeDir).ambassadorPid);
  if (owner !== undefined && owner !== process.pid && (await commandLine(owner)).includes('ambassador')) {
    throw new SetupError(`another ambassador (pid ${owner}) is running with runtime dir ${runtimeDir}`);
  }
}

export async function releaseRuntimeDir(runtimeDir: string): Promise<void> {
  // Already gone (the dir was removed under us) is released too.
  await unlink(runtimeFiles(runtimeDir).ambassadorPid).catch(() => {});
}

// Creates the file anew (never writing through a link someone placed there), readable by us alone.
export async function writePrivate(path: string, text: string): Promise<void> {
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  await writeFile(path, text, { flag: 'wx', mode: 0o600 });
}

// The live process a pid file names; a missing or unreadable file names none.
export async function readPid(path: string): Promise<number | undefined> {
  const text = await readFile(path, 'utf8').catch(() => '');
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 1 && (await running(pid)) !== undefined ? pid : undefined;
}

export async function commandLine(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ');
}

// The parent of a process, while it runs.
async function parentOf(pid: number): Promise<number | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  return Number.isInteger(parent) && parent > 1 ? parent : undefined;
}

// A running (not zombie) process's start time, which tells it from a later process given the same pid.
async function running(pid: number): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return stat !== '' && fields[0] !== 'Z' ? fields[19] : undefined;
}

// Stops a process that is not our child (we cannot wait for it): SIGTERM, then SIGKILL after a while.
// Every signal and check is for that very process, never for one that took its pid since.
async function terminate(pid: number): Promise<void> {
  const started = await running(pid);
  if (started === undefined) return;
  const gone = async (ms: number) => {
    for (const deadline = Date.now() + ms; ; await sleep(50)) {
      if ((await running(pid)) !== started) return true;
      if (Date.now() >= deadline) return false;
    }
  };
  // A signal goes out just after a check that the process is the one meant; one gone in between is gone.
  const send = (name: NodeJS.Signals) => {
    try {
      process.kill(pid, name);
    } catch {}
  };
  // Two haproxys on one port would both take connections: ours starts only once the old one is gone.
  if (!(await stopInSteps([['SIGTERM', STOP_GRACE_MS], ['SIGKILL', KILL_AFTER_MS]], send, gone))) {
    throw new SetupError(`haproxy ${pid}, left behind by an earlier ambassador, does not die`);
  }
}
