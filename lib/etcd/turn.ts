// One member's turn, over the watch's state: the first read (can it serve?), the mirror resumed or taken afresh,
// then the watch stream and its checks until something ends the turn, which is returned, never thrown, but for a
// member that cannot start one (lib/etcd/watch.ts reports it). Every check interval it reads the routing keys
// linearizably (which also proves the member has a quorum) and asks the stream for its progress; every few
// minutes it lists the prefix at the revision held. The judging is lib/etcd/decide.ts's and lib/etcd/mirror.ts's.

import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../common/log.ts';
import { refusedCredentials, type EtcdConnection, type WatchMessage, type WatchStream } from './connection.ts';
import { CredentialError } from './credentials.ts';
import { judgeCheck, listingInterval, type CheckState, type TurnEnding } from './decide.ts';
import { advanceTo, applyEvents, compareKeys, compareListing, mirrorOf, progressOrdered } from './mirror.ts';
import { confirmed, type RegistryState, type WatchSettings, type WatchState } from './state.ts';

// A check has this long to answer, and the progress reply after it half that: a member with a leader answers
// in a few ms. Asking why a member failed has half a check too.
const CHECK_DEADLINE_MS = 1000;
const PROGRESS_DEADLINE_MS = 500;
const DIAGNOSE_DEADLINE_MS = 500;
// Checks before a stream that never answered a progress request is said to be one that does not.
const SILENT_PROBES = 3;

export const RESYNC = 'resync requested';

// What a turn works with besides the connection: the watch's state, and how it hands each state on.
export interface TurnContext {
  state: WatchState;
  settings: WatchSettings;
  log: Logger;
  onChange(state: RegistryState, keys?: readonly string[]): void;
  random(): number;
  stopped(): boolean;
}

// A member that answered, but cannot serve (no leader, cut off): the reason says which.
export class MemberError extends Error {}

export function describe(err: unknown): string {
  if (err instanceof CredentialError) return err.message;
  if (err instanceof Error) return `${err.name}: ${err.message.split('\n')[0]}`;
  return String(err);
}

const routingKeys = ({ settings, state }: TurnContext) => settings.routingKeys(state.mirror.values);
const handOn = (context: TurnContext, keys?: readonly string[]) => context.onChange({ mirror: context.state.mirror.values, revision: context.state.mirror.revision }, keys);

// Whether the member can serve, asked before anything is read from it: a linearizable read (a member without a
// leader would hold a snapshot until its deadline).
async function firstRead(connection: EtcdConnection, context: TurnContext) {
  try {
    return await connection.read(routingKeys(context), CHECK_DEADLINE_MS);
  } catch (err) {
    if (refusedCredentials(err)) throw new CredentialError(`etcd refused the credentials of --etcd-user=${context.settings.user}: ${describe(err)}`);
    throw new MemberError(`${await connection.diagnose(DIAGNOSE_DEADLINE_MS)} (${describe(err)})`);
  }
}

async function takeSnapshot(connection: EtcdConnection, { state, settings, random }: TurnContext): Promise<void> {
  const takenAt = Date.now();
  const fresh = await connection.snapshot();
  state.mirror = mirrorOf(fresh.entries, fresh.revision);
  state.trusted = true;
  state.stats.snapshots++;
  state.listingDue = performance.now() + listingInterval(state.mirror.values.size, random, settings.listingMinMs);
  confirmed(state, takenAt);
}

