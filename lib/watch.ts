// Follows the service's prefix in etcd: a consistent snapshot, then a watch from the next revision, kept as a
// key → value mirror, on one member at a time. Every check interval it asks that member a linearizable question
// about the prefix; a member that cannot answer (no leader, paused, cut off from the quorum) is left for the
// next, and a watch that has fallen behind what etcd holds is dropped. On any trouble it takes a fresh
// snapshot, since the etcd3 client's own resume can skip events. It knows nothing of the layout.

import { setTimeout as sleep } from 'node:timers/promises';
import { CredentialError } from './credentials.ts';
import { connectEtcd3, resolveMembers, type Connect, type EtcdConnection, type EtcdSettings, type PrefixCheck, type WatchEvent } from './etcd.ts';
import type { Logger } from './log.ts';
import { Backoff, FailureStreak } from './retry.ts';

export type { Connect, EtcdConnection, EtcdSettings, PrefixCheck, WatchEvent } from './etcd.ts';

export interface RegistryState {
  mirror: ReadonlyMap<string, string>;
  revision: bigint;
}

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
  // Watches lost after working (disconnect, compaction, auth...).
  watchesLost: number;
  // Members left because they could not confirm the state (no leader, paused, cut off), or whose watch fell
  // behind what etcd holds.
  membersLeft: number;
  // Of those, watches found behind etcd by a check.
  watchesBehind: number;
  // Why each member could not serve when last tried; a member that served since is not listed.
  memberProblems: Record<string, string>;
}

export interface PrefixWatch {
  // The newest state: a live view, to be read when notified, not kept.
  state(): RegistryState;
  stats(): WatchStats;
  // Drops the watch and takes a fresh snapshot, as after any trouble.
  resync(): void;
  stop(): Promise<void>;
}

export interface WatchSettings extends EtcdSettings {
  // How often the member is checked against the cluster while watching; 0: never (then a member that loses
  // its leader is left when etcd cancels the watch, ~5 s, and a stalled watch is not caught).
  checkEveryMs: number;
}

// A check has this long to answer: a member with a leader answers in a few ms.
export const CHECK_DEADLINE_MS = 1000;
const DIAGNOSE_DEADLINE_MS = 1000;
const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 2000;
// A watch that worked this long was a success: the backoff and the failure streak start over.
const HEALTHY_AFTER_MS = 10_000;
const RESYNC = 'resync requested';
const STOPPING = 'stopping';

// Applies a batch of watch events to the mirror: only those newer than the revision held (older ones were in
// the snapshot already). Returns the new revision and the keys of the events applied.
export function applyWatchEvents(mirror: Map<string, string>, revision: bigint, events: readonly WatchEvent[]): { revision: bigint; keys: string[] } {
  const keys: string[] = [];
  for (const event of events) {
    if (event.modRevision <= revision) continue;
    if (event.type === 'put') mirror.set(event.key, event.value);
    else mirror.delete(event.key);
    revision = event.modRevision;
    keys.push(event.key);
  }
  return { revision, keys };
}

// What a check says of the mirror: current (etcd holds the same number of keys and none newer than the
// revision held), behind (not yet: events may be on their way), or stalled: behind twice with the same
// revision held, so no event came in between although etcd had them. `suspect`: the revision held at the
// last check that said behind.
export type CheckVerdict = { verdict: 'current' } | { verdict: 'behind'; suspect: bigint } | { verdict: 'stalled' };

export function judgeCheck(check: PrefixCheck, held: { revision: bigint; keys: number }, suspect: bigint | undefined): CheckVerdict {
  if (check.newer === 0 && check.keys === held.keys) return { verdict: 'current' };
  if (suspect === held.revision) return { verdict: 'stalled' };
  return { verdict: 'behind', suspect: held.revision };
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
        return await connection.snapshot();
      } catch (err) {
        if (Date.now() + RETRY_MAX_MS > deadline) throw err;
      } finally {
        connection?.close();
      }
    }
    await sleep(RETRY_MAX_MS / 4);
  }
}

// How a connection's time on a member ended.
type Ending = { kind: 'interrupted'; reason: string } | { kind: 'lost'; reason: string } | { kind: 'leave'; reason: string; behind: boolean };

