// What the host offers, looked up: an executable by name, the open-file limit processes inherit. Reads only;
// nothing here changes the host.

import { constants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';

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

// The hard open-file limit haproxy will inherit and raise its own soft limit to (Infinity when unlimited or
// unknown).
export async function openFileLimit(): Promise<number> {
  const limits = await readFile('/proc/self/limits', 'utf8').catch(() => '');
  const hard = /^Max open files\s+\S+\s+(\S+)/m.exec(limits)?.[1];
  return hard === undefined || hard === 'unlimited' ? Infinity : Number(hard);
}
