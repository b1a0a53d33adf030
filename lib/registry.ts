// The registry layout: etcd keys under the prefix → the service's instances and master → the servers to route to.
// Pure: every value is validated here, and nothing that fails validation is passed on; problems are returned as data.

import { createHash } from 'node:crypto';
import { checkAddress, parsePort } from './address.ts';

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

function readInstance(mirror: ReadonlyMap<string, string>, settings: RegistrySettings, name: string): InstanceRead {
  const keyOf = (field: Field) => `${settings.prefix}/instances/${name}/${field}`;
  const addressField: Field = settings.public ? 'public_ip' : 'private_ip';
  const rawAddress = mirror.get(keyOf(addressField));
  if (rawAddress === undefined) return { problems: [] };
  const problems: Problem[] = [];
  const address = checkAddress(rawAddress.trim());
  if (!address.ok) problems.push({ key: keyOf(addressField), value: rawAddress, reason: address.reason, instance: name });
  let port = settings.backendPort;
  const rawPort = mirror.get(keyOf('port'));
  if (rawPort !== undefined) {
    const parsed = parsePort(rawPort.trim());
    if (parsed === undefined) problems.push({ key: keyOf('port'), value: rawPort, reason: 'not a port (1-65535)', instance: name });
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
      const problems = [...clashes];
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
  if (service.master === undefined) problems.push({ key, reason: 'no master is set: no instance is routed' });
  else if (master === undefined) problems.push({ key, value: service.master, reason: 'names no routable instance: no instance is routed' });
  const servers = service.instances.map((instance) => cache.of(instance, instance === master));
  return { servers, replicas, master: service.master, problems };
}

// The keys whose changes move traffic on --port, which the watch reads from etcd on every check: the master,
// and with masterOnly the master's address and port (the rest is checked by the watch's listing).
export function routingKeys(mirror: ReadonlyMap<string, string>, settings: Pick<RegistrySettings, 'prefix' | 'public'> & Pick<SelectSettings, 'masterOnly'>): string[] {
  const base = settings.prefix + '/';
  const master = mirror.get(`${base}master`)?.trim();
  if (!settings.masterOnly || master === undefined || !/^[^/\s]+$/.test(master)) return [`${base}master`];
  return [`${base}master`, `${base}instances/${master}/${settings.public ? 'public_ip' : 'private_ip'}`, `${base}instances/${master}/port`];
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

// A problem as one log line: the value quoted and escaped (a newline stays "\n"), and cut short if huge.
export function describeProblem(problem: Problem): string {
  if (problem.value === undefined) return `rejected ${problem.key}: ${problem.reason}`;
  const value = problem.value;
  const shown = JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value) + (value.length > 80 ? ` (${value.length} chars)` : '');
  return `rejected ${problem.key}=${shown}: ${problem.reason}`;
}

// Which problems are new and which are gone since the last look, so that each is said once when it appears
// and once when it is gone, never once per change. `known` is what the last call returned as `current`.
export function problemChanges(known: ReadonlyMap<string, Problem>, problems: readonly Problem[]) {
  const current = new Map(problems.map((problem) => [describeProblem(problem), problem]));
  const appeared = [...current.keys()].filter((text) => !known.has(text));
  const resolved = [...known].filter(([text]) => !current.has(text)).map(([, problem]) => `resolved: ${problem.key} (${problem.reason})`);
  return { current, appeared, resolved };
}
