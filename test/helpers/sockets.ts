// Which TCP ports a process is connected to, from /proc: its socket inodes matched in /proc/net/tcp{,6}.

import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

export function remotePorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (match) inodes.add(match[1]!);
    } catch {}
  }
  const ports: number[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      // fields: sl local_address rem_address st ... inode (10th)
      if (fields.length > 9 && fields[3] === '01' && inodes.has(fields[9]!)) ports.push(parseInt(fields[2]!.split(':')[1]!, 16));
    }
  }
  return ports;
}