// Calls onChange with the keys an event changed, or with none after a fresh snapshot (anything may have changed).
export function watchPrefix(settings: WatchSettings, log: Logger, onChange: (keys?: readonly string[]) => void, connect: Connect = connectEtcd3): PrefixWatch {
  let mirror = new Map<string, string>();
  let revision = 0n;
  let stopped = false;
  const stats: WatchStats = {
    connected: false,
    member: undefined,
    staleSince: Date.now(),
    confirmedAt: undefined,
    lastEventAt: undefined,
    events: 0,
    snapshots: 0,
    watchesLost: 0,
    membersLeft: 0,
    watchesBehind: 0,
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
  const backoff = new Backoff(RETRY_FIRST_MS, RETRY_MAX_MS);
  const streak = new FailureStreak();
  let outageSince: number | undefined;
  // A failure was logged and its end not yet.
  let saidDown = false;
  // The next snapshot is worth a line of its own: the first, and one a resync asked for.
  let announce = true;
  // The member to try next, as an index into the members; a random start spreads many ambassadors.
  let next = Math.floor(Math.random() * 1024);

  const onEvents = (events: WatchEvent[]) => {
    const result = applyWatchEvents(mirror, revision, events);
    revision = result.revision;
    if (result.keys.length === 0) return;
    stats.events += result.keys.length;
    stats.lastEventAt = Date.now();
    onChange(result.keys);
  };

  const failed = (what: string, facts: Record<string, string | number | bigint>) => {
    unconfirmed();
    outageSince ??= Date.now();
    const { log: say, count } = streak.failed(what);
    if (!say) return;
    saidDown = true;
    log.warn(`etcd: ${what}`, { ...facts, attempts: count, down_s: ((Date.now() - outageSince) / 1000).toFixed(1) });
  };

  // Checks the member every checkEveryMs until a check fails or finds the watch stalled.
  const checking = async (connection: EtcdConnection, interrupted: Promise<string>): Promise<Ending> => {
    let suspect: bigint | undefined;
    for (;;) {
      const reason = await Promise.race([sleep(settings.checkEveryMs, undefined, { ref: false }), interrupted]);
      if (reason !== undefined) return { kind: 'interrupted', reason };
      const sentAt = Date.now();
      const held = { revision, keys: mirror.size };
      let check: PrefixCheck;
      try {
        check = await connection.check(held.revision, CHECK_DEADLINE_MS);
      } catch (err) {
        const why = await connection.diagnose(DIAGNOSE_DEADLINE_MS);
        return { kind: 'leave', reason: `no linearizable read within ${CHECK_DEADLINE_MS} ms: ${why} (${describe(err)})`, behind: false };
      }
      const verdict = judgeCheck(check, held, suspect);
      if (verdict.verdict === 'current') {
        suspect = undefined;
        confirmed(sentAt);
      } else if (verdict.verdict === 'behind') {
        suspect = verdict.suspect;
      } else {
        return {
          kind: 'leave',
          reason: `the watch fell behind etcd: at revision ${check.revision} the prefix holds ${check.keys} keys, ${check.newer} written after revision ${held.revision}, and the mirror ${held.keys} at revision ${held.revision}, with no event for ${settings.checkEveryMs * 2} ms`,
          behind: true,
        };
      }
    }
  };

  // One member's turn: connect, check, snapshot, then watch (and check) until something ends it.
  const onMember = async (connection: EtcdConnection, interrupted: Promise<string>): Promise<Ending> => {
    // A member without a leader would hold a snapshot until its deadline; a quick check says so in a second.
    if (settings.checkEveryMs > 0) {
      try {
        await connection.check(revision, CHECK_DEADLINE_MS);
      } catch (err) {
        const why = await connection.diagnose(DIAGNOSE_DEADLINE_MS);
        throw new MemberError(`${why} (${describe(err)})`);
      }
    }
    const takenAt = Date.now();
    const fresh = await connection.snapshot();
    if (stopped) return { kind: 'interrupted', reason: STOPPING };
    mirror = fresh.mirror;
    revision = fresh.revision;
    stats.snapshots++;
    stats.connected = true;
    stats.member = connection.member;
    delete stats.memberProblems[connection.member];
    confirmed(takenAt);
    if (saidDown) {
      log.info('etcd: reachable again, resynced', { member: connection.member, after_s: ((Date.now() - (outageSince ?? Date.now())) / 1000).toFixed(1), revision, keys: mirror.size });
    } else if (announce) {
      log.info('etcd: snapshot taken', { member: connection.member, revision, keys: mirror.size });
    }
    saidDown = false;
    announce = false;
    outageSince = undefined;
    onChange();
    const watching = connection.follow(revision + 1n, onEvents, interrupted).then((reason): Ending =>
      reason === RESYNC || reason === STOPPING ? { kind: 'interrupted', reason } : { kind: 'lost', reason },
    );
    return settings.checkEveryMs > 0 ? Promise.race([watching, checking(connection, interrupted)]) : watching;
  };

  const run = async () => {
    // Members that failed one after another, with why: once every member has, the round is a failure.
    let failures: string[] = [];
    while (!stopped) {
      const interrupted = new Promise<string>((resolve) => (interrupt = resolve));
      const members = await resolveMembers(settings.endpoints);
      const member = members[next % members.length]!;
      let connection: EtcdConnection | undefined;
      let ending: Ending | undefined;
      const startedAt = Date.now();
      try {
        connection = await connect(settings, member);
        ending = await onMember(connection, interrupted);
      } catch (err) {
        if (stopped) break;
        const why = err instanceof MemberError ? err.message : describe(err);
        stats.memberProblems[member.url] = why;
        next++;
        unconfirmed();
        // A file that went bad fails on every member alike.
        if (!(err instanceof CredentialError) && failures.length + 1 < members.length) {
          failures.push(`${member.url} (${why})`);
          log.debug(`etcd: member ${member.url} cannot serve: ${why}; trying the next`);
          continue;
        }
        const all = err instanceof CredentialError ? why : [...failures, `${member.url} (${why})`].join(', ');
        failures = [];
        const serving = revision > 0n ? `keeping the last state (revision ${revision})` : 'nothing is served until the first snapshot';
        failed(members.length > 1 ? `no member can serve: ${all}; ${serving}; retrying` : `unreachable (${all}); ${serving}; retrying`, { endpoints: settings.endpoints.join(',') });
      } finally {
        connection?.close();
      }
      if (stopped) break;
      if (ending !== undefined) {
        failures = [];
        if (Date.now() - startedAt >= HEALTHY_AFTER_MS || ending.reason === RESYNC) {
          backoff.reset();
          streak.ended();
        }
        if (ending.kind === 'interrupted') {
          if (ending.reason === RESYNC) {
            log.info('etcd: resync requested', { revision });
            announce = true;
          }
          continue;
        }
        unconfirmed();
        if (ending.kind === 'leave') {
          // Straight to the next member: this one cannot tell what is current.
          stats.membersLeft++;
          if (ending.behind) stats.watchesBehind++;
          stats.memberProblems[member.url] = ending.reason;
          next++;
          log.warn(`etcd: leaving member ${member.url}: ${ending.reason}; resyncing from ${members.length > 1 ? 'the next member' : 'it again'}`, { revision });
          announce = true;
          continue;
        }
        stats.watchesLost++;
        failed(`${ending.reason}; keeping the last state and resyncing`, { member: member.url, revision });
      }
      const reason = await Promise.race([sleep(backoff.next()).then(() => ''), interrupted]);
      if (reason === RESYNC) {
        backoff.reset();
        announce = true;
      }
    }
  };

  const running = run();
  return {
    state: () => ({ mirror, revision }),
    stats: () => ({ ...stats, memberProblems: { ...stats.memberProblems } }),
    resync: () => interrupt(RESYNC),
    stop: async () => {
      stopped = true;
      interrupt(STOPPING);
      await running;
    },
  };
}

// A member that answered, but cannot serve (no leader, cut off): the reason says which.
class MemberError extends Error {}

function describe(err: unknown): string {
  if (err instanceof CredentialError) return err.message;
  if (err instanceof Error) return `${err.name}: ${err.message.split('\n')[0]}`;
  return String(err);
}
