// The instances layout: etcd keys under the prefix → the service's instances and master → the servers to route
// to. Pure: every value is validated here, and nothing that fails validation is passed on; problems are data.

import { checkAddress, parsePort } from '../common/address.ts';
import { isOversized } from '../common/text.ts';
import { badName, oversizedKeyProblem, routableName, serverName, sortProblems, uniqueServers, unreadable, type Instance, type Problem, type Selection, type Server } from './service.ts';

// This layout's values are names, addresses and ports.
export const MAX_VALUE_BYTES = 512;

interface RegistrySettings {
  prefix: string;
  public: boolean;
  backendPort: number;
}

interface Service {
  instances: Instance[];
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
