// Whether the ports haproxy will listen on are free, and if not, who holds them: a port held by anything means
// ambassador does not start (two listeners on one port would share its clients between two databases).
// Parsing the kernel's tables is pure; binding and reading /proc are the effects.

import { readdir, readFile, readlink } from 'node:fs/promises';
import { createServer } from 'node:net';
import { hostPort } from '../common/address.ts';

// Who listens on `port`, as the kernel's tables list it: "address:port" of each listening socket and its inode.
export function listeners(table: string, port: number, family: 4 | 6): { address: string; inode: string }[] {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const found: { address: string; inode: string }[] = [];
  for (const line of table.split('\n')) {
    const fields = line.trim().split(/\s+/);
    // A listening socket: state 0A.
    if (fields.length < 10 || fields[3] !== '0A' || !fields[1]!.endsWith(`:${hexPort}`)) continue;
    found.push({ address: hostPort(kernelAddress(fields[1]!.split(':')[0]!, family), port), inode: fields[9]! });
  }
  return found;
}

// /proc/net/tcp{,6}'s address (little-endian 32-bit words in hex) as text.
function kernelAddress(hex: string, family: 4 | 6): string {
  const words = hex.match(/.{8}/g)!.map((word) => word.match(/../g)!.reverse());
  const bytes = words.flat().map((byte) => parseInt(byte, 16));
  if (family === 4) return bytes.join('.');
  const groups = Array.from({ length: 8 }, (_, i) => ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16));
  return new URL(`http://[${groups.join(':')}]`).hostname.slice(1, -1);
}

// Why `address:port` cannot be ours, or undefined when it is free: tried by listening on it (without
// SO_REUSEPORT, as haproxy will), and a refusal explained from the kernel's tables and the holders' file
// descriptors (those of other users' processes may not be readable: then the address alone is named).
export async function portTaken(address: string, port: number): Promise<string | undefined> {
  const error = await new Promise<NodeJS.ErrnoException | undefined>((resolve) => {
    const server = createServer();
    server.once('error', resolve);
    server.listen({ host: address, port, exclusive: true }, () => server.close(() => resolve(undefined)));
  });
  if (error === undefined) return undefined;
  if (error.code !== 'EADDRINUSE') return `cannot listen on ${hostPort(address, port)}: ${error.message}`;
  const holders = await holdersOf(port);
  const named = holders.length === 0 ? 'another process' : holders.join(', ');
  return `port ${port} is taken: ${named} listens on it (a second haproxy there would share its clients)`;
}

async function holdersOf(port: number): Promise<string[]> {
  const sockets = [
    ...listeners(await readFile('/proc/net/tcp', 'utf8').catch(() => ''), port, 4),
    ...listeners(await readFile('/proc/net/tcp6', 'utf8').catch(() => ''), port, 6),
  ];
  const owners = await socketOwners(new Set(sockets.map((socket) => socket.inode)));
  return sockets.map(({ address, inode }) => (owners.has(inode) ? `${address} (${owners.get(inode)})` : address));
}

// The process that holds each socket inode, as "pid N, name", where /proc lets us see it.
async function socketOwners(inodes: ReadonlySet<string>): Promise<Map<string, string>> {
  const owners = new Map<string, string>();
  if (inodes.size === 0) return owners;
  for (const pid of (await readdir('/proc').catch(() => [])).filter((name) => /^\d+$/.test(name))) {
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => []);
    for (const fd of fds) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      const inode = target.startsWith('socket:[') ? target.slice(8, -1) : '';
      if (!inodes.has(inode) || owners.has(inode)) continue;
      const name = (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '?')).trim();
      owners.set(inode, `pid ${pid}, ${name}`);
    }
    if (owners.size === inodes.size) break;
  }
  return owners;
}