// One check: the routing keys read, the stream asked for its progress (unless it never answers), and judged.
async function check(connection: EtcdConnection, stream: WatchStream, progress: ProgressReplies, checkState: CheckState, n: number, context: TurnContext) {
  const { state } = context;
  const sentAt = Date.now();
  const heldAtSend = state.mirror.revision;
  const keys = routingKeys(context);
  let read: Awaited<ReturnType<EtcdConnection['read']>>;
  try {
    read = await connection.read(keys, CHECK_DEADLINE_MS);
  } catch (err) {
    const why = await connection.diagnose(DIAGNOSE_DEADLINE_MS);
    return { sentAt, verdict: { verdict: 'end' as const, ending: { kind: 'cannot-confirm' as const, reason: `no linearizable read within ${CHECK_DEADLINE_MS} ms: ${why} (${describe(err)})` } } };
  }
  // A stream that answered none of the first requests never will (an etcd gRPC proxy logs each as an error).
  const reply = n >= SILENT_PROBES && !checkState.answered ? undefined : await progress.ask(stream, PROGRESS_DEADLINE_MS);
  state.stats.checks++;
  return { sentAt, verdict: judgeCheck(compareKeys(state.mirror, read, keys, heldAtSend), reply, checkState, (key) => read.found.get(key)?.modRevision) };
}

// The checks of one turn, every checkEveryMs (±20 %), the first at once. Ends the turn when a check says so.
async function checking(connection: EtcdConnection, stream: WatchStream, progress: ProgressReplies, interrupted: Promise<string>, context: TurnContext): Promise<TurnEnding> {
  const { state, settings, random, log } = context;
  let checkState: CheckState = { pending: undefined, answered: false, unanswered: 0 };
  for (let n = 0; ; n++) {
    if (n > 0) {
      const reason = await Promise.race([sleep(settings.checkEveryMs * (0.8 + random() * 0.4), undefined, { ref: false }), interrupted]);
      if (reason !== undefined) return { kind: reason === RESYNC ? 'resync-requested' : 'stopped' };
    }
    const { sentAt, verdict } = await check(connection, stream, progress, checkState, n, context);
    if (verdict.verdict === 'end') return verdict.ending;
    checkState = verdict.state;
    if (checkState.answered) state.stats.progress = progress.ordered ? 'ordered' : 'alive';
    else if (n + 1 >= SILENT_PROBES) state.stats.progress = 'none';
    if (n + 1 === SILENT_PROBES && !checkState.answered) {
      log.info(`etcd: ${connection.member} answers no watch progress request (an etcd gRPC proxy drops them): the watch is checked by the routing keys on every check, and by a listing of the prefix`);
    }
    if (verdict.verdict !== 'current') continue;
    confirmed(state, sentAt);
    if (performance.now() < state.listingDue) continue;
    const listed = await listing(connection, context);
    if (listed !== undefined) return listed;
  }
}

// Lists the prefix at the revision held and compares it with the mirror; an ending if they differ.
async function listing(connection: EtcdConnection, { state, settings, random, log }: TurnContext): Promise<TurnEnding | undefined> {
  const at = state.mirror.revision;
  let listed: Awaited<ReturnType<EtcdConnection['listAt']>>;
  try {
    listed = await connection.listAt(at, 10 * CHECK_DEADLINE_MS);
  } catch (err) {
    // The checks go on; the listing is tried again at the next one that agrees.
    log.debug(`etcd: the listing of the prefix failed: ${describe(err)}`);
    return undefined;
  }
  state.listingDue = performance.now() + listingInterval(state.mirror.values.size, random, settings.listingMinMs);
  state.stats.listings++;
  if (listed === 'compacted') return { kind: 'compacted', compactRevision: at };
  // Events may have come in while the listing was on its way: it is compared only with the mirror it describes.
  if (state.mirror.revision !== at) return undefined;
  const verdict = compareListing(state.mirror, listed);
  if (verdict.kind === 'agrees') return undefined;
  return { kind: 'untrusted', cause: 'listing', reason: `at revision ${at} etcd and the mirror differ in ${verdict.keys} key(s), e.g. ${verdict.example}` };
}

// The member's version, for what its progress replies prove; unknown proves the least.
async function versionOf(connection: EtcdConnection, log: Logger): Promise<string> {
  try {
    return await connection.version(CHECK_DEADLINE_MS);
  } catch (err) {
    log.debug(`etcd: ${connection.member} did not say its version: ${describe(err)}`);
    return 'unknown';
  }
}

