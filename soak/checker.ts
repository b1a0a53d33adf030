// The soak's checker: a recorded history in, a verdict out. Pure, so that it can be held to histories with
// planted violations (test/soak-checker.test.ts) and run again on a stored history.
//
// What it holds the history to:
// - the fence: no client session accepted by an instance later than the fence window after etcd (the
//   writer's acknowledged writes) stopped naming it master, and no session to it still open then; a write
//   whose outcome was unknown counts as made at any moment until the read that settled it. The window is
//   `fenceMs`, `degradedFenceMs` while a fault keeps ambassador from a member, and stretches over a time
//   ambassador could not act at all (cut off from every member, paused, killed) plus `recoverMs`;
// - the fence's order, on the wire: no client connected to one instance while a session that carried a
//   client's bytes to another was still open (a window of 0);
// - convergence: by `convergeMs` into each quiet period, every new connection reaches the master etcd says,
//   to its end;
// - liveness: ambassador exits only as a fault made it, /healthz answers, never two haproxy masters in two
//   samples in a row, and /healthz never says "ok" for a state older than a prefix write acknowledged more
//   than `maxStaleMs` before;
// - coverage: each fault kind happened, master changes happened while faults were on, and enough traffic.

import { fenceOverlaps } from '../test/helpers/recorder.ts';
import type { SoakEvent } from './history.ts';
import { FAULT_KINDS } from './schedule.ts';

export interface CheckSettings {
  fenceMs: number;
  degradedFenceMs: number;
  recoverMs: number;
  convergeMs: number;
  maxStaleMs: number;
}

export const DEFAULT_CHECK: CheckSettings = { fenceMs: 1_000, degradedFenceMs: 8_000, recoverMs: 8_000, convergeMs: 6_000, maxStaleMs: 5_000 };

export interface Violation {
  invariant: 'fence' | 'fence-survivor' | 'fence-order' | 'convergence' | 'liveness' | 'stale-ok' | 'one-haproxy' | 'coverage';
  at: bigint | undefined;
  message: string;
  faults: string[];
  around: string[];
}

export interface Verdict {
  violations: Violation[];
  counts: Record<string, number>;
  faultKinds: Record<string, number>;
}

// Faults that keep ambassador from a member, or slow it: the fence may take the degraded window.
const DEGRADING = new Set(['partition-member', 'partition-watched', 'pause-member', 'pause-leader', 'kill-member', 'kill-leader', 'replace-member', 'blackhole-watched', 'latency', 'write-burst']);
// Faults during which ambassador cannot act at all: etcd cut off entirely, ambassador itself stopped.
const BLINDING = new Set(['compact-disconnected', 'pause-ambassador', 'kill-ambassador', 'kill-haproxy-worker']);
// Faults after which ambassador exits, by design or by force.
const EXITING = new Set(['kill-ambassador', 'kill-haproxy-worker']);

const ms = (n: number) => BigInt(n) * 1_000_000n;
const seconds = (ns: bigint) => (Number(ns) / 1e9).toFixed(3);

interface Interval {
  from: bigint;
  to: bigint;
  kind: string;
}

