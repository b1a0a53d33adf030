// The watch's decisions, pure: what to do after a turn on a member, what a check found, when to list the prefix,
// and how a turn's ending is reported. Each is tested on its own (test/etcd/decide.test.ts, watch.test.ts); lib/etcd/watch.ts
// and lib/etcd/turn.ts act on them.

import type { KeysVerdict } from './mirror.ts';
import type { ResyncCause } from './state.ts';

// A listing of the prefix every 15 ms per key held, at least every 30 s: its cost for etcd grows with the
// prefix, so its interval does too (10,000 instances: 5 min), keeping its share per ambassador-second flat.
const LISTING_MIN_MS = 30_000;
const LISTING_MS_PER_KEY = 15;
// A turn on a member that lasted this long was a success: the backoff starts over.
const HEALTHY_AFTER_MS = 10_000;
// Progress requests that go unanswered in a row, on a stream that answered before: it stopped delivering.
const UNANSWERED_LIMIT = 2;

// How a turn on a member ended.
export type TurnEnding =
  | { kind: 'stopped' }
  | { kind: 'resync-requested' }
  // Could not connect, read or snapshot: the member cannot serve now.
  | { kind: 'failed-to-start'; reason: string; credential: boolean }
  // The watch stream failed or ended after working.
  | { kind: 'lost'; reason: string }
  | { kind: 'compacted'; compactRevision: bigint }
  // A check could not get a linearizable answer: no leader, paused, cut off.
  | { kind: 'cannot-confirm'; reason: string }
  // The watch stopped delivering.
  | { kind: 'stalled'; reason: string }
  // The mirror cannot be trusted: the stream broke its order, a change was missed, the listing differs, etcd
  // went back in time.
  | { kind: 'untrusted'; cause: Exclude<ResyncCause, 'compacted' | 'requested'>; reason: string };

interface NextTurn {
  stop?: true;
  member: 'same' | 'next';
  // now; spread: up to RECONNECT_SPREAD_MS; backoff: the retry backoff's next delay.
  wait: 'now' | 'spread' | 'backoff';
  // Take a fresh snapshot, or resume from the revision held.
  snapshot: boolean;
  // The turn counts as a success: the backoff starts over.
  success: boolean;
  // The mirror may no longer be resumed from (it is taken afresh before anything more is served).
  distrust?: true;
  // The next snapshot is worth a line of its own.
  announce?: true;
}

// What to do after a turn: pure, so that each rule is tested on its own (test/etcd/decide.test.ts, watch.test.ts).
// - A member that cannot serve is left for the next at once; a round where every member failed backs off.
// - A watch lost after working resumes on the next member within the spread; one that dies soon after it
//   started (or a member whose stream keeps breaking) backs off, so a bad member never makes a loop.
// - Only an untrusted mirror, a compaction past the revision held, or a resync asked for takes a snapshot.
export function afterTurn(ending: TurnEnding, context: { workedMs: number; membersLeftInRound: number }): NextTurn {
  const lasted = context.workedMs >= HEALTHY_AFTER_MS;
  switch (ending.kind) {
    case 'stopped':
      return { stop: true, member: 'same', wait: 'now', snapshot: false, success: false };
    case 'resync-requested':
      return { member: 'same', wait: 'now', snapshot: true, success: true, announce: true };
    case 'compacted':
      return { member: 'same', wait: 'now', snapshot: true, success: lasted, announce: true };
    case 'failed-to-start':
      return { member: 'next', wait: context.membersLeftInRound > 0 && !ending.credential ? 'now' : 'backoff', snapshot: false, success: false };
    case 'cannot-confirm':
    case 'stalled':
      return { member: 'next', wait: 'now', snapshot: false, success: lasted };
    case 'lost':
      return { member: 'next', wait: lasted ? 'spread' : 'backoff', snapshot: false, success: lasted };
    case 'untrusted':
      return { member: 'next', wait: lasted ? 'now' : 'backoff', snapshot: true, success: lasted, distrust: true, announce: true };
  }
}

// What one check found, from the routing keys' read, the progress reply (or none) and what came before:
// - current: the keys agree and the stream has delivered what the read saw (an ordered progress reply), or at
//   least is alive (etcd without ordered replies, or one that never answers them);
// - waiting: not yet (a change on its way);
// - an ending: the turn is over.
export interface CheckState {
  // The key (and etcd's revision of it) that was pending at the last check.
  pending: string | undefined;
  // Whether the stream ever answered a progress request, and how many went unanswered since the last answer.
  answered: boolean;
  unanswered: number;
}

type CheckVerdict = { verdict: 'current' | 'waiting'; state: CheckState } | { verdict: 'end'; ending: TurnEnding };

