// Patroni's own layout under /service/<scope>: leader (a member name), members/<name> (JSON: conn_url, api_url,
// role, state, tags, timeline, xlog_location, replication_state, and from 4.1 receive_lsn and replay_lsn),
// status ({"optime": …}), sync ({"leader", "sync_standby"}, in synchronous mode) and config (its
// synchronous_mode) → the servers each port routes to (the replica port's: lib/service/replicas.ts).
// Pure: every value is validated here; a member that fails is a problem that keeps it out, never text in the config.

import { checkAddress, parsePort } from '../common/address.ts';
import { isOversized } from '../common/text.ts';
import { chooseReplicas, type ReplicaMemory, type ReplicaSettings } from './replicas.ts';
import { oversizedKeyProblem, routableName, serverName, sortProblems, uniqueServers, unreadable, type Instance, type Problem, type Selection, type Server } from './service.ts';

export interface PatroniSettings extends ReplicaSettings {
  prefix: string;
  masterOnly: boolean;
  // There is a replica port.
  replicas: boolean;
}

export interface Member extends Instance {
  role: string;
  state: string;
  // Patroni reads the tag as Python's bool() does: any value but false, 0, "", null, [] and {}.
  noloadbalance: boolean;
  tags: Readonly<Record<string, unknown>>;
  // WAL positions in bytes, where the member says: xlog_location (the greater of received and replayed), and
  // from Patroni 4.1 the replayed one.
  xlog: number | undefined;
  replayLsn: number | undefined;
  timeline: number | undefined;
  // From Patroni 3.0.4: streaming, in archive recovery…
  replicationState: string | undefined;
  // Patroni's REST API (api_url), for a health check of replay lag before 4.1.
  api: { address: string; port: number } | undefined;
}

// Patroni's synchronous mode, from its config key: off, on (synchronous_mode: true), or quorum (4.0).
export type SyncMode = 'off' | 'on' | 'quorum';

export interface Cluster {
  members: Member[];
  leader: string | undefined;
  // The leader's WAL position in bytes.
  optime: number | undefined;
  syncMode: SyncMode;
  // The /sync key: the leader it was written for, and the synchronous standbys (quorum voters), lower case.
  sync: { leader: string; standbys: ReadonlySet<string> } | undefined;
  problems: Problem[];
}

// Patroni's values are small JSON; a bigger one is not Patroni's.
export const MAX_PATRONI_VALUE_BYTES = 64 << 10;
const MEMBER_KEY = /^members\/([^/]+)$/;
const DEFAULT_POSTGRES_PORT = 5432;
// A member that says so is no longer the primary, whatever the leader key says: fence it. ('replica' is not
// among them: a new leader's member key says replica for ~1.3 s after it took the leader key.)
const NOT_PRIMARY_ROLES = new Set(['demoted', 'uninitialized']);

// The keys whose changes move the primary port, which the watch reads from etcd on every check: the leader
// key and the leader's member key.
export function patroniRoutingKeys(mirror: ReadonlyMap<string, string>, prefix: string): string[] {
  const leader = mirror.get(`${prefix}/leader`)?.trim();
  return leader === undefined || !routableName(leader) ? [`${prefix}/leader`] : [`${prefix}/leader`, `${prefix}/members/${leader}`];
}

export function readCluster(mirror: ReadonlyMap<string, string>, prefix: string): Cluster {
  const base = prefix + '/';
  const members: Member[] = [];
  const problems: Problem[] = [];
  let leader: string | undefined;
  let optime: number | undefined;
  let syncMode: SyncMode = 'off';
  let sync: Cluster['sync'];
  for (const [key, value] of mirror) {
    if (!key.startsWith(base)) continue;
    if (isOversized(key)) {
      problems.push(oversizedKeyProblem(key, prefix));
      continue;
    }
    const relative = key.slice(base.length);
    const unusable = unreadable(value, MAX_PATRONI_VALUE_BYTES);
    if (unusable !== undefined) {
      if (relative === 'leader' || relative === 'status' || relative === 'sync' || relative === 'config' || MEMBER_KEY.test(relative)) problems.push({ key, value, reason: unusable, ...(MEMBER_KEY.test(relative) ? { instance: MEMBER_KEY.exec(relative)![1]! } : {}) });
      continue;
    }
    if (relative === 'leader') {
      leader = value.trim();
    } else if (relative === 'status') {
      const status = parseJson(value);
      const position = typeof status === 'object' && status !== null ? (status as Record<string, unknown>).optime : undefined;
      if (typeof position === 'number' && Number.isSafeInteger(position) && position >= 0) optime = position;
      else problems.push({ key, value, reason: 'not Patroni status JSON with a numeric optime' });
    } else if (relative === 'sync') {
      const read = readSync(value);
      if (typeof read === 'string') problems.push({ key, value, reason: read });
      else sync = read;
    } else if (relative === 'config') {
      const config = parseJson(value);
      const mode = typeof config === 'object' && config !== null ? (config as Record<string, unknown>).synchronous_mode : undefined;
      syncMode = mode === 'quorum' ? 'quorum' : mode === true || mode === 'on' || mode === 'true' ? 'on' : 'off';
    } else {
      const match = MEMBER_KEY.exec(relative);
      if (!match) continue;
      const member = readMember(match[1]!, value);
      if (typeof member === 'string') problems.push({ key, value, reason: member, instance: match[1]! });
      else members.push(member);
    }
  }
  const unique = uniqueServers(members, (name) => `${base}members/${name}`, problems);
  return { members: unique, leader, optime, syncMode, sync, problems: sortProblems(problems) };
}

