// What was found on the host at start, for haproxy's settings: the executables and the limits haproxy will run
// under. Reads only.

import { availableParallelism } from 'node:os';
import type { Logger } from '../common/log.ts';
import { haproxyVersion } from '../haproxy/config.ts';
import { findExecutable, openFileLimit } from '../host/lookup.ts';

export interface HostFacts {
  // The haproxy executable (a path), and its version line.
  haproxy: string;
  haproxyRelease: string;
  setpriv: string | undefined;
  // The hard open-file limit haproxy will inherit, and the threads it will run.
  fileLimit: number;
  threads: number;
}

// `haproxy` is --haproxy: a path, or a name looked up as findExecutable does.
export async function hostFacts(haproxy: string, log: Logger): Promise<HostFacts> {
  const setpriv = await findExecutable('setpriv', process.env);
  if (!setpriv) log.warn('setpriv (util-linux) not found: if ambassador is killed, its haproxy keeps running until ambassador is restarted');
  const binary = haproxy.includes('/') ? haproxy : ((await findExecutable(haproxy, process.env)) ?? haproxy);
  return { haproxy: binary, haproxyRelease: await haproxyVersion(binary), setpriv, fileLimit: await openFileLimit(), threads: availableParallelism() };
}
