// Patroni's own layout under /service/<scope>: leader (a member name), members/<name> (JSON: conn_url, role,
// state, tags, xlog_location) and status ({"optime": …}) → the servers each port routes to.
// Pure: every value is validated here; a member that fails is a problem that keeps it out, never text in the config.

import { checkAddress, parsePort } from '../common/address.ts';
import { isOversized } from '../common/text.ts';
import { oversizedKeyProblem, routableName, serverName, sortProblems, uniqueServers, unreadable, type Instance, type Problem, type Selection, type Server } from './service.ts';

export interface PatroniSettings {
  prefix: string;
  masterOnly: boolean;
  // There is a replica port.
  replicas: boolean;
  // Replicas whose xlog_location trails status.optime by more bytes than this are left out.
  maxReplicaLag: number | undefined;
}

export interface Member extends Instance {
  role: string;
  state: string;
  noloadbalance: boolean;
  // WAL position in bytes, if the member says.
  xlog: number | undefined;
}

interface Cluster {
  members: Member[];
  leader: string | undefined;
  // The leader's WAL position in bytes.
  optime: number | undefined;
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
  for (const [key, value] of mirror) {
    if (!key.startsWith(base)) continue;
    if (isOversized(key)) {
      problems.push(oversizedKeyProblem(key, prefix));
      continue;
    }
    const relative = key.slice(base.length);
    const unusable = unreadable(value, MAX_PATRONI_VALUE_BYTES);
    if (unusable !== undefined) {
      if (relative === 'leader' || relative === 'status' || MEMBER_KEY.test(relative)) problems.push({ key, value, reason: unusable, ...(MEMBER_KEY.test(relative) ? { instance: MEMBER_KEY.exec(relative)![1]! } : {}) });
      continue;
    }
    if (relative === 'leader') {
      leader = value.trim();
    } else if (relative === 'status') {
      const status = parseJson(value);
      const position = typeof status === 'object' && status !== null ? (status as Record<string, unknown>).optime : undefined;
      if (typeof position === 'number' && Number.isSafeInteger(position) && position >= 0) optime = position;
      else problems.push({ key, value, reason: 'not Patroni status JSON with a numeric optime' });
    } else {
      const match = MEMBER_KEY.exec(relative);
      if (!match) continue;
      const member = readMember(match[1]!, value);
      if (typeof member === 'string') problems.push({ key, value, reason: member, instance: match[1]! });
      else members.push(member);
    }
  }
  const unique = uniqueServers(members, (name) => `${base}members/${name}`, problems);
  return { members: unique, leader, optime, problems: sortProblems(problems) };
}

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
  if (record.xlog_location !== undefined && !(typeof record.xlog_location === 'number' && Number.isSafeInteger(record.xlog_location))) return 'xlog_location must be a number';
  return {
    name,
    server: serverName(name),
    address: address.address,
    port,
    role: record.role,
    state: record.state,
    noloadbalance: tags.noloadbalance === true,
    xlog: record.xlog_location as number | undefined,
  };
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
// running member. The replica port: running replicas not tagged noloadbalance, within the lag allowed.
export function selectPatroni(cluster: Cluster, settings: PatroniSettings): Selection {
  const problems = [...cluster.problems];
  const running = (member: Member) => member.state === 'running';
  const primary = (member: Member) => member.name === cluster.leader && running(member) && !NOT_PRIMARY_ROLES.has(member.role);
  if (settings.masterOnly) {
    const key = `${settings.prefix}/leader`;
    const leader = cluster.members.find((member) => member.name === cluster.leader);
    if (cluster.leader === undefined) problems.push({ key, reason: 'no leader: no member is routed', brief: true });
    else if (leader === undefined) problems.push({ key, value: cluster.leader, reason: 'names no routable member: no member is routed' });
  }
  const withinLag = (member: Member) =>
    settings.maxReplicaLag === undefined || (member.xlog !== undefined && cluster.optime !== undefined && cluster.optime - member.xlog <= settings.maxReplicaLag);
  const replica = (member: Member) => member.role === 'replica' && running(member) && !member.noloadbalance && member.name !== cluster.leader && withinLag(member);
  const server = (member: Member, enabled: boolean): Server => ({ name: member.name, server: member.server, address: member.address, port: member.port, enabled });
  const servers = cluster.members.map((member) => server(member, settings.masterOnly ? primary(member) : running(member)));
  const replicas = settings.replicas ? cluster.members.map((member) => server(member, replica(member))) : undefined;
  return { servers, replicas, master: cluster.leader, problems };
}
