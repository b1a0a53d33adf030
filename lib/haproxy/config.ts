// The config file on disk: staged next to its place, checked by `haproxy -c` within a time limit, renamed
// into place only if haproxy accepts it. Also the other short haproxy commands (`-v`), each bounded in time.

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import type { Logger } from '../common/log.ts';
import { FailureStreak } from '../common/retry.ts';
import { SetupError, writePrivate } from '../host/rundir.ts';
import { HOLD_SCRIPT } from '../render/hold.ts';

// `haproxy -c` takes ~0.6 s for 10,000 servers here; a check still running after this is stuck.
const CHECK_TIMEOUT_MS = 10_000;
const VERSION_TIMEOUT_MS = 5_000;

// installed: in place. refused: haproxy said the config is wrong (never worth trying again).
// failed: the check could not say (it hung, could not start, the disk is full...): worth trying again.
type Install = { kind: 'installed' } | { kind: 'refused'; reason: string } | { kind: 'failed'; reason: string };

class CommandError extends Error {
  // The command ran and said no (exit status not 0), rather than failing to run or to finish.
  readonly answered: boolean;
  readonly stderr: string;

  constructor(message: string, answered: boolean, stderr: string) {
    super(message);
    this.answered = answered;
    this.stderr = stderr;
  }
}

// The environment haproxy is given: ambassador's own, without its settings. haproxy's `show env` prints its
// environment to any admin-socket client, and AMBASSADOR_ETCD_PASSWORD is a secret.
export function haproxyEnvironment(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([name]) => !name.startsWith('AMBASSADOR_')));
}

// Runs a short haproxy command: its output, or a CommandError saying how it failed.
function runCommand(binary: string, args: string[], timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(binary, args, { env: haproxyEnvironment(), maxBuffer: 16 << 20, timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (!err) return resolve({ stdout, stderr });
      const { code, killed } = err as NodeJS.ErrnoException & { killed?: boolean };
      const command = `${binary} ${args.join(' ')}`;
      if (killed) return reject(new CommandError(`${command} did not finish within ${timeoutMs / 1000} s`, false, stderr));
      if (typeof code === 'string') return reject(new CommandError(`${command} could not run (${code})`, false, stderr));
      reject(new CommandError(`${command} exited with code ${code}`, true, stderr));
    });
  });
}

// Writes the config to a stage file next to its place and has haproxy check it; only a config haproxy
// accepts is renamed over the one in place.
export async function installChecked(binary: string, configPath: string, config: string): Promise<Install> {
  const stagePath = `${configPath}.new`;
  try {
    await writePrivate(stagePath, config);
  } catch (err) {
    return { kind: 'failed', reason: `cannot write ${stagePath}: ${(err as Error).message}` };
  }
  try {
    await runCommand(binary, ['-c', '-f', stagePath], CHECK_TIMEOUT_MS);
  } catch (err) {
    const error = err as CommandError;
    if (!error.answered) return { kind: 'failed', reason: error.message };
    return { kind: 'refused', reason: alertLines(error.stderr) || error.message };
  }
  try {
    await rename(stagePath, configPath);
    return { kind: 'installed' };
  } catch (err) {
    return { kind: 'failed', reason: `cannot rename ${stagePath}: ${(err as Error).message}` };
  }
}

// The hold's Lua script, which the config loads (lib/render/hold.ts): written at start, and again whenever it
// is missing (its dir was deleted) before haproxy reads its config.
export async function writeHoldScript(path: string, onlyIfMissing: boolean): Promise<void> {
  if (onlyIfMissing && existsSync(path)) return;
  await writePrivate(path, HOLD_SCRIPT);
}

// Writes a config haproxy already runs (after runtime changes): stage file, then rename, so a reader never
// sees half a file.
export async function replaceConfig(configPath: string, config: string): Promise<void> {
  const stagePath = `${configPath}.new`;
  await writePrivate(stagePath, config);
  await rename(stagePath, configPath);
}

