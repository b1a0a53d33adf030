// The one place that decides how a change reaches haproxy: from the servers live in haproxy and the servers
// wanted, either runtime API commands (no reload) and the live table they leave, or "reload" and why.
// Pure: it sends nothing; lib/haproxy.ts carries the plan out and falls back to a reload if a command fails.

import { isIP } from 'node:net';
import { hostPort, PROXY_NAME, REPLICA_PROXY_NAME, SERVER_CHECKS } from './render.ts';
import type { Selection } from './registry.ts';

// ready: takes connections. maint: takes none (a master-only standby). drain: removed from etcd, takes no
// new connection, and is deleted (del server) once its last session ends; never in the config file.
export type ServerState = 'ready' | 'maint' | 'drain';

export interface LiveServer {
  address: string;
  port: number;
  state: ServerState;
}

// `<proxy>/<server>` (the id haproxy's commands take, e.g. service/2) → server.
export type ServerTable = ReadonlyMap<string, LiveServer>;

export type Plan =
  | { kind: 'none' }
  | { kind: 'runtime'; commands: string[]; next: ServerTable }
  | { kind: 'reload'; reason: string };

export interface PlanSettings {
  // Master-only: a server of the primary port that stops being the master is fenced (no new connection,
  // sessions cut) first. The replica port's servers never are.
  fence: boolean;
}

// Beyond this many commands one reload is quicker, and atomic.
export const MAX_RUNTIME_COMMANDS = 1000;

export function serverTable(selection: Pick<Selection, 'servers' | 'replicas'>): ServerTable {
  const table = new Map<string, LiveServer>();
  for (const [proxy, servers] of [[PROXY_NAME, selection.servers], [REPLICA_PROXY_NAME, selection.replicas ?? []]] as const) {
    for (const s of servers) table.set(`${proxy}/${s.server}`, { address: s.address, port: s.port, state: s.enabled ? 'ready' : 'maint' });
  }
  return table;
}

export function planChange(live: ServerTable, wanted: ServerTable, settings: PlanSettings): Plan {
  // Fences run first, so an old master is cut off before a new one takes a connection; enables run last.
  const fences: string[] = [];
  const changes: string[] = [];
  const enables: string[] = [];
  const next = new Map(live);
  const fenced = (id: string) => settings.fence && id.startsWith(`${PROXY_NAME}/`);

  // A removed server takes no new connection at once and is deleted by the drain sweep once it has no
  // session left: at once when fenced (its sessions are cut), when its clients close them otherwise.
  for (const [id, was] of live) {
    if (wanted.has(id) || was.state === 'drain') continue;
    if (was.state === 'ready' && fenced(id)) fences.push(`set server ${id} state maint`, `shutdown sessions server ${id}`);
    else if (was.state === 'ready') changes.push(`set server ${id} state drain`);
    next.set(id, { ...was, state: 'drain' });
  }

  for (const [id, want] of wanted) {
    const was = live.get(id);
    if (was === undefined) {
      // Names resolve only when haproxy loads its config.
      if (isIP(want.address) === 0) return { kind: 'reload', reason: `server ${id} has a DNS name (${want.address})` };
      changes.push(`add server ${id} ${hostPort(want.address, want.port)} ${SERVER_CHECKS}`, `enable health ${id}`);
      if (want.state === 'ready') enables.push(`set server ${id} state ready`);
      next.set(id, want);
      continue;
    }
    const moved = was.address !== want.address || was.port !== want.port;
    if (moved && (isIP(want.address) === 0 || isIP(was.address) === 0)) {
      return { kind: 'reload', reason: `server ${id} moves to or from a DNS name (${was.address} -> ${want.address})` };
    }
    const cut = fenced(id) && was.state === 'ready' && (want.state !== 'ready' || moved);
    if (cut) fences.push(`set server ${id} state maint`, `shutdown sessions server ${id}`);
    if (moved) changes.push(`set server ${id} addr ${want.address} port ${want.port}`);
    if (want.state === 'ready' && (was.state !== 'ready' || cut)) enables.push(`set server ${id} state ready`);
    if (want.state === 'maint' && was.state !== 'maint' && !cut) changes.push(`set server ${id} state maint`);
    next.set(id, want);
  }

  const commands = [...fences, ...changes, ...enables];
  if (commands.length === 0 && sameTable(live, next)) return { kind: 'none' };
  if (commands.length > MAX_RUNTIME_COMMANDS) return { kind: 'reload', reason: `${commands.length} runtime commands` };
  return { kind: 'runtime', commands, next };
}

function sameTable(a: ServerTable, b: ServerTable): boolean {
  if (a.size !== b.size) return false;
  for (const [name, x] of a) {
    const y = b.get(name);
    if (!y || x.address !== y.address || x.port !== y.port || x.state !== y.state) return false;
  }
  return true;
}
