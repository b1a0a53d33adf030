// Starts ambassador (from source, or the built dist/ambassador) as a child process with its own runtime dir,
// collects its log lines, and makes sure neither it nor its haproxy outlives the test.

import { type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { requireCommand } from './etcd.ts';
import { isRunning, startProcess, stopIfTracked, stopPid, track } from './processes.ts';

const root = resolve(import.meta.dirname, '..');
// The built executable: this machine's, or another architecture's (AMBASSADOR_TEST_DIST=dist/ambassador-linux-arm64,
// run under emulation).
export const DIST_BINARY = resolve(root, process.env.AMBASSADOR_TEST_DIST ?? 'dist/ambassador');

export interface RunningAmbassador {
  child: ChildProcess;
  runtimeDir: string;
  configPath: string;
  logs: string[];
  exited: Promise<number | null>;
  waitForLog(pattern: RegExp, timeoutMs?: number, from?: number): Promise<string>;
  haproxyPid(): number | undefined;
  // SIGTERM (or another signal) and wait for the exit code.
  stop(signalName?: NodeJS.Signals): Promise<number | null>;
  // SIGKILL, as a crash would: leaves its haproxy running, for the test to look at.
  kill(): Promise<void>;
  cleanup(): Promise<void>;
}

export interface StartOptions {
  binary?: 'source' | 'dist';
  // Another executable than the two above (an arm64 build, say).
  executable?: string;
  runtimeDir?: string;
  env?: Record<string, string>;
  // Runs <root>/bin/ambassador inside the root filesystem `root` as `user`: chroot, in a mount namespace
  // of its own with /proc mounted. The process keeps its pid, so signals reach ambassador itself.
  chroot?: { root: string; user: string };
  // The open-file limit (soft and hard) ambassador, and so its haproxy, run under.
  limitFiles?: number;
}

export function ambassadorCommand(binary: 'source' | 'dist'): [string, string[]] {
  if (binary === 'dist') {
    if (!existsSync(DIST_BINARY)) throw new Error(`${DIST_BINARY} is missing: run npm run build first`);
    return [DIST_BINARY, []];
  }
  return [process.execPath, [join(root, 'ambassador.ts')]];
}

export async function startAmbassador(args: string[], options: StartOptions = {}): Promise<RunningAmbassador> {
  requireCommand('haproxy', 'apt-get install -y haproxy');
  const { chroot } = options;
  const ownDir = options.runtimeDir === undefined;
  const runtimeDir = options.runtimeDir ?? (chroot ? `/tmp/ambassador-test-${process.pid}-${Date.now()}` : join(mkdtempSync(join(tmpdir(), 'ambassador-test-')), 'run'));
  // Paths as this process sees them.
  const hostPath = (path: string) => (chroot ? join(chroot.root, path) : path);
  const fullArgs = [`--runtime-dir=${runtimeDir}`, ...args];
  let command: string;
  let commandArgs: string[];
  if (chroot) {
    const script = 'root=$0; user=$1; shift; mount -t proc proc "$root/proc" && exec chroot --userspec="$user" "$root" /bin/ambassador "$@"';
    [command, commandArgs] = ['unshare', ['--mount', 'sh', '-c', script, chroot.root, `${chroot.user}:${chroot.user}`, ...fullArgs]];
  } else {
    const [binary, prefixArgs] = options.executable !== undefined ? [options.executable, []] : ambassadorCommand(options.binary ?? 'source');
    [command, commandArgs] = [binary, [...prefixArgs, ...fullArgs]];
    if (options.limitFiles !== undefined) [command, commandArgs] = ['prlimit', [`--nofile=${options.limitFiles}:${options.limitFiles}`, '--', command, ...commandArgs]];
  }
  const child = startProcess(command, commandArgs, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...options.env } });
  const logs: string[] = [];
  const listeners = new Set<() => void>();
  let partial = '';
  const onData = (data: Buffer) => {
    partial += data.toString();
    const lines = partial.split('\n');
    partial = lines.pop()!;
    logs.push(...lines);
    if (process.env.AMBASSADOR_TEST_LOGS) for (const line of lines) process.stderr.write(`    | ${line}\n`);
    for (const listener of listeners) listener();
  };
  child.stderr!.on('data', onData);
  child.stdout!.on('data', onData);
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const configArg = args.find((a) => a.startsWith('--haproxy-config='));
  const configPath = hostPath(configArg ? configArg.slice('--haproxy-config='.length) : join(runtimeDir, 'haproxy.cfg'));

  const haproxyPid = () => {
    try {
      const pid = Number(readFileSync(join(hostPath(runtimeDir), 'haproxy.pid'), 'utf8').trim());
      return pid > 1 ? pid : undefined;
    } catch {
      return undefined;
    }
  };
  // Every haproxy it starts is ours to stop, even if ambassador dies before it can.
  const watchHaproxy = setInterval(() => track(haproxyPid(), 'haproxy'), 100);

  const running: RunningAmbassador = {
    child,
    runtimeDir: hostPath(runtimeDir),
    configPath,
    logs,
    exited,
    waitForLog: (pattern, timeoutMs = 10_000, from = 0) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const line = logs.slice(from).find((l) => pattern.test(l));
          if (line === undefined) return false;
          finish();
          resolve(line);
          return true;
        };
        const timer = setTimeout(() => {
          finish();
          reject(new Error(`no log line matching ${pattern} within ${timeoutMs} ms; log:\n${logs.slice(-30).join('\n')}`));
        }, timeoutMs);
        const finish = () => {
          clearTimeout(timer);
          listeners.delete(listener);
        };
        const listener = () => void check();
        if (!check()) listeners.add(listener);
      }),
    haproxyPid,
    stop: async (signalName = 'SIGTERM') => {
      track(haproxyPid(), 'haproxy');
      child.kill(signalName);
      const code = await Promise.race([exited, sleep(20_000, 'timeout' as const, { ref: false })]);
      if (code === 'timeout') throw new Error(`ambassador did not exit within 20 s of ${signalName}`);
      return code;
    },
    kill: async () => {
      track(haproxyPid(), 'haproxy');
      child.kill('SIGKILL');
      await exited;
    },
    cleanup: async () => {
      clearInterval(watchHaproxy);
      const pid = haproxyPid();
      if (isRunning(child) && child.pid !== undefined) await stopPid(child.pid, 10_000);
      if (pid !== undefined) await stopIfTracked(pid);
      if (ownDir) rmSync(chroot ? hostPath(runtimeDir) : resolve(runtimeDir, '..'), { recursive: true, force: true });
    },
  };
  return running;
}
