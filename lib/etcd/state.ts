// What the watch holds and says of itself: the settings it runs by, the mirror and whether it may be resumed
// from, and the counts health and metrics read. Data, and the two steps that mark the mirror confirmed or not.

import type { EtcdSettings } from './connection.ts';
import { emptyMirror, type Mirror } from './mirror.ts';

export interface RegistryState {
  mirror: ReadonlyMap<string, string>;
  revision: bigint;
}

// Why the mirror was last taken afresh, counted.
export type ResyncCause = 'order' | 'missed' | 'listing' | 'etcd-behind' | 'compacted' | 'requested';

// How the watch is doing, for health and metrics.
export interface WatchStats {
  connected: boolean;
  // The member the watch is on.
  member: string | undefined;
  // Since when (epoch ms) the mirror is not known current: the last moment it was confirmed, once trouble
  // began; undefined while it is confirmed.
  staleSince: number | undefined;
  // When the mirror was last confirmed current (a snapshot, or a check that agreed with it).
  confirmedAt: number | undefined;
  lastEventAt: number | undefined;
  events: number;
  snapshots: number;
  // Watches started again from the revision held, with no snapshot.
  resumes: number;
  resyncs: Record<ResyncCause, number>;
  // Checks of the routing keys against etcd that were answered.
  checks: number;
  // Listings of the prefix compared with the mirror.
  listings: number;
  // Watches lost after working (disconnect, member restarted...).
  watchesLost: number;
  // Members left because they could not confirm the state (no leader, paused, cut off), or whose watch stopped
  // delivering.
  membersLeft: number;
  // Of those, watches found stalled by a check.
  watchesBehind: number;
  // What the member's progress replies prove: ordered (every change up to their revision delivered), alive
  // (the stream works, etcd < 3.4.25 / 3.5.8), none (it does not answer them: an etcd gRPC proxy).
  progress: 'ordered' | 'alive' | 'none' | undefined;
  // Why each member could not serve when last tried; a member that served since is not listed.
  memberProblems: Record<string, string>;
}

export interface WatchSettings extends EtcdSettings {
  // How often the member is checked against the cluster while watching; 0: never (then a member that loses
  // its leader is left when etcd cancels the watch, ~5 s, and a stalled watch is not caught).
  checkEveryMs: number;
  // The keys (full names) whose changes route traffic, as the mirror's values name them: the master and its
  // address. Read on every check; at least one key, for the cluster's revision.
  routingKeys(values: ReadonlyMap<string, string>): string[];
  // The least time between listings of the prefix (LISTING_MIN_MS unless a test shortens it).
  listingMinMs?: number;
}

// What a watch remembers between turns on members, in one place.
export interface WatchState {
  mirror: Mirror;
  // The mirror may be resumed from: every change up to its revision is in it.
  trusted: boolean;
  // The next snapshot is worth a line of its own: the first, and one taken for a reason.
  announce: boolean;
  // A failure was said and its end not yet; since when etcd could not serve.
  saidDown: boolean;
  outageSince: number | undefined;
  // When the prefix is next listed (performance.now()).
  listingDue: number;
  stats: WatchStats;
}

export function newWatchState(listingDue: number): WatchState {
  return {
    mirror: emptyMirror(),
    trusted: false,
    announce: true,
    saidDown: false,
    outageSince: undefined,
    listingDue,
    stats: {
      connected: false,
      member: undefined,
      staleSince: Date.now(),
      confirmedAt: undefined,
      lastEventAt: undefined,
      events: 0,
      snapshots: 0,
      resumes: 0,
      resyncs: { order: 0, missed: 0, listing: 0, 'etcd-behind': 0, compacted: 0, requested: 0 },
      checks: 0,
      listings: 0,
      watchesLost: 0,
      membersLeft: 0,
      watchesBehind: 0,
      progress: undefined,
      memberProblems: {},
    },
  };
}

// The mirror was confirmed current at `at` (a snapshot, or a check that agreed with it).
export function confirmed(state: WatchState, at: number): void {
  state.stats.confirmedAt = at;
  state.stats.staleSince = undefined;
}

// Trouble: the mirror is known current only up to its last confirmation.
export function unconfirmed(state: WatchState): void {
  state.stats.connected = false;
  state.stats.member = undefined;
  state.stats.staleSince ??= state.stats.confirmedAt ?? Date.now();
}
