// What was found on the host at start, for haproxy's settings: the executables and the limits haproxy will run
// under. Reads only.

import { availableParallelism } from 'node:os';
import type { Logger } from '../common/log.ts';
import { haproxyBuild } from '../haproxy/config.ts';
import { findExecutable, openFileLimit } from '../host/lookup.ts';
import { SetupError } from '../host/rundir.ts';

export interface HostFacts {
  // The haproxy executable (a path), and its version line.
  haproxy: string;
  haproxyRelease: string;
  setpriv: string | undefined;
  // The hard open-file limit haproxy will inherit, and the threads it will run.
  fileLimit: number;
  threads: number;
}

// `haproxy` is --haproxy: a path, or a name looked up as findExecutable does. An haproxy without Lua cannot
// hold new connections: refused unless --hold=0 says not to.
export async function hostFacts(haproxy: string, holdMs: number, log: Logger): Promise<HostFacts> {
  const setpriv = await findExecutable('setpriv', process.env);
  if (!setpriv) log.warn('setpriv (util-linux) not found: if ambassador is killed, its haproxy keeps running until ambassador is restarted');
  const binary = haproxy.includes('/') ? haproxy : ((await findExecutable(haproxy, process.env)) ?? haproxy);
  const build = await haproxyBuild(binary);
  if (holdMs > 0 && !build.lua) throw new SetupError(`${binary} was built without Lua, which holding new connections needs: use an haproxy built with Lua (Debian's and the official image's are), or --hold=0 to close them at once while no master is routable`);
  return { haproxy: binary, haproxyRelease: build.release, setpriv, fileLimit: await openFileLimit(), threads: availableParallelism() };
}
