// Follows the service's prefix in etcd, on one member at a time: a consistent snapshot once, then a watch,
// resumed from the revision the mirror holds after any disconnect or change of member. Every check interval it
// reads the routing keys linearizably (which also proves the member has a quorum) and asks the watch stream
// for its progress; every few minutes it lists the prefix at the revision held. A member that cannot answer is
// left; a stream that breaks its order, or a mirror that differs from etcd, is dropped for a fresh snapshot.
// Its decisions (lib/etcd/mirror.ts, judgeCheck, afterTurn) are pure; it knows nothing of the layout.

import { setTimeout as sleep } from 'node:timers/promises';
import { CredentialError } from './credentials.ts';
import { connectEtcd3, refusedCredentials, resolveMembers, type Connect, type EtcdConnection, type EtcdSettings, type WatchMessage, type WatchStream } from './connection.ts';
import type { Logger } from '../common/log.ts';
import { advanceTo, applyEvents, compareKeys, compareListing, emptyMirror, mirrorOf, progressOrdered, type KeysVerdict, type Mirror } from './mirror.ts';
import { Backoff, FailureStreak } from '../common/retry.ts';

export interface RegistryState {
  mirror: ReadonlyMap<string, string>;
  revision: bigint;
}

// Why the mirror was last taken afresh, counted.
type ResyncCause = 'order' | 'missed' | 'listing' | 'etcd-behind' | 'compacted' | 'requested';

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

export interface PrefixWatch {
  // The newest state: a live view, to be read when notified, not kept.
  state(): RegistryState;
  stats(): WatchStats;
  // Drops the watch and takes a fresh snapshot.
  resync(): void;
  stop(): Promise<void>;
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

// A check has this long to answer, and the progress reply after it half that: a member with a leader answers
// in a few ms. Asking why a member failed has half a check too.
const CHECK_DEADLINE_MS = 1000;
const PROGRESS_DEADLINE_MS = 500;
const DIAGNOSE_DEADLINE_MS = 500;
// A listing of the prefix every 15 ms per key held, at least every 30 s: its cost for etcd grows with the
// prefix, so its interval does too (10,000 instances: 5 min), keeping its share per ambassador-second flat.
const LISTING_MIN_MS = 30_000;
const LISTING_MS_PER_KEY = 15;
// Retries after a round of members that all failed: from 100 ms, doubled, to 400 ms, each ±20 %, so that a
// fleet that lost etcd at once does not come back in one instant, and one ambassador is current within 400 ms
// of etcd answering again. Credentials that etcd refused (a wrong password, no permission on the prefix) or
// that cannot be read will not pass in a moment, whichever member is asked: from 1 s to 30 s.
const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 400;
const CREDENTIAL_RETRY_FIRST_MS = 1_000;
const CREDENTIAL_RETRY_MAX_MS = 30_000;
// A watch lost after working (its member restarted, say) goes to the next member after up to this long: the
// fleet on that member lost it in the same instant.
const RECONNECT_SPREAD_MS = 250;
// A turn on a member that lasted this long was a success: the backoff starts over.
const HEALTHY_AFTER_MS = 10_000;
// Progress requests that go unanswered in a row, on a stream that answered before: it stopped delivering.
const UNANSWERED_LIMIT = 2;
// Checks before a stream that never answered a progress request is said to be one that does not.
const SILENT_PROBES = 3;

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
}

// What to do after a turn: pure, so that each rule is tested on its own (test/etcd/watch.test.ts).
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
      return { member: 'same', wait: 'now', snapshot: true, success: true };
    case 'compacted':
      return { member: 'same', wait: 'now', snapshot: true, success: lasted };
    case 'failed-to-start':
      return { member: 'next', wait: context.membersLeftInRound > 0 && !ending.credential ? 'now' : 'backoff', snapshot: false, success: false };
    case 'cannot-confirm':
    case 'stalled':
      return { member: 'next', wait: 'now', snapshot: false, success: lasted };
    case 'lost':
      return { member: 'next', wait: lasted ? 'spread' : 'backoff', snapshot: false, success: lasted };
    case 'untrusted':
      return { member: 'next', wait: lasted ? 'now' : 'backoff', snapshot: true, success: lasted };
  }
}

