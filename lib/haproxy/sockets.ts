// haproxy's TCP connections as the kernel holds them (/proc): which of a process's connections to an address
// are still open for sending. A fence is done when none is: haproxy has sent its FIN or reset on each,
// so no client byte can reach that address through it any more, whether or not the far end has answered yet
// (a crashed host never does). Parsing the kernel's tables is pure; reading them is the one effect here.

import { readdir, readFile, readlink } from 'node:fs/promises';
import { isIP } from 'node:net';

// ESTABLISHED, SYN_SENT, SYN_RECV and CLOSE_WAIT: states in which haproxy has not closed its side.
const OPEN_STATES = new Set(['01', '02', '03', '08']);
// kernelEndpoint's length for each family: eight or 32 hex digits, a colon, four.
const IPV4_ENDPOINT_LENGTH = 13;
const IPV6_ENDPOINT_LENGTH = 37;

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

// The eight 16-bit words of an IPv6 address, in hex. An IPv4 tail (::ffff:127.0.0.3, an IPv4-mapped address) is
// written as two words first, as the URL parser writes it.
function expandIPv6(address: string): string[] {
  const canonical = new URL(`http://[${address}]`).hostname.slice(1, -1);
  const [head, tail] = canonical.split('::') as [string, string | undefined];
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const fill = tail === undefined ? [] : Array(8 - left.length - right.length).fill('0');
  return [...left, ...fill, ...right];
}

// One row of a /proc/net/tcp{,6} table: the connection's far end (kernelEndpoint form), state (hex, 01 is
// ESTABLISHED) and socket inode; undefined for the header or a short line.
function tcpRow(line: string): { remote: string; state: string; inode: string } | undefined {
  const fields = line.trim().split(/\s+/);
  return fields.length >= 10 && fields[0] !== 'sl' ? { remote: fields[2]!, state: fields[3]!, inode: fields[9]! } : undefined;
}

// The rows of such a table.
export function tcpTable(table: string): { remote: string; state: string; inode: string }[] {
  return table.split('\n').flatMap((line) => tcpRow(line) ?? []);
}

// The connections in such a table whose far end is one of `endpoints` and that are still open for sending, any
// process's: socket inode → endpoint. A busy host's table holds tens of thousands of rows (sockets in
// TIME_WAIT), nearly all elsewhere: only the rows that mention an endpoint are split.
export function openConnections(table: string, endpoints: ReadonlySet<string>): Map<string, string> {
  const open = new Map<string, string>();
  for (const endpoint of endpoints) {
    for (let at = table.indexOf(endpoint); at !== -1; at = table.indexOf(endpoint, at + endpoint.length)) {
      const end = table.indexOf('\n', at);
      const row = tcpRow(table.slice(table.lastIndexOf('\n', at) + 1, end === -1 ? undefined : end));
      if (row?.remote === endpoint && OPEN_STATES.has(row.state)) open.set(row.inode, endpoint);
    }
  }
  return open;
}

// The connections of process `pid` to `endpoints` that are still open for sending, read from /proc: socket
// inode → endpoint. The table (every socket of the network namespace) is read first; the process's file
// descriptors only when some connection to an endpoint is open, which after a fence is seldom. Rejects if
// the kernel's tables cannot be read (another user's process, /proc mounted hidepid).
export async function kernelOpenConnections(pid: number, endpoints: ReadonlySet<string>): Promise<Map<string, string>> {
  const candidates = new Map<string, string>();
  // haproxy connects to an IPv4 server by an IPv4 socket: each table is read only for its own family.
  for (const [table, length] of [['tcp', IPV4_ENDPOINT_LENGTH], ['tcp6', IPV6_ENDPOINT_LENGTH]] as const) {
    const ofFamily = new Set([...endpoints].filter((endpoint) => endpoint.length === length));
    if (ofFamily.size === 0) continue;
    for (const [inode, endpoint] of openConnections(await readFile(`/proc/${pid}/net/${table}`, 'utf8'), ofFamily)) candidates.set(inode, endpoint);
  }
  const open = new Map<string, string>();
  if (candidates.size === 0) return open;
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const inode = target.startsWith('socket:[') ? target.slice(8, -1) : '';
    const endpoint = candidates.get(inode);
    if (endpoint !== undefined) open.set(inode, endpoint);
  }
  return open;
}
