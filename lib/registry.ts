// The registry layout: etcd keys under the prefix → the service's instances and master → the servers to route to.
// Pure: every value is validated here, and nothing that fails validation is passed on; problems are returned as data.

import { createHash } from 'node:crypto';
import { checkAddress, parsePort } from './address.ts';
import { byteLength, hasInvalidUtf8, isOversized, shortText } from './text.ts';

// The bounds of what is read (docs/operating.md, "Bounds"): the longest key below the prefix and the longest
// instance name, for every layout; the longest value of this layout, whose values are names, addresses and ports.
// A larger key or value is held only as a stand-in (lib/text.ts) and is a problem, never text in the config.
export const MAX_KEY_BYTES = 512;
export const MAX_NAME_BYTES = 255;
export const MAX_VALUE_BYTES = 512;

interface RegistrySettings {
  prefix: string;
  public: boolean;
  backendPort: number;
}

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
}

interface Service {
  instances: Instance[];
  master: string | undefined;
  problems: Problem[];
}

// An instance as haproxy gets it: with --master-only every instance is there, only the master enabled.
export interface Server extends Instance {
  enabled: boolean;
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

interface SelectSettings {
  prefix: string;
  masterOnly: boolean;
  // There is a replica port.
  replicas: boolean;
}

type Field = 'private_ip' | 'public_ip' | 'port';
const INSTANCE_KEY = /^instances\/([^/]+)\/(private_ip|public_ip|port)$/;

// One instance as its keys have it: routable, kept out by problems, or neither (partly written: not routed
// yet, and not an error).
interface InstanceRead {
  instance?: Instance;
  problems: Problem[];
}

// The service as the keys under the prefix say it: one full read.
export function readService(mirror: ReadonlyMap<string, string>, settings: RegistrySettings): Service {
  return createServiceReader(settings).read(mirror, undefined);
}

// The names of the instances these keys belong to.
function instanceNames(keys: Iterable<string>, base: string): Set<string> {
  const names = new Set<string>();
  for (const key of keys) {
    const name = key.startsWith(base) ? INSTANCE_KEY.exec(key.slice(base.length))?.[1] : undefined;
    if (name !== undefined) names.add(name);
  }
  return names;
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

function readInstance(mirror: ReadonlyMap<string, string>, settings: RegistrySettings, name: string): InstanceRead {
  const keyOf = (field: Field) => `${settings.prefix}/instances/${name}/${field}`;
  const addressField: Field = settings.public ? 'public_ip' : 'private_ip';
  const rawAddress = mirror.get(keyOf(addressField));
  if (rawAddress === undefined) return { problems: [] };
  const misnamed = badName(name);
  if (misnamed !== undefined) return { problems: [{ key: keyOf(addressField), reason: misnamed, instance: name }] };
  const problems: Problem[] = [];
  const address = checkAddress(rawAddress.trim());
  const addressProblem = unreadable(rawAddress, MAX_VALUE_BYTES) ?? (address.ok ? undefined : address.reason);
  if (addressProblem !== undefined) problems.push({ key: keyOf(addressField), value: rawAddress, reason: addressProblem, instance: name });
  let port = settings.backendPort;
  const rawPort = mirror.get(keyOf('port'));
  if (rawPort !== undefined) {
    const parsed = parsePort(rawPort.trim());
    if (parsed === undefined) problems.push({ key: keyOf('port'), value: rawPort, reason: unreadable(rawPort, MAX_VALUE_BYTES) ?? 'not a port (1-65535)', instance: name });
    else port = parsed;
  }
  if (!address.ok || problems.length > 0) return { problems };
  return { instance: { name, server: serverName(name), address: address.address, port }, problems };
}

// The service kept up to date as etcd changes: only the instances whose keys changed are read again
// (`changed` undefined: anything may have, as after a fresh snapshot, and all are), and an instance that did
// not change keeps its object. A change to one instance of 10,000 costs about what it costs with 10. A clash
// of server names, which only a hash collision can cause, is left to a full read.
function createServiceReader(settings: RegistrySettings) {
  const base = settings.prefix + '/';
  const reads = new Map<string, InstanceRead>();
  // The names of instances with problems: few, so collecting them costs nothing per change.
  const troubled = new Set<string>();
  // Routable instances, sorted by server name, one per name.
  let instances: Instance[] = [];
  let master: string | undefined;
  let clashes: Problem[] = [];
  // Keys over their bound under the prefix (few: each is a problem said once).
  const oversizedKeys = new Set<string>();
  const noteKey = (mirror: ReadonlyMap<string, string>, key: string) => {
    if (!isOversized(key)) return;
    if (mirror.has(key)) oversizedKeys.add(key);
    else oversizedKeys.delete(key);
  };

  // Reads the instance again; false if its routable form did not change. An unchanged one keeps its object.
  const reread = (mirror: ReadonlyMap<string, string>, name: string): boolean => {
    const was = reads.get(name);
    const now = readInstance(mirror, settings, name);
    if (was?.instance && now.instance && sameInstance(was.instance, now.instance)) now.instance = was.instance;
    if (now.instance || now.problems.length > 0) reads.set(name, now);
    else reads.delete(name);
    if (now.problems.length > 0) troubled.add(name);
    else troubled.delete(name);
    return was?.instance !== now.instance;
  };

  const readAll = (mirror: ReadonlyMap<string, string>) => {
    master = mirror.get(`${base}master`)?.trim();
    oversizedKeys.clear();
    for (const key of mirror.keys()) noteKey(mirror, key);
    // The instances read before too: those gone from etcd are dropped.
    for (const name of new Set([...reads.keys(), ...instanceNames(mirror.keys(), base)])) reread(mirror, name);
    clashes = [];
    const routable = [...reads.values()].flatMap((read) => read.instance ?? []);
    instances = uniqueServers(routable, (name) => `${base}instances/${name}`, clashes);
  };

  // Only the named keys changed: each changed instance leaves or takes its place in the sorted list.
  // False on a clash of server names.
  const readChanged = (mirror: ReadonlyMap<string, string>, changed: ReadonlySet<string>): boolean => {
    if (changed.has(`${base}master`)) master = mirror.get(`${base}master`)?.trim();
    for (const key of changed) noteKey(mirror, key);
    let next: Instance[] | undefined;
    for (const name of instanceNames(changed, base)) {
      const was = reads.get(name)?.instance;
      if (!reread(mirror, name)) continue;
      next ??= instances.slice();
      if (was) next.splice(slotOf(next, was.server), 1);
      const now = reads.get(name)?.instance;
      if (!now) continue;
      const slot = slotOf(next, now.server);
      if (next[slot]?.server === now.server) return false;
      next.splice(slot, 0, now);
    }
    if (next) instances = next;
    return true;
  };

  return {
    read(mirror: ReadonlyMap<string, string>, changed: ReadonlySet<string> | undefined): Service {
      if (changed === undefined || clashes.length > 0 || !readChanged(mirror, changed)) readAll(mirror);
      const problems = [...clashes, ...[...oversizedKeys].map((key) => oversizedKeyProblem(key, settings.prefix))];
      for (const name of troubled) problems.push(...reads.get(name)!.problems);
      return { instances, master, problems: sortProblems(problems) };
    },
  };
}

// selectServers(readService(mirror)) kept up to date: the reader above, and the servers of instances that did
// not change kept as the same objects, so that plan and render can pass over them by identity.
export function createServiceSelector(settings: RegistrySettings & SelectSettings) {
  const reader = createServiceReader(settings);
  const servers = new ServerCache();
  return {
    select: (mirror: ReadonlyMap<string, string>, changed: ReadonlySet<string> | undefined): Selection => selectServers(reader.read(mirror, changed), settings, servers),
  };
}

function sameInstance(a: Instance, b: Instance): boolean {
  return a.name === b.name && a.server === b.server && a.address === b.address && a.port === b.port;
}

// Where a server name is, or would go, in a list sorted by server name.
function slotOf(sorted: readonly Instance[], server: string): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (sorted[middle]!.server < server) low = middle + 1;
    else high = middle;
  }
  return low;
}

