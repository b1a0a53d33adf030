// Running another architecture's executables here: the kernel's binfmt_misc, told to run them through
// qemu-user-static. The registration is kernel-wide, so one is made only when none exists, and removed by the
// undo this returns; one the machine had already is left alone (its undo does nothing).

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { requireCommand } from './etcd.ts';

const BINFMT = '/proc/sys/fs/binfmt_misc';

// qemu: the name Debian's qemu-user-static gives the registration, e.g. qemu-aarch64.
export function useEmulation(qemu: string): () => void {
  requireCommand(`${qemu}-static`, 'apt-get install -y qemu-user-static');
  let mounted = false;
  if (!existsSync(`${BINFMT}/register`)) {
    execFileSync('mount', ['-t', 'binfmt_misc', 'binfmt_misc', BINFMT]);
    mounted = true;
  }
  const entry = `${BINFMT}/${qemu}`;
  const unmount = () => mounted && execFileSync('umount', [BINFMT]);
  if (existsSync(entry)) return once(unmount);
  // Debian's line, with the static interpreter and flag F: the kernel opens the interpreter at registration,
  // so that it runs inside a chroot too.
  const fields = readFileSync(`/usr/lib/binfmt.d/${qemu}.conf`, 'utf8').trim().split(':');
  fields[6] = `/usr/bin/${qemu}-static`;
  fields[7] = 'F';
  writeFileSync(`${BINFMT}/register`, fields.join(':'));
  return once(() => {
    if (existsSync(entry)) writeFileSync(entry, '-1');
    unmount();
  });
}

function once(undo: () => void): () => void {
  let done = false;
  return () => {
    if (!done) undo();
    done = true;
  };
}
