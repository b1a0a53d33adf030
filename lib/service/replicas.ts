// The replica port under Patroni's layout: the members it routes to, as Patroni's REST health check named by
// --replicas would answer 200 for each (docs/patroni.md has the table), read from the keys Patroni writes;
// replay lag from replay_lsn where Patroni writes it (4.1), and before that asked of Patroni's REST API by
// haproxy's own health check, as Patroni's haproxy recipe does. Held steady: a replica leaves for lag only
// after two readings in a row over the bound, and comes back at a reading of half of it or less. With --replica-fallback
// the primary serves the port while no replica qualifies. Pure: the memory of lag readings is data in and out.

import type { ReplicaSelection } from '../options/kinds.ts';
import type { Cluster, Member } from './patroni.ts';
import type { Problem } from './service.ts';

export interface ReplicaSettings {
  prefix: string;
  selection: ReplicaSelection;
  fallback: boolean;
}

// Per member: whether replay lag keeps it out, the readings in a row that say otherwise, and the last reading
// (its replay position and the leader's): a reading counts once, whatever rewrites the keys.
export type ReplicaMemory = ReadonlyMap<string, { out: boolean; streak: number; reading: string }>;

// Readings in a row over the bound it takes to leave; one at LOW_MARK of the bound or less brings it back. One
// reading is enough to come back: on an idle cluster a replica that caught up is read once, and never again.
const READINGS = 2;
const LOW_MARK = 0.5;
// haproxy's check of Patroni's REST API: every 2 s, out after 3 failures, back after 3 passes.
export const REST_CHECK = 'inter 2s fall 3 rise 3';

export interface ChosenReplicas {
  routed: Set<string>;
  // The servers' health checks where replay lag is Patroni's REST API's to say.
  checked: Map<string, { restCheck: { address: string; port: number; path: string } | 'off' }>;
  // Why a member that would serve is left out, said once (info) while it lasts.
  notices: Problem[];
  memory: ReplicaMemory;
}