// What one check found, from the routing keys' read, the progress reply (or none) and what came before:
// - current: the keys agree and the stream has delivered what the read saw (an ordered progress reply), or at
//   least is alive (etcd without ordered replies, or one that never answers them);
// - waiting: not yet (a change on its way);
// - an ending: the turn is over.
interface CheckState {
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
function listingInterval(keys: number, random: () => number, minMs = LISTING_MIN_MS): number {
  return Math.max(minMs, keys * LISTING_MS_PER_KEY) * (0.75 + random() * 0.5);
}

// One consistent read of the prefix, for --dry-run and --once, from the first member that gives one; gives
// up after `timeoutMs`.
export async function readSnapshot(settings: EtcdSettings, timeoutMs: number, connect: Connect = connectEtcd3): Promise<RegistryState> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const member of await resolveMembers(settings.endpoints)) {
      let connection: EtcdConnection | undefined;
      try {
        connection = await connect(settings, member);
        const { entries, revision } = await connection.snapshot();
        return { mirror: mirrorOf(entries, revision).values, revision };
      } catch (err) {
        if (Date.now() + RETRY_MAX_MS > deadline) throw err;
      } finally {
        connection?.close();
      }
    }
    await sleep(RETRY_MAX_MS);
  }
}

const RESYNC = 'resync requested';
const STOPPING = 'stopping';

