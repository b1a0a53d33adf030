// --once: the config checked and written, then the haproxy of this runtime dir reloaded (the same protocol as
// the daemon's, through its master CLI), or one started in the background (master-worker daemon) that
// outlives us. Errors are SetupErrors: ambassador says them in one line and exits 1.

import { spawn } from 'node:child_process';
import { unlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../common/log.ts';
import { commandLine, readPid, runtimeFiles, SetupError } from '../host/rundir.ts';
import { haproxyEnvironment, installChecked, writeHoldScript } from './config.ts';
import { firstLoad, reload } from './reload.ts';
import { isAlive } from './process.ts';

interface OnceSettings {
  binary: string;
  proxies: readonly string[];
  configPath: string;
  runtimeDir: string;
  holdScript: string | undefined;
  log: Logger;
}

const LAUNCH_TIMEOUT_MS = 60_000;
const PID_FILE_WAIT_MS = 2_000;

export async function applyOnce(settings: OnceSettings, config: string): Promise<'reloaded' | 'started'> {
  const { binary, configPath, runtimeDir, log, proxies } = settings;
  if (settings.holdScript !== undefined) await writeHoldScript(settings.holdScript, false).catch((err: Error) => Promise.reject(new SetupError(`cannot write ${settings.holdScript}: ${err.message}`)));
  const install = await installChecked(binary, configPath, config);
  if (install.kind === 'refused') throw new SetupError(`haproxy rejected the config: ${install.reason}`);
  if (install.kind === 'failed') throw new SetupError(install.reason);
  const { haproxyPid, masterSocket, adminSocket } = runtimeFiles(runtimeDir);
  const running = await readPid(haproxyPid);
  if (running !== undefined && (await commandLine(running)).includes(configPath)) {
    const target = { masterSocket, control: { masterSocket, adminSocket }, signal: (name: NodeJS.Signals) => process.kill(running, name), running: () => isAlive(running) };
    const loaded = await reload(target, proxies, log);
    if (loaded.kind !== 'loaded') throw new SetupError(`haproxy ${running} did not reload: ${loaded.reason}`);
    return 'reloaded';
  }
  // A stale pid file (its haproxy is gone) would be taken for the new one's; none there is what we want.
  await unlink(haproxyPid).catch(() => {});
  // The launcher exits once the daemon is up; the daemon may keep the stderr pipe, so wait for the exit only.
  const launcher = spawn(binary, ['-W', '-D', '-p', haproxyPid, '-S', `${masterSocket},mode,600`, '-f', configPath], {
    env: haproxyEnvironment(),
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
  });
  let stderr = '';
  launcher.stderr!.on('data', (data) => (stderr += data));
  const code = await new Promise<number | string | null>((resolve) => {
    const timer = setTimeout(() => {
      launcher.kill('SIGKILL');
      resolve(`no exit within ${LAUNCH_TIMEOUT_MS / 1000} s`);
    }, LAUNCH_TIMEOUT_MS);
    launcher.once('exit', (exitCode) => (clearTimeout(timer), resolve(exitCode)));
    launcher.once('error', (err) => (clearTimeout(timer), resolve(err.message)));
  });
  const alerts = () => stderr.split('\n').filter((line) => line.includes('[ALERT]')).join(' | ') || stderr.trim();
  try {
    if (code !== 0) throw new SetupError(`haproxy did not start (${typeof code === 'number' ? `exit ${code}` : code}): ${alerts()}`);
    // From haproxy 3.1 the launcher can exit before the worker has loaded its config: started is a worker
    // that answers, and a master gone before that is a config haproxy could not load. The daemon may write
    // its pid file a moment after the launcher exits.
    let daemon = await readPid(haproxyPid);
    for (const deadline = performance.now() + PID_FILE_WAIT_MS; daemon === undefined && performance.now() < deadline; daemon = await readPid(haproxyPid)) await sleep(10);
    const loaded = await firstLoad({ masterSocket, control: { masterSocket, adminSocket }, signal: () => {}, running: () => daemon !== undefined && isAlive(daemon) });
    if (loaded.kind !== 'loaded') throw new SetupError(`haproxy did not start: ${loaded.reason}${alerts() ? `: ${alerts()}` : ''}`);
    return 'started';
  } finally {
    launcher.stderr!.destroy();
  }
}