export function chooseReplicas(cluster: Cluster, settings: ReplicaSettings, memory: ReplicaMemory, primary: (member: Member) => boolean): ChosenReplicas {
  const { selection } = settings;
  const notices: Problem[] = [];
  const notice = (member: Member | undefined, reason: string) => notices.push({ key: member ? `${settings.prefix}/members/${member.name}` : `${settings.prefix}/members`, reason, instance: member?.name, notice: true });
  const leaderMember = cluster.members.find((member) => member.name === cluster.leader);
  const synchronous = new Set(cluster.sync !== undefined && cluster.sync.leader === cluster.leader ? cluster.sync.standbys : []);
  const isSync = (member: Member) => synchronous.has(member.name.toLowerCase());
  const replica = (member: Member) => member.role === 'replica' && member.state === 'running' && !member.noloadbalance && member.name !== cluster.leader;

  // What the endpoint asks of a member, before lag.
  const endpointAccepts = (member: Member): boolean => {
    switch (selection.endpoint) {
      case 'replica':
        return replica(member);
      case 'async':
        return replica(member) && !isSync(member);
      case 'sync':
        return replica(member) && cluster.syncMode === 'on' && isSync(member);
      case 'quorum':
        return replica(member) && cluster.syncMode === 'quorum' && isSync(member);
      case 'read-only':
        return primary(member) || replica(member);
      case 'read-only-sync':
        // A quorum voter is not a synchronous standby to Patroni here either (measured on 4.0.7).
        return primary(member) || (replica(member) && cluster.syncMode === 'on' && isSync(member));
    }
  };

  // Replay lag from the keys where every member writes replay_lsn (4.1); else haproxy asks Patroni's REST API.
  const candidates = cluster.members.filter((member) => !primary(member));
  const restLag = selection.lag !== undefined && candidates.some((member) => member.replayLsn === undefined);
  const next = new Map<string, { out: boolean; streak: number; reading: string }>();
  const routed = new Set<string>();
  const checked: ChosenReplicas['checked'] = new Map();
  for (const member of cluster.members) {
    if (!endpointAccepts(member)) continue;
    if (primary(member)) {
      routed.add(member.name);
      if (restLag) checked.set(member.name, { restCheck: 'off' });
      continue;
    }
    if (!qualifies(member, selection, leaderMember?.timeline, (reason) => notice(member, reason))) continue;
    if (selection.lag !== undefined && restLag) {
      if (member.api === undefined) {
        notice(member, 'writes no api_url: its replay lag cannot be asked of Patroni, so it is left out');
        continue;
      }
      checked.set(member.name, { restCheck: { ...member.api, path: `/replica?lag=${selection.lag}` } });
    } else if (selection.lag !== undefined && cluster.optime !== undefined) {
      const state = steadyLag(member, cluster.optime, selection.lag, memory.get(member.name));
      next.set(member.name, state);
      if (state.out) {
        // The same words while it lasts: said once, not at each reading.
        notice(member, `replays more than ${selection.lag} bytes behind the leader: left out until it is within ${Math.floor(selection.lag * LOW_MARK)}`);
        continue;
      }
    }
    routed.add(member.name);
  }
  // As Patroni's /replica?lag= answers before the leader writes /status: not lagging.
  if (selection.lag !== undefined && !restLag && cluster.optime === undefined) {
    notices.push({ key: `${settings.prefix}/status`, reason: 'no leader optime written yet: replay lag is not judged until there is', notice: true });
  }
  // In a proxy whose checks ask Patroni's REST API, every server is checked there or not at all.
  if (restLag) for (const member of cluster.members) if (!checked.has(member.name)) checked.set(member.name, { restCheck: member.api && !primary(member) ? { ...member.api, path: `/replica?lag=${selection.lag}` } : 'off' });
  if (restLag) notices.push({ key: `${settings.prefix}/members`, reason: `replay lag is read by haproxy from each replica's Patroni REST API (GET /replica?lag=${selection.lag}): a member writes no replay_lsn (Patroni before 4.1)`, notice: true });
  const replicasRouted = [...routed].some((name) => !primary(cluster.members.find((member) => member.name === name)!));
  if (settings.fallback && !replicasRouted && leaderMember !== undefined && primary(leaderMember)) {
    routed.add(leaderMember.name);
    if (restLag) checked.set(leaderMember.name, { restCheck: 'off' });
    notice(leaderMember, 'no replica qualifies: the replica port falls back to the primary (--replica-fallback)');
  }
  return { routed, checked, notices, memory: next };
}

// Whether a replica has what --replicas asks of it besides lag (its tags, its replication state) and is on the
// leader's timeline; a field it does not write, or another timeline, is said.
function qualifies(member: Member, selection: ReplicaSelection, leaderTimeline: number | undefined, say: (reason: string) => void): boolean {
  if (!selection.tags.every(([key, value]) => key in member.tags && String(member.tags[key]).toLowerCase() === value.toLowerCase())) return false;
  if (selection.replicationState !== undefined) {
    if (member.replicationState === undefined) {
      say(`writes no replication_state (Patroni before 3.0.4): left out, as --replicas asks for replication_state=${selection.replicationState}`);
      return false;
    }
    if (member.replicationState !== selection.replicationState) return false;
  }
  if (member.timeline !== undefined && leaderTimeline !== undefined && member.timeline !== leaderTimeline) {
    say(`is on timeline ${member.timeline}, the leader on ${leaderTimeline}: left out`);
    return false;
  }
  return true;
}

// A member's replay lag judged over readings (a new replay, receive or optime position each): out after READINGS
// in a row over the bound, back at one at LOW_MARK of it or less. A member first seen is in or out by its first
// reading.
function steadyLag(member: Member, optime: number, bound: number, was: { out: boolean; streak: number; reading: string } | undefined) {
  // Each side is sampled once per loop_wait, at its own moment: a replica can read ahead of the optime.
  const lag = Math.max(0, optime - (member.replayLsn ?? 0));
  const reading = `${member.replayLsn}/${member.xlog}/${optime}`;
  if (was === undefined) return { out: lag > bound, streak: 0, reading };
  if (was.reading === reading) return was;
  if (was.out) return { out: lag > bound * LOW_MARK, streak: 0, reading };
  const streak = lag > bound ? was.streak + 1 : 0;
  return { out: streak >= READINGS, streak: streak >= READINGS ? 0 : streak, reading };
}
