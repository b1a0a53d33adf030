// The service as every layout hands it on: instances, servers, problems, and what each port routes to; the
// rules all layouts share (names, bounds, server names). Pure: data and checks, no etcd, no haproxy.

import { createHash } from 'node:crypto';
import { byteLength, hasInvalidUtf8, isOversized } from '../common/text.ts';

// The bounds of what is read, for every layout (docs/operating.md, "Bounds"): the longest key below the prefix
// and the longest instance name. A larger key or value is held only as a stand-in (lib/common/text.ts) and is a
// problem, never text in the config; each layout bounds its values.
export const MAX_KEY_BYTES = 512;
export const MAX_NAME_BYTES = 255;

// A routable instance; `server` is its haproxy server name.
export interface Instance {
  name: string;
  server: string;
  address: string;
  port: number;
}

export interface Problem {
  key: string;
  value?: string;
  reason: string;
  // The instance it keeps from being routed, if it is about one.
  instance?: string;
  // A normal state that passes in a moment when all is well (Patroni's leader key, between a switchover's
  // delete and put): said at info, and at warn only if it lasts.
  brief?: boolean;
  // Not a bad value but the cluster's state (a replica left out for its lag, say): said at info.
  notice?: boolean;
}

// An instance as haproxy gets it: with --master-only every instance is there, only the master enabled.
export interface Server extends Instance {
  enabled: boolean;
  // Its health check asks Patroni's REST API there (`check addr … port …` with the proxy's `option httpchk GET
  // <path>`), or it has none ('off'); else it is checked on its own port (lib/service/replicas.ts).
  restCheck?: { address: string; port: number; path: string } | 'off';
}

// The servers of each port, as haproxy gets them: `servers` for --port, `replicas` for --replica-port
// (undefined without one).
export interface PortServers {
  servers: readonly Server[];
  replicas: readonly Server[] | undefined;
}

// What each port routes to: `servers` for --port, `replicas` for --replica-port (undefined without one).
export interface Selection {
  servers: Server[];
  replicas: Server[] | undefined;
  master: string | undefined;
  problems: Problem[];
}

// Why a value read from etcd cannot be used as text, if it cannot: over its bound, or not UTF-8.
export function unreadable(value: string, maxBytes: number): string | undefined {
  // (A mirror filled from etcd holds a stand-in for a long value; one made otherwise may hold it whole.)
  if (isOversized(value) || (value.length * 3 > maxBytes && byteLength(value) > maxBytes)) return `a value of ${byteLength(value)} bytes: longer than the ${maxBytes} allowed`;
  if (hasInvalidUtf8(value)) return 'not UTF-8';
  return undefined;
}

// Why an instance (or member) name cannot be routed, if it cannot.
export function badName(name: string): string | undefined {
  if (hasInvalidUtf8(name)) return 'the instance name is not UTF-8';
  const bytes = byteLength(name);
  return bytes > MAX_NAME_BYTES ? `an instance name of ${bytes} bytes: longer than the ${MAX_NAME_BYTES} allowed` : undefined;
}

// A key over its bound, under the prefix: what it would have been cannot be told, so it is a problem of its own.
export function oversizedKeyProblem(key: string, prefix: string): Problem {
  return { key, reason: `a key of ${byteLength(key) - byteLength(prefix) - 1} bytes below the prefix: longer than the ${MAX_KEY_BYTES} allowed` };
}

// Sorted by haproxy server name, two never on one name: the one with the later instance name is a problem, kept out.
export function uniqueServers<T extends Instance>(items: readonly T[], keyOf: (name: string) => string, problems: Problem[]): T[] {
  const order = (a: T, b: T) => (a.server < b.server ? -1 : a.server > b.server ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  const sorted = [...items].sort(order);
  return sorted.filter((item, i) => {
    const clash = i > 0 && sorted[i - 1]!.server === item.server;
    if (clash) problems.push({ key: keyOf(item.name), reason: `server name ${item.server} is taken by another instance`, instance: item.name });
    return !clash;
  });
}

export function sortProblems(problems: Problem[]): Problem[] {
  return problems.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

// Whether a name read from a value (the master's, the leader's) can name an instance, and so a key to read:
// within its bound, one path segment, and no stand-in (which no key read by name could have).
export function routableName(name: string): boolean {
  return /^[^/\s]+$/.test(name) && !isOversized(name) && badName(name) === undefined;
}

// haproxy server names allow [A-Za-z0-9_.:-]. A plain name is used as is; any other gets a readable part
// plus a hash of the whole name after a ':', which plain names never contain, so no two names can meet.
export function serverName(instance: string): string {
  if (/^[A-Za-z0-9_.-]{1,64}$/.test(instance)) return instance;
  const readable = instance.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 32);
  return `${readable}:${createHash('sha256').update(instance).digest('hex').slice(0, 16)}`;
}
