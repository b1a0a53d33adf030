// Which TCP endpoints a process is connected to, from /proc: its socket inodes matched in /proc/net/tcp{,6}.

import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

// The IPv4 address:port of each established connection of `pid`, e.g. 127.0.0.51:2379.
export function remoteEndpoints(pid: number): string[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (match) inodes.add(match[1]!);
    } catch {}
  }
  const endpoints: string[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      // fields: sl local_address rem_address st ... inode (10th)
      if (fields.length > 9 && fields[3] === '01' && inodes.has(fields[9]!)) endpoints.push(decode(fields[2]!));
    }
  }
  return endpoints;
}

// /proc's hex address:port; an IPv4 address is little-endian (IPv6 ones are left in hex).
function decode(hex: string): string {
  const [address, port] = hex.split(':') as [string, string];
  const host = address.length === 8 ? address.match(/../g)!.reverse().map((byte) => parseInt(byte, 16)).join('.') : address;
  return `${host}:${parseInt(port, 16)}`;
}
