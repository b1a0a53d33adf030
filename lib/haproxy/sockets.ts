// haproxy's TCP connections as the kernel holds them (/proc): how many of its processes' connections to an
// address are still open for sending. A fence is done when none is: haproxy has sent its FIN or reset on each,
// so no client byte can reach that address through it any more, whether or not the far end has answered yet
// (a crashed host never does). Parsing the kernel's tables is pure; reading them is the one effect here.

import { readdir, readFile, readlink } from 'node:fs/promises';
import { isIP } from 'node:net';

// ESTABLISHED, SYN_SENT, SYN_RECV and CLOSE_WAIT: states in which haproxy has not closed its side.
const OPEN_STATES = new Set(['01', '02', '03', '08']);

// An address and port as /proc/net/tcp{,6} writes them: the address in the host's (little-endian) word
// order, the port in hex. Undefined for what is not an IP literal.
export function kernelEndpoint(address: string, port: number): string | undefined {
  const family = isIP(address);
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  if (family === 4) {
    const bytes = address.split('.').map((part) => Number(part).toString(16).toUpperCase().padStart(2, '0'));
    return `${bytes.reverse().join('')}:${hexPort}`;
  }
  if (family === 6) {
    const words = expandIPv6(address);
    // Each 32-bit word is written little-endian.
    const hex = [0, 2, 4, 6].map((i) => {
      const word = words[i]!.padStart(4, '0') + words[i + 1]!.padStart(4, '0');
      return word.match(/../g)!.reverse().join('');
    });
    return `${hex.join('').toUpperCase()}:${hexPort}`;
  }
  return undefined;
}

function expandIPv6(address: string): string[] {
  const [head, tail] = address.split('::') as [string, string | undefined];
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const fill = tail === undefined ? [] : Array(8 - left.length - right.length).fill('0');
  return [...left, ...fill, ...right];
}

// The connections in a /proc/net/tcp{,6} table whose socket is one of `inodes`, whose far end is one of
// `endpoints` (kernelEndpoint form), and that are still open for sending: the count per endpoint.
export function openConnections(table: string, inodes: ReadonlySet<string>, endpoints: ReadonlySet<string>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const line of table.split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 10) continue;
    const [remote, state, inode] = [fields[2]!, fields[3]!, fields[9]!];
    if (endpoints.has(remote) && OPEN_STATES.has(state) && inodes.has(inode)) counts.set(remote, (counts.get(remote) ?? 0) + 1);
  }
  return counts;
}

// Connections of the processes `pids` to each of `endpoints` that are still open for sending, read from
// /proc. Rejects if the kernel's tables cannot be read (another user's process, /proc mounted hidepid).
export async function kernelOpenConnections(pids: readonly number[], endpoints: ReadonlySet<string>): Promise<Map<string, number>> {
  const total = new Map<string, number>();
  for (const pid of pids) {
    const inodes = new Set<string>();
    for (const fd of await readdir(`/proc/${pid}/fd`)) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      if (target.startsWith('socket:[')) inodes.add(target.slice(8, -1));
    }
    for (const table of ['tcp', 'tcp6']) {
      const text = await readFile(`/proc/${pid}/net/${table}`, 'utf8').catch(() => '');
      for (const [endpoint, count] of openConnections(text, inodes, endpoints)) total.set(endpoint, (total.get(endpoint) ?? 0) + count);
    }
  }
  return total;
}