// The /sync key: {"leader": L, "sync_standby": "a,b" | null} (4.x adds "quorum").
function readSync(value: string): Cluster['sync'] | string {
  const data = parseJson(value);
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return 'not Patroni sync JSON';
  const { leader, sync_standby: standbys } = data as Record<string, unknown>;
  if (leader === null || leader === undefined) return undefined;
  if (typeof leader !== 'string' || !(standbys === null || standbys === undefined || typeof standbys === 'string')) return 'not Patroni sync JSON (leader and sync_standby must be strings)';
  return { leader, standbys: new Set((standbys ?? '').split(',').map((name) => name.trim().toLowerCase()).filter(Boolean)) };
}

// Python's bool() of a JSON value, as Patroni reads its tags.
const truthy = (value: unknown) => !(value === undefined || value === null || value === false || value === 0 || value === '' || (Array.isArray(value) && value.length === 0) || (typeof value === 'object' && value !== null && Object.keys(value).length === 0));

const wholeNumber = (value: unknown) => (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : undefined);

// A member's JSON, or why it cannot be routed.
function readMember(name: string, value: string): Member | string {
  if (!/^[A-Za-z0-9_.@-]{1,128}$/.test(name)) return 'not a member name Patroni writes (letters, digits, _ . @ -)';
  const data = parseJson(value);
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return 'not a JSON object';
  const record = data as Record<string, unknown>;
  if (typeof record.conn_url !== 'string') return 'no conn_url';
  const url = /^postgres(?:ql)?:\/\/(?:[^@/]*@)?(\[[0-9a-fA-F:.]+\]|[^:/?#[\]]+)(?::(\d{1,5}))?(?:[/?].*)?$/.exec(record.conn_url);
  if (!url) return 'conn_url is not postgres://host:port/...';
  const host = url[1]!.startsWith('[') ? url[1]!.slice(1, -1) : url[1]!;
  const address = checkAddress(host);
  if (!address.ok) return `conn_url host: ${address.reason}`;
  const port = url[2] === undefined ? DEFAULT_POSTGRES_PORT : parsePort(url[2]);
  if (port === undefined) return 'conn_url port is not a port (1-65535)';
  if (typeof record.role !== 'string' || typeof record.state !== 'string') return 'role and state must be strings';
  if (record.tags !== undefined && (typeof record.tags !== 'object' || record.tags === null || Array.isArray(record.tags))) return 'tags must be an object';
  const tags = (record.tags ?? {}) as Record<string, unknown>;
  for (const field of ['xlog_location', 'replay_lsn', 'timeline'] as const) {
    if (record[field] !== undefined && wholeNumber(record[field]) === undefined) return `${field} must be a whole number`;
  }
  if (record.replication_state !== undefined && typeof record.replication_state !== 'string') return 'replication_state must be a string';
  return {
    name,
    server: serverName(name),
    address: address.address,
    port,
    role: record.role,
    state: record.state,
    noloadbalance: truthy(tags.noloadbalance),
    tags,
    xlog: wholeNumber(record.xlog_location),
    replayLsn: wholeNumber(record.replay_lsn),
    timeline: wholeNumber(record.timeline),
    replicationState: record.replication_state as string | undefined,
    api: apiOf(record.api_url),
  };
}

// The host and port of an api_url (http(s)://host:port/patroni), or undefined.
function apiOf(url: unknown): Member['api'] {
  if (typeof url !== 'string') return undefined;
  const match = /^https?:\/\/(\[[0-9a-fA-F:.]+\]|[^:/?#[\]]+)(?::(\d{1,5}))?(?:[/?].*)?$/.exec(url);
  if (!match) return undefined;
  const address = checkAddress(match[1]!.startsWith('[') ? match[1]!.slice(1, -1) : match[1]!);
  const port = match[2] === undefined ? 80 : parsePort(match[2]);
  return address.ok && port !== undefined ? { address: address.address, port } : undefined;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

// The primary port: with masterOnly, the member the leader key names, while it runs and does not say it is no
// longer primary (the leader key alone is enough: see the README, "PostgreSQL with Patroni"); else every
// running member. The replica port: as --replicas asks (lib/service/replicas.ts), steady over `memory`.
export function selectPatroni(cluster: Cluster, settings: PatroniSettings, memory: ReplicaMemory = new Map()): { selection: Selection; memory: ReplicaMemory } {
  const problems = [...cluster.problems];
  const running = (member: Member) => member.state === 'running';
  const primary = (member: Member) => member.name === cluster.leader && running(member) && !NOT_PRIMARY_ROLES.has(member.role);
  if (settings.masterOnly) {
    const key = `${settings.prefix}/leader`;
    const leader = cluster.members.find((member) => member.name === cluster.leader);
    if (cluster.leader === undefined) problems.push({ key, reason: 'no leader: no member is routed', brief: true });
    else if (leader === undefined) problems.push({ key, value: cluster.leader, reason: 'names no routable member: no member is routed' });
  }
  const server = (member: Member, enabled: boolean): Server => ({ name: member.name, server: member.server, address: member.address, port: member.port, enabled });
  const servers = cluster.members.map((member) => server(member, settings.masterOnly ? primary(member) : running(member)));
  if (!settings.replicas) return { selection: { servers, replicas: undefined, master: cluster.leader, problems }, memory };
  const chosen = chooseReplicas(cluster, settings, memory, primary);
  const replicas = cluster.members.map((member) => ({ ...server(member, chosen.routed.has(member.name)), ...(chosen.checked.get(member.name) ?? {}) }));
  return { selection: { servers, replicas, master: cluster.leader, problems: [...problems, ...chosen.notices] }, memory: chosen.memory };
}