// An instance's two forms as a server, made once each, so that an unchanged server is the same object.
class ServerCache {
  private readonly enabled = new WeakMap<Instance, Server>();
  private readonly disabled = new WeakMap<Instance, Server>();

  of(instance: Instance, enabled: boolean): Server {
    const cache = enabled ? this.enabled : this.disabled;
    let server = cache.get(instance);
    if (server === undefined) cache.set(instance, (server = { ...instance, enabled }));
    return server;
  }
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

// All routable instances enabled, or with masterOnly only the master; a master that is missing or not routable
// enables nobody. The replica port: every routable instance but the one `master` names.
export function selectServers(service: Service, settings: SelectSettings, cache = new ServerCache()): Selection {
  const replicas = settings.replicas ? service.instances.map((instance) => cache.of(instance, instance.name !== service.master)) : undefined;
  if (!settings.masterOnly) {
    return { servers: service.instances.map((instance) => cache.of(instance, true)), replicas, master: service.master, problems: service.problems };
  }
  const key = `${settings.prefix}/master`;
  const problems = [...service.problems];
  const master = service.instances.find((instance) => instance.name === service.master);
  const unusable = service.master === undefined ? undefined : unreadable(service.master, MAX_VALUE_BYTES);
  if (service.master === undefined) problems.push({ key, reason: 'no master is set: no instance is routed' });
  else if (unusable !== undefined) problems.push({ key, value: service.master, reason: `${unusable}: no instance is routed` });
  else if (master === undefined) problems.push({ key, value: service.master, reason: 'names no routable instance: no instance is routed' });
  const servers = service.instances.map((instance) => cache.of(instance, instance === master));
  return { servers, replicas, master: service.master, problems };
}

// The keys whose changes move traffic on --port, which the watch reads from etcd on every check: the master,
// and with masterOnly the master's address and port (the rest is checked by the watch's listing).
export function routingKeys(mirror: ReadonlyMap<string, string>, settings: Pick<RegistrySettings, 'prefix' | 'public'> & Pick<SelectSettings, 'masterOnly'>): string[] {
  const base = settings.prefix + '/';
  const master = mirror.get(`${base}master`)?.trim();
  if (!settings.masterOnly || master === undefined || !routableName(master)) return [`${base}master`];
  return [`${base}master`, `${base}instances/${master}/${settings.public ? 'public_ip' : 'private_ip'}`, `${base}instances/${master}/port`];
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

// What an applied change did, in a few words: "master 2 -> 3", "added 4, removed 1", "moved 2", "replicas 1,3 -> 1,2".
export function describeChange(before: Selection | undefined, after: Selection, masterOnly: boolean): string {
  const master = (selection: Selection | undefined) => selection?.servers.find((server) => server.enabled)?.name ?? 'none';
  const shownMaster = masterOnly ? `master ${before ? `${master(before)} -> ` : ''}${master(after)}` : '';
  const list = (names: string[]) => names.slice(0, 5).join(',') + (names.length > 5 ? `,… (${names.length})` : '');
  const replicas = (selection: Selection | undefined) => list((selection?.replicas ?? []).filter((server) => server.enabled).map((server) => server.name)) || 'none';
  const shownReplicas = after.replicas ? `replicas ${before ? `${replicas(before)} -> ` : ''}${replicas(after)}` : '';
  if (!before) return [`${after.servers.length} server(s)`, shownMaster, shownReplicas].filter(Boolean).join(', ');
  // Both lists are sorted by server name: one walk along them, with no table built for 10,000 servers.
  const added: string[] = [];
  const removed: string[] = [];
  const moved: string[] = [];
  const [was, now] = [before.servers, after.servers];
  for (let i = 0, j = 0; i < was.length || j < now.length; ) {
    const a = was[i];
    const b = now[j];
    if (a !== undefined && b !== undefined && a.server === b.server) {
      if (a.address !== b.address || a.port !== b.port) moved.push(b.name);
      i++;
      j++;
    } else if (b === undefined || (a !== undefined && a.server < b.server)) {
      removed.push(a!.name);
      i++;
    } else {
      added.push(b.name);
      j++;
    }
  }
  const parts = [
    master(before) !== master(after) ? shownMaster : '',
    replicas(before) !== replicas(after) ? shownReplicas : '',
    added.length ? `added ${list(added)}` : '',
    removed.length ? `removed ${list(removed)}` : '',
    moved.length ? `moved ${list(moved)}` : '',
  ].filter(Boolean);
  return parts.join(', ') || 'servers unchanged';
}

// A problem as one log line: the key and value quoted and escaped where they need it (a newline stays "\n"),
// each cut short if long.
export function describeProblem(problem: Problem): string {
  const key = shownKey(problem.key);
  if (problem.value === undefined) return `rejected ${key}: ${problem.reason}`;
  return `rejected ${key}=${JSON.stringify(shortText(problem.value))}: ${problem.reason}`;
}

// Any key within its bound is shown whole; a stand-in for a longer one shows its head.
const SHOWN_KEY_CHARS = 640;

// A key as a log line or /state shows it: as it is, unless it is cut or holds bytes that are not UTF-8 (then
// quoted, with escapes).
function shownKey(key: string): string {
  const short = shortText(key, SHOWN_KEY_CHARS);
  return short === key && !hasInvalidUtf8(key) ? key : JSON.stringify(short);
}

// A problem as /state and the log show it: its key and value cut short, never held in full twice.
export function shownProblem(problem: Problem): Problem {
  return { ...problem, key: shortText(problem.key, SHOWN_KEY_CHARS), ...(problem.value === undefined ? {} : { value: shortText(problem.value) }), ...(problem.instance === undefined ? {} : { instance: shortText(problem.instance) }) };
}

// Which problems are new and which are gone since the last look, so that each is said once when it appears
// and once when it is gone, never once per change. `known` is what the last call returned as `current`.
export function problemChanges(known: ReadonlyMap<string, Problem>, problems: readonly Problem[]) {
  const current = new Map(problems.map((problem) => [describeProblem(problem), problem]));
  const appeared = [...current.keys()].filter((text) => !known.has(text));
  const resolved = [...known].filter(([text]) => !current.has(text)).map(([, problem]) => `resolved: ${problem.key} (${problem.reason})`);
  return { current, appeared, resolved };
}