export function judgeCheck(keys: KeysVerdict, progress: bigint | undefined, state: CheckState, etcdRevisionOf: (key: string) => bigint | undefined): CheckVerdict {
  if (keys.kind === 'etcd-behind') return { verdict: 'end', ending: { kind: 'untrusted', cause: 'etcd-behind', reason: `etcd's revision ${keys.revision} is older than the mirror's: restored from a backup, or another cluster` } };
  if (keys.kind === 'missed') {
    const reason = `${keys.key} is at revision ${keys.etcd ?? 'none'} in etcd and ${keys.mirror ?? 'none'} in the mirror, which holds every change up to a later revision: the watch lost a change`;
    return { verdict: 'end', ending: { kind: 'untrusted', cause: 'missed', reason } };
  }
  const answered = state.answered || progress !== undefined;
  const unanswered = progress === undefined && state.answered ? state.unanswered + 1 : 0;
  // A change not delivered for a whole interval is repaired by a snapshot, which a stalled stream would need too.
  if (keys.kind === 'pending') {
    const pending = `${keys.key}@${etcdRevisionOf(keys.key) ?? 'deleted'}`;
    if (pending === state.pending) {
      const reason = `etcd has a change of ${keys.key} (revision ${etcdRevisionOf(keys.key) ?? 'deleted'}) that the watch has not delivered for a whole check interval`;
      return { verdict: 'end', ending: { kind: 'untrusted', cause: 'missed', reason } };
    }
    if (unanswered < UNANSWERED_LIMIT) return { verdict: 'waiting', state: { pending, answered, unanswered } };
  }
  if (unanswered >= UNANSWERED_LIMIT) return { verdict: 'end', ending: { kind: 'stalled', reason: `the watch stream answered none of ${unanswered} progress requests in a row` } };
  const next = { pending: undefined, answered, unanswered };
  return { verdict: progress !== undefined || !answered ? 'current' : 'waiting', state: next };
}

// How long until the next listing of the prefix, for a mirror of `keys` keys: ±25 %.
export function listingInterval(keys: number, random: () => number, minMs = LISTING_MIN_MS): number {
  return Math.max(minMs, keys * LISTING_MS_PER_KEY) * (0.75 + random() * 0.5);
}

type Facts = Record<string, string | number | bigint>;

// What an ending is said as, and what it changes in the watch's counts: a line to log, or a failure to say
// through the failure streak (once, then every 30 s while it lasts); a member's problem; a resync's cause.
export interface Report {
  line?: { level: 'debug' | 'info' | 'warn'; message: string; facts: Facts };
  failure?: { what: string; facts: Facts };
  counts?: Partial<Record<'watchesLost' | 'membersLeft' | 'watchesBehind', number>>;
  resync?: ResyncCause;
  memberProblem?: string;
  // The mirror is known current no longer.
  unconfirmed?: true;
}

interface ReportContext {
  member: string;
  members: number;
  // The members of this round that could not serve before it, with why.
  failures: readonly string[];
  revision: bigint;
  endpoints: readonly string[];
}

// How a turn's ending is reported: pure, so that each line is tested on its own.
export function reportEnding(ending: TurnEnding, context: ReportContext): Report {
  const { member, members, revision } = context;
  const facts = { member, revision };
  switch (ending.kind) {
    case 'stopped':
      return {};
    case 'resync-requested':
      return { line: { level: 'info', message: 'etcd: resync requested', facts: { revision } }, resync: 'requested' };
    case 'compacted':
      return { line: { level: 'info', message: `etcd: revision ${ending.compactRevision} was compacted before the watch caught up; taking a fresh snapshot`, facts }, resync: 'compacted' };
    case 'failed-to-start': {
      if (!ending.credential && context.failures.length + 1 < members) {
        return { line: { level: 'debug', message: `etcd: member ${member} cannot serve: ${ending.reason}; trying the next`, facts: {} }, memberProblem: ending.reason, unconfirmed: true };
      }
      const all = ending.credential ? ending.reason : [...context.failures, `${member} (${ending.reason})`].join(', ');
      const serving = revision > 0n ? `keeping the last state (revision ${revision})` : 'nothing is served until the first snapshot';
      const what = members > 1 ? `no member can serve: ${all}; ${serving}; retrying` : `unreachable (${all}); ${serving}; retrying`;
      return { failure: { what, facts: { endpoints: context.endpoints.join(',') } }, memberProblem: ending.reason, unconfirmed: true };
    }
    case 'lost':
      return { failure: { what: `${ending.reason}; keeping the last state, resuming from revision ${revision}`, facts }, counts: { watchesLost: 1 }, unconfirmed: true };
    case 'cannot-confirm':
    case 'stalled':
      return {
        line: { level: 'warn', message: `etcd: leaving member ${member}: ${ending.reason}; resuming on ${members > 1 ? 'the next member' : 'it again'}`, facts },
        counts: ending.kind === 'stalled' ? { membersLeft: 1, watchesBehind: 1 } : { membersLeft: 1 },
        memberProblem: ending.reason,
        unconfirmed: true,
      };
    case 'untrusted':
      return { line: { level: 'warn', message: `etcd: the mirror cannot be trusted: ${ending.reason}; taking a fresh snapshot`, facts }, resync: ending.cause, unconfirmed: true };
  }
}