// One member's turn: the first read, the mirror resumed or taken afresh, then the watch and its checks until
// something ends it.
export async function runTurn(connection: EtcdConnection, interrupted: Promise<string>, snapshot: boolean, context: TurnContext): Promise<TurnEnding> {
  const { state, settings, log } = context;
  const checks = settings.checkEveryMs > 0;
  const first = checks ? await firstRead(connection, context) : undefined;
  const version = checks ? await versionOf(connection, log) : 'unknown';
  if (state.trusted && first !== undefined && first.revision < state.mirror.revision) {
    log.warn(`etcd: ${connection.member} is at revision ${first.revision}, older than the mirror's ${state.mirror.revision} (restored from a backup, or another cluster): taking a fresh snapshot`);
    state.stats.resyncs['etcd-behind']++;
    snapshot = true;
  }
  const resuming = state.trusted && !snapshot;
  if (!resuming) await takeSnapshot(connection, context);
  if (context.stopped()) return { kind: 'stopped' };
  const progress = new ProgressReplies(progressOrdered(version));
  const events = followEvents(state.mirror.revision, progress, context);
  const stream = await connection.watch(state.mirror.revision, events.onMessage);
  try {
    announce(connection.member, resuming, context);
    if (!resuming) handOn(context);
    const watching = stream.ended.then((end): TurnEnding => (end.kind === 'compacted' ? { kind: 'compacted', compactRevision: end.compactRevision } : { kind: 'lost', reason: end.reason }));
    const asked = interrupted.then((reason): TurnEnding => ({ kind: reason === RESYNC ? 'resync-requested' : 'stopped' }));
    return await Promise.race([watching, events.broken, asked, ...(checks ? [checking(connection, stream, progress, interrupted, context)] : [])]);
  } finally {
    events.stop();
    stream.cancel();
  }
}

// The watch stream's messages applied to the mirror: progress replies, and events handed on, until one breaks
// the stream's order (then `broken` says so, and nothing more is applied).
function followEvents(startRevision: bigint, progress: ProgressReplies, context: TurnContext) {
  const { state } = context;
  let live = true;
  let broke: (ending: TurnEnding) => void = () => {};
  const broken = new Promise<TurnEnding>((resolve) => (broke = resolve));
  const onMessage = (message: WatchMessage) => {
    if (!live) return;
    if (message.kind === 'progress') {
      if (progress.ordered) advanceTo(state.mirror, message.revision);
      progress.replied(message.revision);
      return;
    }
    const verdict = applyEvents(state.mirror, message.events, startRevision);
    if (verdict.kind === 'out-of-order') {
      live = false;
      broke({ kind: 'untrusted', cause: 'order', reason: `an event for ${verdict.key} at revision ${verdict.revision} came after revision ${verdict.held}: the stream broke its order, and a change may be lost` });
      return;
    }
    if (verdict.keys.length === 0) return;
    state.stats.events += verdict.keys.length;
    state.stats.lastEventAt = Date.now();
    handOn(context, verdict.keys);
  };
  return { onMessage, broken, stop: () => (live = false) };
}

// The watch is on `member` now: said once after an outage or for a snapshot worth a line, and counted.
function announce(member: string, resuming: boolean, { state, log }: TurnContext): void {
  const { stats, mirror } = state;
  stats.connected = true;
  stats.member = member;
  delete stats.memberProblems[member];
  const facts = { member, revision: mirror.revision, keys: mirror.values.size };
  if (state.saidDown) {
    log.info(`etcd: reachable again, ${resuming ? 'resumed the watch' : 'resynced'}`, { ...facts, after_s: ((Date.now() - (state.outageSince ?? Date.now())) / 1000).toFixed(1) });
  } else if (!resuming && state.announce) {
    log.info('etcd: snapshot taken', facts);
  } else if (resuming) {
    log.debug('etcd: resumed the watch', facts);
  }
  [state.saidDown, state.announce, state.outageSince] = [false, false, undefined];
  if (resuming) stats.resumes++;
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
