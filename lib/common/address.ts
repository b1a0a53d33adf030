// What counts as a host address or a port, for etcd endpoints and instance values alike.
// Pure and strict: anything that is not plainly an IP literal, a DNS name or a port number is refused.

import { isIP } from 'node:net';

export function isHostName(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false;
  const labels = name.replace(/\.$/, '').split('.');
  // An all-digit last label would be read as a malformed IPv4 address, not a name.
  if (/^\d+$/.test(labels[labels.length - 1]!)) return false;
  return labels.every((label) => /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(label));
}

type AddressCheck = { ok: true; address: string; family: 4 | 6 | 'name' } | { ok: false; reason: string };

// An instance address: IPv4, IPv6 (bare or in brackets, no zone) or a DNS name.
export function checkAddress(value: string): AddressCheck {
  if (value === '') return { ok: false, reason: 'empty address' };
  if (/[^\x21-\x7e]/.test(value)) return { ok: false, reason: 'not an address (holds spaces, control or non-ASCII characters)' };
  const bare = value.startsWith('[') && value.endsWith(']') ? value.slice(1, -1) : value;
  if (bare.includes('%')) return { ok: false, reason: 'IPv6 zone ids are not supported' };
  const family = isIP(bare);
  if (family === 4 && /^(?:0|[1-9]\d{0,2})(?:\.(?:0|[1-9]\d{0,2})){3}$/.test(bare)) return { ok: true, address: bare, family: 4 };
  if (family === 6) return { ok: true, address: bare.toLowerCase(), family: 6 };
  if (bare === value && isHostName(value)) return { ok: true, address: value.toLowerCase(), family: 'name' };
  return { ok: false, reason: 'not an IPv4 or IPv6 address or a DNS name' };
}

export function parsePort(value: string): number | undefined {
  if (!/^\d{1,5}$/.test(value)) return undefined;
  const port = Number(value);
  return port >= 1 && port <= 65535 ? port : undefined;
}

// An address and a port as haproxy and URLs write them: an IPv6 address in brackets, and written one way
// whatever way it was given (so that two spellings of one address compare equal).
export function hostPort(address: string, port: number): string {
  return isIP(address) === 6 ? `[${new URL(`http://[${address}]`).hostname.slice(1, -1)}]:${port}` : `${address}:${port}`;
}
