// Follows the service's prefix in etcd, on one member at a time: a consistent snapshot once, then a watch,
// resumed from the revision the mirror holds after any disconnect or change of member (lib/etcd/turn.ts). After
// each turn it asks lib/etcd/decide.ts what to do (the next member, now or after a backoff, a fresh snapshot or
// a resume), reports the ending, and waits as told. It knows nothing of the layout.

import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../common/log.ts';
import { Backoff, FailureStreak } from '../common/retry.ts';
import { connectEtcd3, resolveMembers, type Connect, type EtcdConnection, type EtcdSettings } from './connection.ts';
import { CredentialError } from './credentials.ts';
import { afterTurn, listingInterval, reportEnding, type Report, type TurnEnding } from './decide.ts';
import { mirrorOf } from './mirror.ts';
import { newWatchState, unconfirmed, type RegistryState, type WatchSettings, type WatchState, type WatchStats } from './state.ts';
import { describe, MemberError, RESYNC, runTurn, type TurnContext } from './turn.ts';

export type { RegistryState, WatchSettings, WatchStats } from './state.ts';
export { afterTurn, judgeCheck, type TurnEnding } from './decide.ts';

export interface PrefixWatch {
  // The newest state: a live view, for a look now (it is handed on with every change).
  state(): RegistryState;
  stats(): WatchStats;
  // Drops the watch and takes a fresh snapshot.
  resync(): void;
  stop(): Promise<void>;
}

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
const STOPPING = 'stopping';

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
        // The next member, or the next round, is tried until the deadline; then this is the reason.
        if (Date.now() + RETRY_MAX_MS > deadline) throw err;
      } finally {
        connection?.close();
      }
    }
    await sleep(RETRY_MAX_MS);
  }
}

// Calls onChange with the newest state (a live view, to be read then, not kept) and the keys an event changed, or
// none after a fresh snapshot (anything may have changed).
export function watchPrefix(settings: WatchSettings, log: Logger, onChange: TurnContext['onChange'], connect: Connect = connectEtcd3, random: () => number = Math.random): PrefixWatch {
  const state = newWatchState(performance.now() + listingInterval(0, random, settings.listingMinMs) * random());
  let stopped = false;
  let interrupt: (reason: string) => void = () => {};
  const context: TurnContext = { state, settings, log, onChange, random, stopped: () => stopped };
  const say = reporter(state, log);
  // A turn on one member; one that cannot start is an ending like any other.
  const turnOn = async (member: { url: string; serverName: string }, interrupted: Promise<string>, snapshot: boolean): Promise<TurnEnding> => {
    let connection: EtcdConnection | undefined;
    try {
      connection = await connect(settings, member);
      return await runTurn(connection, interrupted, snapshot, context);
    } catch (err) {
      const credential = err instanceof CredentialError;
      return { kind: 'failed-to-start', reason: err instanceof MemberError || credential ? err.message : describe(err), credential };
    } finally {
      connection?.close();
    }
  };

  const running = (async () => {
    const retry = { members: new Backoff(RETRY_FIRST_MS, RETRY_MAX_MS, random), credentials: new Backoff(CREDENTIAL_RETRY_FIRST_MS, CREDENTIAL_RETRY_MAX_MS, random) };
    // Members that failed one after another, with why: once every member has, the round is a failure.
    let failures: string[] = [];
    let snapshot = true;
    // The member to try next, as an index into the members; a random start spreads many ambassadors.
    let next = Math.floor(random() * 1024);
    while (!stopped) {
      const interrupted = new Promise<string>((resolve) => (interrupt = resolve));
      const members = await resolveMembers(settings.endpoints);
      const member = members[next % members.length]!;
      const startedAt = performance.now();
      const ending = await turnOn(member, interrupted, snapshot);
      if (stopped) break;
      const decision = afterTurn(ending, { workedMs: performance.now() - startedAt, membersLeftInRound: members.length - failures.length - 1 });
      if (decision.stop) break;
      if (decision.success) {
        retry.members.reset();
        retry.credentials.reset();
        say.streak.ended();
      }
      if (decision.member === 'next') next++;
      if (decision.distrust) state.trusted = false;
      if (decision.announce) state.announce = true;
      snapshot = decision.snapshot || !state.trusted;
      say(reportEnding(ending, { member: member.url, members: members.length, failures, revision: state.mirror.revision, endpoints: settings.endpoints }), member.url);
      failures = ending.kind === 'failed-to-start' && decision.wait === 'now' ? [...failures, `${member.url} (${ending.reason})`] : [];
      const backoff = ending.kind === 'failed-to-start' && ending.credential ? retry.credentials : retry.members;
      const delay = decision.wait === 'now' ? 0 : decision.wait === 'spread' ? random() * RECONNECT_SPREAD_MS : backoff.next();
      if (delay === 0 || (await Promise.race([sleep(delay).then(() => ''), interrupted])) !== RESYNC) continue;
      [snapshot, state.announce] = [true, true];
      state.stats.resyncs.requested++;
      retry.members.reset();
      retry.credentials.reset();
    }
  })();

  return {
    state: () => ({ mirror: state.mirror.values, revision: state.mirror.revision }),
    stats: () => ({ ...state.stats, resyncs: { ...state.stats.resyncs }, memberProblems: { ...state.stats.memberProblems } }),
    resync: () => interrupt(RESYNC),
    stop: async () => {
      stopped = true;
      interrupt(STOPPING);
      await running;
    },
  };
}

// What a report does to the watch's state and log: counts, the member's problem, and a line, or a failure said
// once per streak with how long etcd has been out.
function reporter(state: WatchState, log: Logger) {
  const streak = new FailureStreak();
  const say = (report: Report, member: string) => {
    const { stats } = state;
    if (report.unconfirmed) unconfirmed(state);
    if (report.memberProblem !== undefined) stats.memberProblems[member] = report.memberProblem;
    if (report.resync !== undefined) stats.resyncs[report.resync]++;
    for (const [count, by] of Object.entries(report.counts ?? {})) stats[count as keyof NonNullable<Report['counts']>] += by;
    if (report.line) log[report.line.level](report.line.message, report.line.facts);
    if (report.failure === undefined) return;
    state.outageSince ??= Date.now();
    const { log: now, count } = streak.failed(report.failure.what);
    if (!now) return;
    state.saidDown = true;
    log.warn(`etcd: ${report.failure.what}`, { ...report.failure.facts, attempts: count, down_s: ((Date.now() - state.outageSince) / 1000).toFixed(1) });
  };
  return Object.assign(say, { streak });
}
