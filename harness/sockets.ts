// Which TCP endpoints a process is connected to, from /proc: its socket inodes matched in /proc/net/tcp{,6}
// (read as lib/haproxy/sockets.ts reads them).

import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { tcpTable } from '../lib/haproxy/sockets.ts';

// The IPv4 address:port of each established connection of `pid`, e.g. 127.0.0.51:2379.
export function remoteEndpoints(pid: number): string[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (match) inodes.add(match[1]!);
    } catch {}
  }
  return ['/proc/net/tcp', '/proc/net/tcp6'].flatMap((table) =>
    tcpTable(readFileSync(table, 'utf8'))
      .filter(({ state, inode }) => state === '01' && inodes.has(inode))
      .map(({ remote }) => decode(remote)),
  );
}

// /proc's hex address:port; an IPv4 address is little-endian (IPv6 ones are left in hex).
function decode(hex: string): string {
  const [address, port] = hex.split(':') as [string, string];
  const host = address.length === 8 ? address.match(/../g)!.reverse().map((byte) => parseInt(byte, 16)).join('.') : address;
  return `${host}:${parseInt(port, 16)}`;
}