export function check(unsorted: readonly SoakEvent[], settings: CheckSettings = DEFAULT_CHECK): Verdict {
  const events = [...unsorted].sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : 0));
  const start = events[0]?.t ?? 0n;
  const end = events.at(-1)?.t ?? 0n;
  const violations: Violation[] = [];

  // Faults as intervals.
  const faults: Interval[] = [];
  const open = new Map<number, { t: bigint; kind: string }>();
  for (const event of events) {
    if (event.type === 'fault-start') open.set(event.id, { t: event.t, kind: event.kind });
    if (event.type === 'fault-end') {
      const started = open.get(event.id);
      if (started) faults.push({ from: started.t, to: event.t, kind: started.kind });
      open.delete(event.id);
    }
  }
  for (const started of open.values()) faults.push({ from: started.t, to: end, kind: started.kind });
  const activeAt = (t: bigint) => faults.filter((f) => f.from <= t && t <= f.to).map((f) => f.kind);
  const overlapping = (from: bigint, to: bigint, kinds: Set<string>) => faults.filter((f) => kinds.has(f.kind) && f.from <= to && f.to >= from);

  const around = (t: bigint | undefined) =>
    t === undefined
      ? []
      : events
          .filter((e) => e.t >= t - ms(2000) && e.t <= t + ms(2000) && e.type !== 'healthz')
          .slice(0, 40)
          .map((e) => `${seconds(e.t - start)} ${JSON.stringify(e, (_, v) => (typeof v === 'bigint' ? String(v) : v))}`);
  const violation = (invariant: Violation['invariant'], at: bigint | undefined, message: string) =>
    violations.push({ invariant, at, message, faults: at === undefined ? [] : activeAt(at), around: around(at) });

  // The master etcd named, over time: acknowledged writes; a write of unknown outcome that the next read
  // shows made counts as made at any moment from its sending to that read.
  const changes: { t: bigint; master: string }[] = [];
  const ambiguous: { from: bigint; to: bigint; master: string }[] = [];
  let pending: { sent: bigint; master: string }[] = [];
  for (const event of events) {
    if (event.type === 'write') {
      changes.push({ t: event.t, master: event.master });
      pending = [];
    } else if (event.type === 'write-unknown') {
      pending.push({ sent: event.sent, master: event.master });
    } else if (event.type === 'read') {
      for (const write of pending) if (write.master === event.master) ambiguous.push({ from: write.sent, to: event.t, master: write.master });
      if (changes.at(-1)?.master !== event.master) changes.push({ t: event.t, master: event.master });
      pending = [];
    }
  }
  const masterAt = (t: bigint) => {
    let master: string | undefined;
    for (const change of changes) {
      if (change.t > t) break;
      master = change.master;
    }
    return master;
  };
  const mastersBetween = (from: bigint, to: bigint) => {
    const masters = new Set<string>();
    const first = masterAt(from);
    if (first !== undefined) masters.add(first);
    for (const change of changes) if (change.t > from && change.t <= to) masters.add(change.master);
    for (const window of ambiguous) if (window.from <= to && window.to >= from) masters.add(window.master);
    return masters;
  };
  // How far back a connection at `t` may still follow an older master: the window, stretched over every
  // time ambassador could not act (and its recovery) that reaches into it.
  const windowStart = (t: bigint) => {
    const degraded = overlapping(t - ms(settings.degradedFenceMs), t, DEGRADING).length > 0;
    let from = t - ms(degraded ? settings.degradedFenceMs : settings.fenceMs);
    for (let stretched = true; stretched; ) {
      stretched = false;
      for (const blind of overlapping(from - ms(settings.recoverMs), t, BLINDING)) {
        const reach = blind.from - ms(settings.degradedFenceMs);
        if (blind.to + ms(settings.recoverMs) >= from && reach < from) {
          from = reach;
          stretched = true;
        }
      }
    }
    return from;
  };

  // Connections: the wire's record where there is one, else the backends'.
  const source = events.some((e) => (e.type === 'accept' || e.type === 'session' || e.type === 'close') && e.source === 'wire') ? 'wire' : 'backend';
  const connectionEvents = events.filter((e): e is Extract<SoakEvent, { type: 'accept' | 'session' | 'close' }> => (e.type === 'accept' || e.type === 'session' || e.type === 'close') && e.source === source);
  const sessions = new Map<number, { backend: string; accepted: bigint; closed: bigint | undefined; client: boolean }>();
  for (const event of connectionEvents) {
    if (event.type === 'accept') sessions.set(event.id, { backend: event.backend, accepted: event.t, closed: undefined, client: false });
    const session = sessions.get(event.id);
    if (!session) continue;
    if (event.type === 'session') session.client = true;
    if (event.type === 'close') session.closed ??= event.t;
  }
  const clientSessions = [...sessions.values()].filter((s) => s.client);

  // The fence.
  for (const session of clientSessions) {
    const allowed = mastersBetween(windowStart(session.accepted), session.accepted);
    if (allowed.size > 0 && !allowed.has(session.backend)) {
      violation('fence', session.accepted, `${session.backend} took a client at ${seconds(session.accepted - start)} s, when etcd had named ${[...allowed].join(' or ')} (window from ${seconds(windowStart(session.accepted) - start)} s)`);
    }
  }
  // No session outlives its master's demotion by more than the window.
  for (let i = 1; i < changes.length; i++) {
    const demoted = changes[i - 1]!.master;
    const at = changes[i]!.t;
    if (changes[i]!.master === demoted) continue;
    let deadline = at;
    while (windowStart(deadline) <= at) deadline += ms(100);
    if (mastersBetween(deadline, deadline).has(demoted) || deadline > end) continue;
    for (const session of clientSessions) {
      if (session.backend !== demoted || session.accepted > at || (session.closed !== undefined && session.closed <= deadline)) continue;
      if (session.closed === undefined && end < deadline) continue;
      violation('fence-survivor', deadline, `a session to ${demoted} (from ${seconds(session.accepted - start)} s) was still open ${seconds(deadline - at)} s after etcd named ${changes[i]!.master} at ${seconds(at - start)} s`);
      break;
    }
  }
  // The fence's order, on the wire.
  if (source === 'wire') {
    for (const overlap of fenceOverlaps(connectionEvents.map((e) => ({ kind: e.type, at: e.t, backend: e.backend, id: e.id })))) {
      violation('fence-order', overlap.at, `${overlap.accepted} took a client while a session to ${overlap.stillOpen} stayed open ${(Number(overlap.overlapNs) / 1e6).toFixed(3)} ms longer`);
    }
  }

  // Convergence in each quiet period.
  const probes = events.filter((e): e is Extract<SoakEvent, { type: 'probe' }> => e.type === 'probe');
  let quietStart: bigint | undefined;
  let quiets = 0;
  for (const event of events) {
    if (event.type === 'quiet-start') quietStart = event.t;
    if (event.type !== 'quiet-end' || quietStart === undefined) continue;
    quiets++;
    const expected = masterAt(quietStart);
    const due = quietStart + ms(settings.convergeMs);
    const late = probes.filter((p) => p.t >= due && p.t <= event.t);
    const wrong = late.filter((p) => p.answered !== expected);
    if (expected !== undefined && (late.length === 0 || wrong.length > 0)) {
      violation('convergence', wrong[0]?.t ?? due, `${settings.convergeMs} ms into a quiet period, new connections reached ${[...new Set(late.map((p) => p.answered || 'nobody'))].join(', ') || 'nothing (no probe)'}, etcd names ${expected}`);
    }
    quietStart = undefined;
  }

  // Liveness (up to the end of the run: then the soak stops everything itself).
  const stopped = events.find((e) => e.type === 'end')?.t ?? end;
  for (const exit of events.filter((e): e is Extract<SoakEvent, { type: 'ambassador-exit' }> => e.type === 'ambassador-exit' && e.t < stopped)) {
    if (overlapping(exit.t - ms(15_000), exit.t, EXITING).length === 0) violation('liveness', exit.t, `ambassador ${exit.pid} exited (${exit.code ?? exit.signal}) with no fault to make it: ${exit.reason}`);
  }
  let unanswered: bigint | undefined;
  for (const sample of events.filter((e): e is Extract<SoakEvent, { type: 'healthz' }> => e.type === 'healthz')) {
    if (sample.status !== 0) {
      unanswered = undefined;
      continue;
    }
    unanswered ??= sample.t;
    if (sample.t - unanswered > ms(10_000) && overlapping(unanswered, sample.t, BLINDING).length === 0) {
      violation('liveness', sample.t, `/healthz did not answer for ${seconds(sample.t - unanswered)} s with no fault to explain it`);
      unanswered = undefined;
    }
  }
  let twoBefore = false;
  for (const sample of events.filter((e): e is Extract<SoakEvent, { type: 'haproxy-masters' }> => e.type === 'haproxy-masters')) {
    if (sample.count > 1 && twoBefore) violation('one-haproxy', sample.t, `${sample.count} haproxy masters in two samples in a row`);
    twoBefore = sample.count > 1;
  }
  const prefixWrites = events.filter((e): e is Extract<SoakEvent, { type: 'write' | 'churn' }> => e.type === 'write' || e.type === 'churn');
  for (const sample of events.filter((e): e is Extract<SoakEvent, { type: 'healthz' }> => e.type === 'healthz')) {
    const revision = /^ok: revision (\d+)/.exec(sample.body)?.[1];
    if (sample.status !== 200 || revision === undefined) continue;
    const missed = prefixWrites.filter((w) => w.t < sample.t - ms(settings.maxStaleMs) && w.revision > BigInt(revision));
    if (missed.length > 0) violation('stale-ok', sample.t, `/healthz said "${sample.body.trim()}" although revision ${missed.at(-1)!.revision} was written ${seconds(sample.t - missed.at(-1)!.t)} s before`);
  }

  // Coverage.
  const faultKinds = Object.fromEntries(FAULT_KINDS.map((kind) => [kind, events.filter((e) => e.type === 'fault-start' && e.kind === kind).length]));
  for (const [kind, count] of Object.entries(faultKinds)) if (count === 0) violation('coverage', undefined, `no ${kind} fault happened`);
  const changesDuringFaults = changes.filter((c) => activeAt(c.t).length > 0).length;
  const faultCount = events.filter((e) => e.type === 'fault-start').length;
  if (changesDuringFaults < faultCount) violation('coverage', undefined, `only ${changesDuringFaults} master changes while faults were on, for ${faultCount} faults`);
  if (clientSessions.length < 100) violation('coverage', undefined, `only ${clientSessions.length} client sessions`);
  if (quiets === 0) violation('coverage', undefined, 'no quiet period to check convergence in');

  return {
    violations,
    faultKinds,
    counts: {
      seconds: Math.round(Number(end - start) / 1e9),
      masterChanges: changes.length,
      masterChangesDuringFaults: changesDuringFaults,
      unknownWrites: events.filter((e) => e.type === 'write-unknown').length,
      faults: faultCount,
      quietPeriods: quiets,
      clientSessions: clientSessions.length,
      probes: probes.length,
      healthzSamples: events.filter((e) => e.type === 'healthz').length,
      ambassadorExits: events.filter((e) => e.type === 'ambassador-exit').length,
    },
  };
}
