// The one place that decides how a change reaches haproxy: from the servers live in haproxy and the servers
// wanted, either runtime API commands (no reload) and the live table they leave, or "reload" and why.
// Pure: it sends nothing; lib/haproxy/driver.ts carries the plan out and falls back to a reload if a command fails.
// A change costs what it changed, not what is registered: both sides are lists sorted by server name, walked
// side by side, and a server object found on both (createServiceSelector keeps unchanged ones) is passed over.

import { isIP } from 'node:net';
import { hostPort } from '../common/address.ts';
import { PROXY_NAME, REPLICA_PROXY_NAME, SERVER_CHECKS } from './render.ts';
import type { PortServers, Server } from '../service/service.ts';

// A server removed from etcd that haproxy still has: it takes no new connection and is deleted (del server)
// once its last session ends. Never in the config file.
interface DrainingServer {
  address: string;
  port: number;
}

// What haproxy runs, or should: each proxy's servers sorted by server name, as a Selection lists them (enabled:
// ready; not enabled: in maintenance, a master-only standby), and the servers still draining, by the id
// haproxy's commands take (`<proxy>/<server>`, e.g. service/2).
export interface ServerTable {
  proxies: ReadonlyMap<string, readonly Server[]>;
  draining: ReadonlyMap<string, DrainingServer>;
}

// A runtime plan runs in steps, each waited on before the next. First the fence: servers that stop taking the
// master's traffic are put in maintenance and their sessions shut down; once none of their sessions is left
// open (`fenced`), the changes (servers added, moved, drained); once haproxy runs the addresses `moved` to
// (from haproxy 2.9 it applies an address in a later task, after its answer), the enables. haproxy closes
// shut-down sessions in a later turn of its loop, so without the first wait a new master enabled in the same
// request could take a connection while the old one's sessions were still open.
// A server and an address of its: where a fenced one's sessions went, or where a moved one now goes.
export interface ServerAddress extends DrainingServer {
  id: string;
}

export type Plan =
  | { kind: 'none' }
  | { kind: 'runtime'; fence: string[]; fenced: ServerAddress[]; changes: string[]; moved: ServerAddress[]; enables: string[]; next: ServerTable }
  // A reload keeps the old worker's sessions until they end: a fence it needs is made at run time first.
  | { kind: 'reload'; reason: string; fence: string[]; fenced: ServerAddress[] };

interface PlanSettings {
  // Master-only: a server of the primary port that stops being the master is fenced (no new connection,
  // sessions cut) first. The replica port's servers never are.
  fence: boolean;
  // The sessions of a replica that leaves the replica port are shut down (Patroni's, --replica-sessions=cut).
  cutReplicas?: boolean;
}

const sameCheck = (a: Server['restCheck'], b: Server['restCheck']) =>
  a === b || (typeof a === 'object' && typeof b === 'object' && a.address === b.address && a.port === b.port && a.path === b.path);

// Beyond this many commands one reload is quicker, and atomic.
export const MAX_RUNTIME_COMMANDS = 1000;

// The table a selection asks for: its lists as they are, nothing draining.
export function serverTable(selection: PortServers): ServerTable {
  const proxies = new Map<string, readonly Server[]>([[PROXY_NAME, selection.servers]]);
  if (selection.replicas !== undefined) proxies.set(REPLICA_PROXY_NAME, selection.replicas);
  return { proxies, draining: new Map() };
}

// The lists of a table, as render takes them: the inverse of serverTable (draining servers are in no config).
export function selectionOf(table: ServerTable): PortServers {
  return { servers: table.proxies.get(PROXY_NAME) ?? [], replicas: table.proxies.get(REPLICA_PROXY_NAME) };
}

type State = 'ready' | 'maint' | 'drain';
const stateOf = (server: Server): State => (server.enabled ? 'ready' : 'maint');

