// A minimal Debian bookworm root filesystem with nothing but haproxy on top of the essential packages:
// what the official haproxy image has. Built once with debootstrap and kept outside the clone
// ($AMBASSADOR_TEST_CACHE, else ~/.cache/ambassador-test), so that runs on one machine share it;
// built again when it is missing.

import { execFileSync } from 'node:child_process';
import { existsSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { requireCommand } from './etcd.ts';

export const TEST_CACHE = process.env.AMBASSADOR_TEST_CACHE ?? join(homedir(), '.cache/ambassador-test');
const cache = join(TEST_CACHE, 'rootfs');
const MIRROR = process.env.AMBASSADOR_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';

export function bookwormWithHaproxy(): string {
  const root = join(cache, 'bookworm-haproxy');
  if (existsSync(join(root, '.complete'))) return root;
  if (process.getuid?.() !== 0) throw new Error('building and entering a root filesystem needs root (debootstrap, chroot, mount)');
  requireCommand('debootstrap', 'apt-get install -y debootstrap');
  const building = `${root}.partial`;
  rmSync(building, { recursive: true, force: true });
  execFileSync('debootstrap', ['--variant=minbase', '--include=haproxy', 'bookworm', building, MIRROR], { stdio: ['ignore', 'ignore', 'inherit'] });
  writeFileSync(join(building, '.complete'), `${new Date().toISOString()} ${MIRROR}\n`);
  rmSync(root, { recursive: true, force: true });
  renameSync(building, root);
  return root;
}