// Calls onChange with the keys an event changed, or with none after a fresh snapshot (anything may have changed).
export function watchPrefix(settings: WatchSettings, log: Logger, onChange: (keys?: readonly string[]) => void, connect: Connect = connectEtcd3, random: () => number = Math.random): PrefixWatch {
  let mirror: Mirror = emptyMirror();
  // The mirror may be resumed from: every change up to its revision is in it.
  let trusted = false;
  let stopped = false;
  const stats: WatchStats = {
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
  };
  const confirmed = (at: number) => {
    stats.confirmedAt = at;
    stats.staleSince = undefined;
  };
  // Trouble: the mirror is known current only up to its last confirmation.
  const unconfirmed = () => {
    stats.connected = false;
    stats.member = undefined;
    stats.staleSince ??= stats.confirmedAt ?? Date.now();
  };
  let interrupt: (reason: string) => void = () => {};
  const retry = new Backoff(RETRY_FIRST_MS, RETRY_MAX_MS, random);
  const credentialRetry = new Backoff(CREDENTIAL_RETRY_FIRST_MS, CREDENTIAL_RETRY_MAX_MS, random);
  const streak = new FailureStreak();
  let outageSince: number | undefined;
  // A failure was logged and its end not yet.
  let saidDown = false;
  // The next snapshot is worth a line of its own: the first, and one taken for a reason.
  let announce = true;
  // The member to try next, as an index into the members; a random start spreads many ambassadors.
  let next = Math.floor(random() * 1024);
  let listingDue = performance.now() + listingInterval(0, random, settings.listingMinMs) * random();
  const routingKeys = () => settings.routingKeys(mirror.values);

  const failed = (what: string, facts: Record<string, string | number | bigint>) => {
    unconfirmed();
    outageSince ??= Date.now();
    const { log: say, count } = streak.failed(what);
    if (!say) return;
    saidDown = true;
    log.warn(`etcd: ${what}`, { ...facts, attempts: count, down_s: ((Date.now() - outageSince) / 1000).toFixed(1) });
  };

  // Whether the member can serve, asked before anything is read from it: a linearizable read (a member
  // without a leader would hold a snapshot until its deadline).
  const firstRead = async (connection: EtcdConnection) => {
    try {
      return await connection.read(routingKeys(), CHECK_DEADLINE_MS);
    } catch (err) {
      if (refusedCredentials(err)) throw new CredentialError(`etcd refused the credentials of --etcd-user=${settings.user}: ${describe(err)}`);
      throw new MemberError(`${await connection.diagnose(DIAGNOSE_DEADLINE_MS)} (${describe(err)})`);
    }
  };

  const takeSnapshot = async (connection: EtcdConnection) => {
    const takenAt = Date.now();
    const fresh = await connection.snapshot();
    mirror = mirrorOf(fresh.entries, fresh.revision);
    trusted = true;
    stats.snapshots++;
    listingDue = performance.now() + listingInterval(mirror.values.size, random, settings.listingMinMs);
    confirmed(takenAt);
  };

  // The checks of one turn, every checkEveryMs (±20 %), the first at once; each reads the routing keys, then
  // asks the stream for its progress, then judges. Ends the turn when a check says so.
  const checking = async (connection: EtcdConnection, stream: WatchStream, progress: ProgressReplies, interrupted: Promise<string>): Promise<TurnEnding> => {
    let state: CheckState = { pending: undefined, answered: false, unanswered: 0 };
    for (let n = 0; ; n++) {
      if (n > 0) {
        const reason = await Promise.race([sleep(settings.checkEveryMs * (0.8 + random() * 0.4), undefined, { ref: false }), interrupted]);
        if (reason !== undefined) return { kind: reason === RESYNC ? 'resync-requested' : 'stopped' };
      }
      const sentAt = Date.now();
      const heldAtSend = mirror.revision;
      const keys = routingKeys();
      let read: Awaited<ReturnType<EtcdConnection['read']>>;
      try {
        read = await connection.read(keys, CHECK_DEADLINE_MS);
      } catch (err) {
        const why = await connection.diagnose(DIAGNOSE_DEADLINE_MS);
        return { kind: 'cannot-confirm', reason: `no linearizable read within ${CHECK_DEADLINE_MS} ms: ${why} (${describe(err)})` };
      }
      // A stream that answered none of the first requests never will (an etcd gRPC proxy logs each as an error).
      const reply = n >= SILENT_PROBES && !state.answered ? undefined : await progress.ask(stream, PROGRESS_DEADLINE_MS);
      const verdict = judgeCheck(compareKeys(mirror, read, keys, heldAtSend), reply, state, (key) => read.found.get(key)?.modRevision);
      stats.checks++;
      if (verdict.verdict === 'end') return verdict.ending;
      state = verdict.state;
      if (state.answered) stats.progress = progress.ordered ? 'ordered' : 'alive';
      else if (n + 1 >= SILENT_PROBES) stats.progress = 'none';
      if (n + 1 === SILENT_PROBES && !state.answered) {
        log.info(`etcd: ${connection.member} answers no watch progress request (an etcd gRPC proxy drops them): the watch is checked by the routing keys on every check, and by a listing of the prefix`);
      }
      if (verdict.verdict !== 'current') continue;
      confirmed(sentAt);
      if (performance.now() < listingDue) continue;
      const listed = await listing(connection);
      if (listed !== undefined) return listed;
    }
  };

  // Lists the prefix at the revision held and compares it with the mirror; an ending if they differ.
  const listing = async (connection: EtcdConnection): Promise<TurnEnding | undefined> => {
    const at = mirror.revision;
    const listed = await connection.listAt(at, 10 * CHECK_DEADLINE_MS).catch(() => undefined);
    if (listed === undefined) return undefined;
    listingDue = performance.now() + listingInterval(mirror.values.size, random, settings.listingMinMs);
    stats.listings++;
    if (listed === 'compacted') return { kind: 'compacted', compactRevision: at };
    // Events may have come in while the listing was on its way: it is compared only with the mirror it describes.
    if (mirror.revision !== at) return undefined;
    const verdict = compareListing(mirror, listed);
    if (verdict.kind === 'agrees') return undefined;
    return { kind: 'untrusted', cause: 'listing', reason: `at revision ${at} etcd and the mirror differ in ${verdict.keys} key(s), e.g. ${verdict.example}` };
  };

  // One member's turn: the first read, the mirror resumed or taken afresh, then the watch and its checks until
  // something ends it.
  const turn = async (connection: EtcdConnection, interrupted: Promise<string>, snapshot: boolean): Promise<TurnEnding> => {
    const checks = settings.checkEveryMs > 0;
    const first = checks ? await firstRead(connection) : undefined;
    const version = checks ? await connection.version(CHECK_DEADLINE_MS).catch(() => 'unknown') : 'unknown';
    if (trusted && first !== undefined && first.revision < mirror.revision) {
      log.warn(`etcd: ${connection.member} is at revision ${first.revision}, older than the mirror's ${mirror.revision} (restored from a backup, or another cluster): taking a fresh snapshot`);
      stats.resyncs['etcd-behind']++;
      snapshot = true;
    }
    const resuming = trusted && !snapshot;
    if (!resuming) await takeSnapshot(connection);
    if (stopped) return { kind: 'stopped' };

    const startRevision = mirror.revision;
    let live = true;
    let broken: (ending: TurnEnding) => void = () => {};
    const brokenOrder = new Promise<TurnEnding>((resolve) => (broken = resolve));
    const progress = new ProgressReplies(progressOrdered(version));
    const onMessage = (message: WatchMessage) => {
      if (!live) return;
      if (message.kind === 'progress') {
        if (progress.ordered) advanceTo(mirror, message.revision);
        progress.replied(message.revision);
        return;
      }
      const verdict = applyEvents(mirror, message.events, startRevision);
      if (verdict.kind === 'out-of-order') {
        live = false;
        broken({ kind: 'untrusted', cause: 'order', reason: `an event for ${verdict.key} at revision ${verdict.revision} came after revision ${verdict.held}: the stream broke its order, and a change may be lost` });
        return;
      }
      if (verdict.keys.length === 0) return;
      stats.events += verdict.keys.length;
      stats.lastEventAt = Date.now();
      onChange(verdict.keys);
    };
    const stream = await connection.watch(startRevision, onMessage);
    try {
      stats.connected = true;
      stats.member = connection.member;
      delete stats.memberProblems[connection.member];
      const facts = { member: connection.member, revision: mirror.revision, keys: mirror.values.size };
      if (saidDown) {
        log.info(`etcd: reachable again, ${resuming ? 'resumed the watch' : 'resynced'}`, { ...facts, after_s: ((Date.now() - (outageSince ?? Date.now())) / 1000).toFixed(1) });
      } else if (!resuming && announce) {
        log.info('etcd: snapshot taken', facts);
      } else if (resuming) {
        log.debug('etcd: resumed the watch', facts);
      }
      saidDown = false;
      announce = false;
      outageSince = undefined;
      if (resuming) stats.resumes++;
      else onChange();
      const watching = stream.ended.then((end): TurnEnding => (end.kind === 'compacted' ? { kind: 'compacted', compactRevision: end.compactRevision } : { kind: 'lost', reason: end.reason }));
      const asked = interrupted.then((reason): TurnEnding => ({ kind: reason === RESYNC ? 'resync-requested' : 'stopped' }));
      return await Promise.race([watching, brokenOrder, asked, ...(checks ? [checking(connection, stream, progress, interrupted)] : [])]);
    } finally {
      live = false;
      stream.cancel();
    }
  };

  const run = async () => {
    // Members that failed one after another, with why: once every member has, the round is a failure.
    let failures: string[] = [];
    let snapshot = true;
    while (!stopped) {
      const interrupted = new Promise<string>((resolve) => (interrupt = resolve));
      const members = await resolveMembers(settings.endpoints);
      const member = members[next % members.length]!;
      let connection: EtcdConnection | undefined;
      let ending: TurnEnding;
      const startedAt = performance.now();
      try {
        connection = await connect(settings, member);
        ending = await turn(connection, interrupted, snapshot);
      } catch (err) {
        const credential = err instanceof CredentialError;
        ending = { kind: 'failed-to-start', reason: err instanceof MemberError || credential ? err.message : describe(err), credential };
      } finally {
        connection?.close();
      }
      if (stopped) break;
      const decision = afterTurn(ending, { workedMs: performance.now() - startedAt, membersLeftInRound: members.length - failures.length - 1 });
      if (decision.stop) break;
      if (decision.success) {
        retry.reset();
        credentialRetry.reset();
        streak.ended();
      }
      if (decision.member === 'next') next++;
      snapshot = decision.snapshot || !trusted;
      say(ending, member.url, members.length, failures);
      failures = ending.kind === 'failed-to-start' && decision.wait === 'now' ? [...failures, `${member.url} (${ending.reason})`] : [];
      const refused = ending.kind === 'failed-to-start' && ending.credential;
      const delay = decision.wait === 'now' ? 0 : decision.wait === 'spread' ? random() * RECONNECT_SPREAD_MS : (refused ? credentialRetry : retry).next();
      if (delay === 0) continue;
      const reason = await Promise.race([sleep(delay).then(() => ''), interrupted]);
      if (reason === RESYNC) {
        retry.reset();
        credentialRetry.reset();
        snapshot = true;
        announce = true;
        stats.resyncs.requested++;
      }
    }
  };

  // The log line and counts for how a turn ended.
  const say = (ending: TurnEnding, member: string, members: number, failures: string[]) => {
    const facts = { member, revision: mirror.revision };
    switch (ending.kind) {
      case 'stopped':
        return;
      case 'resync-requested':
        log.info('etcd: resync requested', { revision: mirror.revision });
        stats.resyncs.requested++;
        announce = true;
        return;
      case 'compacted':
        log.info(`etcd: revision ${ending.compactRevision} was compacted before the watch caught up; taking a fresh snapshot`, facts);
        stats.resyncs.compacted++;
        announce = true;
        return;
      case 'failed-to-start': {
        stats.memberProblems[member] = ending.reason;
        unconfirmed();
        if (!ending.credential && failures.length + 1 < members) {
          log.debug(`etcd: member ${member} cannot serve: ${ending.reason}; trying the next`);
          return;
        }
        const all = ending.credential ? ending.reason : [...failures, `${member} (${ending.reason})`].join(', ');
        const serving = mirror.revision > 0n ? `keeping the last state (revision ${mirror.revision})` : 'nothing is served until the first snapshot';
        failed(members > 1 ? `no member can serve: ${all}; ${serving}; retrying` : `unreachable (${all}); ${serving}; retrying`, { endpoints: settings.endpoints.join(',') });
        return;
      }
      case 'lost':
        stats.watchesLost++;
        failed(`${ending.reason}; keeping the last state, resuming from revision ${mirror.revision}`, facts);
        return;
      case 'cannot-confirm':
      case 'stalled':
        unconfirmed();
        stats.membersLeft++;
        if (ending.kind === 'stalled') stats.watchesBehind++;
        stats.memberProblems[member] = ending.reason;
        log.warn(`etcd: leaving member ${member}: ${ending.reason}; resuming on ${members > 1 ? 'the next member' : 'it again'}`, facts);
        return;
      case 'untrusted':
        unconfirmed();
        trusted = false;
        stats.resyncs[ending.cause]++;
        announce = true;
        log.warn(`etcd: the mirror cannot be trusted: ${ending.reason}; taking a fresh snapshot`, facts);
        return;
    }
  };

  const running = run();
  return {
    state: () => ({ mirror: mirror.values, revision: mirror.revision }),
    stats: () => ({ ...stats, resyncs: { ...stats.resyncs }, memberProblems: { ...stats.memberProblems } }),
    resync: () => interrupt(RESYNC),
    stop: async () => {
      stopped = true;
      interrupt(STOPPING);
      await running;
    },
  };
}

// The progress replies of one stream: a request sent, and its reply awaited within a bound (etcd answers per
// stream, not per request: a reply that comes after its bound is not counted).
class ProgressReplies {
  readonly ordered: boolean;
  private waiting: ((revision: bigint) => void) | undefined;

  constructor(ordered: boolean) {
    this.ordered = ordered;
  }

  replied(revision: bigint): void {
    this.waiting?.(revision);
    this.waiting = undefined;
  }

  // The revision of the reply, or undefined if none came within `withinMs`.
  async ask(stream: WatchStream, withinMs: number): Promise<bigint | undefined> {
    const reply = new Promise<bigint>((resolve) => (this.waiting = resolve));
    stream.requestProgress();
    const timeout = sleep(withinMs, undefined, { ref: false });
    const revision = await Promise.race([reply, timeout]);
    if (revision === undefined) this.waiting = undefined;
    return revision;
  }
}

// A member that answered, but cannot serve (no leader, cut off): the reason says which.
class MemberError extends Error {}

function describe(err: unknown): string {
  if (err instanceof CredentialError) return err.message;
  if (err instanceof Error) return `${err.name}: ${err.message.split('\n')[0]}`;
  return String(err);
}