export function planChange(live: ServerTable, wanted: ServerTable, settings: PlanSettings): Plan {
  // Fences run first, so an old master is cut off before a new one takes a connection; enables run last.
  const fences: string[] = [];
  const fenced: ServerAddress[] = [];
  const moved: ServerAddress[] = [];
  const changes: string[] = [];
  const enables: string[] = [];
  const draining = new Map(live.draining);
  let differs = false;
  let reload: string | undefined;

  for (const proxy of new Set([...live.proxies.keys(), ...wanted.proxies.keys()])) {
    const fencing = settings.fence && proxy === PROXY_NAME;
    const cutReplica = settings.cutReplicas && proxy === REPLICA_PROXY_NAME;
    const fence = (id: string, was: DrainingServer) => {
      fences.push(`set server ${id} state maint`, `shutdown sessions server ${id}`);
      fenced.push({ id, address: was.address, port: was.port });
    };

    // A removed server takes no new connection at once and is deleted by the drain sweep once it has no
    // session left: at once when fenced (its sessions are cut), when its clients close them otherwise.
    const remove = (was: Server) => {
      const id = `${proxy}/${was.server}`;
      differs = true;
      draining.set(id, { address: was.address, port: was.port });
      if (was.enabled && fencing) fence(id, was);
      else if (was.enabled) changes.push(`set server ${id} state drain`);
    };

    const update = (id: string, was: DrainingServer & { state: State; restCheck?: Server['restCheck'] }, want: Server) => {
      const changed = was.address !== want.address || was.port !== want.port;
      const checkChanged = !sameCheck(was.restCheck, want.restCheck);
      if (!changed && !checkChanged && was.state === stateOf(want)) return;
      differs = true;
      // haproxy has no runtime command for where a check goes, nor for a proxy's check method.
      if (checkChanged) reload ??= `server ${id} is checked elsewhere (Patroni's REST API, or not)`;
      if (changed && (isIP(want.address) === 0 || isIP(was.address) === 0)) reload ??= `server ${id} moves to or from a DNS name (${was.address} -> ${want.address})`;
      const cut = fencing && was.state === 'ready' && (!want.enabled || changed);
      if (cut) fence(id, was);
      if (changed) {
        changes.push(`set server ${id} addr ${want.address} port ${want.port}`);
        moved.push({ id, address: want.address, port: want.port });
      }
      if (want.enabled && (was.state !== 'ready' || cut)) enables.push(`set server ${id} state ready`);
      if (!want.enabled && was.state !== 'maint' && !cut) changes.push(`set server ${id} state maint`, ...(cutReplica && was.state === 'ready' ? [`shutdown sessions server ${id}`] : []));
    };

    // A server haproxy does not have is added; one still draining is taken back.
    const add = (want: Server) => {
      const id = `${proxy}/${want.server}`;
      const drained = draining.get(id);
      if (drained !== undefined) {
        draining.delete(id);
        return update(id, { ...drained, state: 'drain' }, want);
      }
      differs = true;
      // Names resolve only when haproxy loads its config; a check's address is set only by it.
      if (isIP(want.address) === 0) reload ??= `server ${id} has a DNS name (${want.address})`;
      if (want.restCheck !== undefined) reload ??= `server ${id} is checked through Patroni's REST API`;
      changes.push(`add server ${id} ${hostPort(want.address, want.port)} ${SERVER_CHECKS}`, `enable health ${id}`);
      if (want.enabled) enables.push(`set server ${id} state ready`);
    };

    const was = live.proxies.get(proxy) ?? [];
    const now = wanted.proxies.get(proxy) ?? [];
    for (let i = 0, j = 0; i < was.length || j < now.length; ) {
      const a = was[i];
      const b = now[j];
      if (a !== undefined && a === b) {
        i++;
        j++;
      } else if (b === undefined || (a !== undefined && a.server < b.server)) {
        remove(a!);
        i++;
      } else if (a === undefined || b.server < a.server) {
        add(b);
        j++;
      } else {
        update(`${proxy}/${b.server}`, { address: a.address, port: a.port, state: stateOf(a), restCheck: a.restCheck }, b);
        i++;
        j++;
      }
    }
  }

  if (reload !== undefined) return { kind: 'reload', reason: reload, fence: fences, fenced };
  if (!differs) return { kind: 'none' };
  const count = fences.length + changes.length + enables.length;
  if (count > MAX_RUNTIME_COMMANDS) return { kind: 'reload', reason: `${count} runtime commands`, fence: fences, fenced };
  return { kind: 'runtime', fence: fences, fenced, changes, moved, enables, next: { proxies: wanted.proxies, draining } };
}

// The live table once `fenced` servers are in maintenance: what haproxy runs after a fence whose reload has
// not (yet) happened.
export function afterFence(live: ServerTable, fenced: readonly ServerAddress[]): ServerTable {
  const ids = new Set(fenced.map(({ id }) => id));
  const proxies = new Map([...live.proxies].map(([proxy, servers]) => [proxy, servers.map((server) => (ids.has(`${proxy}/${server.server}`) ? { ...server, enabled: false } : server))]));
  return { proxies, draining: live.draining };
}

// The routing part of a change (master-only): the live table, but for the primary port's master, which is
// enabled as wanted, added or moved if haproxy lacks it or runs it elsewhere; every server it replaces is in
// maintenance. The driver makes this at run time before any reload, so that a failover never waits on a reload
// that haproxy may refuse or that cannot be done (a full disk, a lost runtime dir).
export function routingStep(live: ServerTable, wanted: ServerTable): ServerTable {
  const was = live.proxies.get(PROXY_NAME) ?? [];
  const masters = new Map((wanted.proxies.get(PROXY_NAME) ?? []).filter((server) => server.enabled).map((server) => [server.server, server]));
  const servers = was.map((server) => masters.get(server.server) ?? (server.enabled ? { ...server, enabled: false } : server));
  for (const master of masters.values()) {
    if (was.some((server) => server.server === master.server)) continue;
    const slot = servers.findIndex((server) => server.server > master.server);
    servers.splice(slot === -1 ? servers.length : slot, 0, master);
  }
  return { proxies: new Map([...live.proxies, [PROXY_NAME, servers]]), draining: live.draining };
}

// The table of a wanted state with its primary port's servers all in maintenance: what haproxy runs after a
// reload to the fenced state (a frozen fence), the new master not yet enabled.
export function fencedTable(wanted: ServerTable): ServerTable {
  const proxies = new Map([...wanted.proxies].map(([proxy, servers]) => [proxy, proxy === PROXY_NAME ? servers.map((server) => (server.enabled ? { ...server, enabled: false } : server)) : servers]));
  return { proxies, draining: wanted.draining };
}