// The config file as a description of what haproxy runs: a reload (ours after a lost runtime dir, or an
// operator's) must load what is live, never an older master. After every change haproxy took, at run time or
// in part, the file is rewritten; one that cannot be (a full disk, a read-only dir) is tried again until it is.
export function createLiveConfigFile(configPath: string, log: Logger) {
  // The text that describes what is live, and whether the file holds it yet.
  let live: string | undefined;
  let due = false;
  let failing: string | undefined;
  const streak = new FailureStreak();
  // False once the file holds what is live.
  const write = async (): Promise<boolean> => {
    if (!due || live === undefined) return false;
    try {
      await replaceConfig(configPath, live);
      [due, failing] = [false, undefined];
      if (streak.ended() > 0) log.info(`haproxy: ${configPath} written again`);
      return false;
    } catch (err) {
      failing = `cannot write ${configPath}: ${(err as Error).message}`;
      if (streak.failed(failing).log) log.warn(`haproxy: ${failing}; haproxy runs the newest state, and the file is written again every second until it can be`);
      return true;
    }
  };
  return {
    // haproxy runs what `text` describes now; the file is written at once unless a newer change is on its way.
    // True while the file lags.
    live: async (text: string, later = false): Promise<boolean> => {
      [live, due] = [text, true];
      return later || (await write());
    },
    // The file was installed (checked, renamed into place) and haproxy loaded it.
    installed: (text: string) => {
      [live, due, failing] = [text, false, undefined];
    },
    // The file is gone (with its dir): write it again.
    lost: () => {
      due = live !== undefined;
    },
    write,
    // Why the file lags what is live, while it does.
    behind: (): string | undefined => (due ? (failing ?? 'a newer change is on its way') : undefined),
  };
}

// haproxy's reasons, a few lines at most: its [ALERT] lines, or else whatever it printed.
function alertLines(output: string): string {
  const lines = output.split('\n').map((line) => line.trim()).filter(Boolean);
  const alerts = lines.filter((line) => line.includes('[ALERT]'));
  return (alerts.length > 0 ? alerts : lines).slice(0, 5).join(' | ');
}

// The haproxy version line and whether it was built with Lua (the hold needs it), or a SetupError saying why
// the executable cannot run.
export async function haproxyBuild(binary: string): Promise<{ release: string; lua: boolean }> {
  try {
    const { stdout } = await runCommand(binary, ['-vv'], VERSION_TIMEOUT_MS);
    return { release: stdout.split('\n')[0]!.trim(), lua: /^Built with Lua version/m.test(stdout) };
  } catch (err) {
    const message = (err as Error).message;
    if (message.endsWith('(ENOENT)')) throw new SetupError(`haproxy executable not found: ${binary} (install haproxy or pass --haproxy)`);
    if (message.endsWith('(EACCES)')) throw new SetupError(`haproxy executable is not executable: ${binary}`);
    throw new SetupError(`haproxy executable ${binary} does not run: ${message}`);
  }
}

// What haproxy asks of the open-file limit, measured on 2.6.12 with `check` on every server: a descriptor per
// server, two per connection it may hold (its maxconn: what the limit leaves, halved, and at least 100), and 23
// plus three per thread; past that it refuses to start ("Cannot raise FD limit"). The most servers it can open
// under a limit, then, with its least maxconn and a small margin: a state with more is refused before haproxy
// sees it (docs/operating.md, "Bounds").
const LEAST_MAXCONN = 100;
const FIXED_DESCRIPTORS = 32;
const DESCRIPTORS_PER_THREAD = 3;

export function maxServers(fileLimit: number, threads: number): number {
  return Math.max(0, fileLimit - 2 * LEAST_MAXCONN - FIXED_DESCRIPTORS - DESCRIPTORS_PER_THREAD * Math.min(threads, 64));
}
