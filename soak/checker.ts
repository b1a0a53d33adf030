// The soak's checker: a recorded history in, a verdict out. Pure, so that it can be held to histories with
// planted violations (test/soak/checker.test.ts) and run again on a stored history.
//
// What it holds the history to:
// - the fence: no client session accepted by an instance later than the fence window after etcd (the
//   writer's acknowledged writes) stopped naming it master, and no session to it still open then; a write
//   whose outcome was unknown counts as made at any moment until the read that settled it. The window is
//   `fenceMs`, `degradedFenceMs` while a fault keeps ambassador from a member, and stretches over a time
//   ambassador could not act at all (cut off from every member, paused, killed) plus `recoverMs`;
// - the fence's order, on the wire: no client connected to one instance while a session that carried a
//   client's bytes to another was still open (a window of 0);
// - the hold: a new connection is never closed without an answer when, at its opening or its end, etcd had
//   named the same master for longer than the window (unless a fault that refuses connections whatever
//   ambassador does was on: haproxy or ambassador killed, the master's host gone); and it is answered only by
//   a master etcd named in its window;
// - convergence: by `convergeMs` into each quiet period, every new connection reaches the master etcd says,
//   to its end;
// - liveness: ambassador exits only as a fault made it, /healthz answers, never two haproxy masters in two
//   samples in a row, and /healthz never says "ok" for a state older than a prefix write acknowledged more
//   than `maxStaleMs` before;
// - alone: a second ambassador on the same port or runtime dir exits 1;
// - coverage: each fault kind happened, master changes happened while faults were on, and enough traffic.

import { fenceOverlaps } from '../harness/recorder.ts';
import type { SoakEvent } from './history.ts';
import { FAULT_KINDS } from './schedule.ts';

interface CheckSettings {
  fenceMs: number;
  degradedFenceMs: number;
  recoverMs: number;
  convergeMs: number;
  maxStaleMs: number;
}

export const DEFAULT_CHECK: CheckSettings = { fenceMs: 1_000, degradedFenceMs: 8_000, recoverMs: 8_000, convergeMs: 6_000, maxStaleMs: 5_000 };

interface Violation {
  invariant: 'fence' | 'fence-survivor' | 'fence-order' | 'hold' | 'convergence' | 'liveness' | 'stale-ok' | 'one-haproxy' | 'alone' | 'coverage';
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
// A runtime dir deleted is made again before the next change, at the cost of an haproxy reload; a full disk
// leaves only the config file behind.
const DEGRADING = new Set(['partition-member', 'partition-watched', 'pause-member', 'pause-leader', 'kill-member', 'kill-leader', 'replace-member', 'blackhole-watched', 'latency', 'write-burst', 'burst-during-leader-change', 'vanish-master', 'delete-runtime-dir', 'disk-full']);
// Faults during which ambassador cannot act at all: etcd cut off entirely, ambassador itself stopped, haproxy's
// sockets out of reach (a read-only runtime dir), no file descriptor to reach them with.
const BLINDING = new Set(['compact-disconnected', 'pause-ambassador', 'kill-ambassador', 'kill-haproxy-worker', 'kill-haproxy-master', 'oom-haproxy-worker', 'runtime-dir-read-only', 'file-limit']);
// Faults after which ambassador exits, by design or by force. haproxy's master re-executes itself after a start
// or a reload, and exits if the dir of its socket is gone at that instant; ambassador then exits 1.
const EXITING = new Set(['kill-ambassador', 'kill-haproxy-worker', 'kill-haproxy-master', 'oom-haproxy-worker', 'delete-runtime-dir']);
// Faults during which a new connection may be refused whatever ambassador does: haproxy stopped or killed (the
// supervisor starts it again), the master's host gone (routed to until its health check fails).
const REFUSING = new Set([...EXITING, 'vanish-master']);
const FAULT_RECORDED_WITHIN_MS = 2_000;

const ms = (n: number) => BigInt(n) * 1_000_000n;
const seconds = (ns: bigint) => (Number(ns) / 1e9).toFixed(3);

interface Interval {
  from: bigint;
  to: bigint;
  kind: string;
}

// The history, read once: events in time order, faults as intervals, the masters etcd named over time, the
// connections (the wire's record where there is one), and the fence's window at any moment.
interface Timeline {
  events: SoakEvent[];
  start: bigint;
  end: bigint;
  faults: Interval[];
  changes: { t: bigint; master: string }[];
  ambiguous: { from: bigint; to: bigint; master: string }[];
  source: 'wire' | 'backend';
  connections: Extract<SoakEvent, { type: 'accept' | 'session' | 'close' }>[];
  clientSessions: { backend: string; accepted: bigint; closed: bigint | undefined }[];
  settings: CheckSettings;
}

type Found = Omit<Violation, 'faults' | 'around'>;

export function check(unsorted: readonly SoakEvent[], settings: CheckSettings = DEFAULT_CHECK, kinds: readonly string[] = FAULT_KINDS): Verdict {
  const timeline = readTimeline(unsorted, settings);
  const found = [...fence(timeline), ...fenceSurvivors(timeline), ...fenceOrder(timeline), ...hold(timeline), ...convergence(timeline), ...liveness(timeline), ...staleOk(timeline), ...alone(timeline)];
  const { faultKinds, violations: uncovered } = coverage(timeline, kinds);
  return {
    violations: [...found, ...uncovered].map((violation) => ({ ...violation, faults: violation.at === undefined ? [] : activeAt(timeline, violation.at), around: around(timeline, violation.at) })),
    faultKinds,
    counts: counts(timeline),
  };
}

function readTimeline(unsorted: readonly SoakEvent[], settings: CheckSettings): Timeline {
  const events = [...unsorted].sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : 0));
  const end = events.at(-1)?.t ?? 0n;
  const faults: Interval[] = [];
  const open = new Map<number, { t: bigint; kind: string }>();
  for (const event of events) {
    if (event.type === 'fault-start') open.set(event.id, { t: event.t, kind: event.kind });
    if (event.type !== 'fault-end') continue;
    const started = open.get(event.id);
    if (started) faults.push({ from: started.t, to: event.t, kind: started.kind });
    open.delete(event.id);
  }
  for (const started of open.values()) faults.push({ from: started.t, to: end, kind: started.kind });
  const source = events.some((e) => (e.type === 'accept' || e.type === 'session' || e.type === 'close') && e.source === 'wire') ? 'wire' : 'backend';
  const connections = events.filter((e): e is Extract<SoakEvent, { type: 'accept' | 'session' | 'close' }> => (e.type === 'accept' || e.type === 'session' || e.type === 'close') && e.source === source);
  return { events, start: events[0]?.t ?? 0n, end, faults, ...mastersNamed(events), source, connections, clientSessions: clientSessionsOf(connections), settings };
}

// The master etcd named, over time. A write takes effect at some moment between its sending and its answer,
// so ambassador may act on it before the writer hears back: the master it names is allowed from the sending,
// and the one it replaces stays named until the answer. A write of unknown outcome is settled by the writer
// with a write of the master known then, on the same condition: if that one is acknowledged, the lost one was
// never made; if not, the read that follows shows whether it was, and it counts as made at any moment from
// its sending to that read.
function mastersNamed(events: readonly SoakEvent[]): Pick<Timeline, 'changes' | 'ambiguous'> {
  const changes: Timeline['changes'] = [];
  const ambiguous: Timeline['ambiguous'] = [];
  let pending: { sent: bigint; master: string }[] = [];
  for (const event of events) {
    if (event.type === 'write') {
      ambiguous.push({ from: event.sent, to: event.t, master: event.master });
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
  return { changes, ambiguous };
}

// Connections that carried a client's bytes.
function clientSessionsOf(connections: Timeline['connections']): Timeline['clientSessions'] {
  const sessions = new Map<number, { backend: string; accepted: bigint; closed: bigint | undefined; client: boolean }>();
  for (const event of connections) {
    if (event.type === 'accept') sessions.set(event.id, { backend: event.backend, accepted: event.t, closed: undefined, client: false });
    const session = sessions.get(event.id);
    if (!session) continue;
    if (event.type === 'session') session.client = true;
    if (event.type === 'close') session.closed ??= event.t;
  }
  return [...sessions.values()].filter((s) => s.client).map(({ backend, accepted, closed }) => ({ backend, accepted, closed }));
}

const activeAt = (timeline: Timeline, t: bigint) => timeline.faults.filter((f) => f.from <= t && t <= f.to).map((f) => f.kind);
const overlapping = (timeline: Timeline, from: bigint, to: bigint, kinds: Set<string>) => timeline.faults.filter((f) => kinds.has(f.kind) && f.from <= to && f.to >= from);

function around(timeline: Timeline, t: bigint | undefined): string[] {
  if (t === undefined) return [];
  return timeline.events
    .filter((e) => e.t >= t - ms(2000) && e.t <= t + ms(2000) && e.type !== 'healthz')
    .slice(0, 40)
    .map((e) => `${seconds(e.t - timeline.start)} ${JSON.stringify(e, (_, v) => (typeof v === 'bigint' ? String(v) : v))}`);
}

function masterAt(timeline: Timeline, t: bigint): string | undefined {
  let master: string | undefined;
  for (const change of timeline.changes) {
    if (change.t > t) break;
    master = change.master;
  }
  return master;
}

function mastersBetween(timeline: Timeline, from: bigint, to: bigint): Set<string> {
  const masters = new Set<string>();
  const first = masterAt(timeline, from);
  if (first !== undefined) masters.add(first);
  for (const change of timeline.changes) if (change.t > from && change.t <= to) masters.add(change.master);
  for (const window of timeline.ambiguous) if (window.from <= to && window.to >= from) masters.add(window.master);
  return masters;
}

// How far back a connection at `t` may still follow an older master: the window, stretched over every time
// ambassador could not act (and its recovery) that reaches into it.
function windowStart(timeline: Timeline, t: bigint): bigint {
  const { settings } = timeline;
  const degraded = overlapping(timeline, t - ms(settings.degradedFenceMs), t, DEGRADING).length > 0;
  let from = t - ms(degraded ? settings.degradedFenceMs : settings.fenceMs);
  for (let stretched = true; stretched; ) {
    stretched = false;
    for (const blind of overlapping(timeline, from - ms(settings.recoverMs), t, BLINDING)) {
      const reach = blind.from - ms(settings.degradedFenceMs);
      if (blind.to + ms(settings.recoverMs) >= from && reach < from) {
        from = reach;
        stretched = true;
      }
    }
  }
  return from;
}

// The fence: no client session accepted by an instance etcd no longer named, past the window.
function fence(timeline: Timeline): Found[] {
  const found: Found[] = [];
  for (const session of timeline.clientSessions) {
    const from = windowStart(timeline, session.accepted);
    const allowed = mastersBetween(timeline, from, session.accepted);
    if (allowed.size === 0 || allowed.has(session.backend)) continue;
    const message = `${session.backend} took a client at ${seconds(session.accepted - timeline.start)} s, when etcd had named ${[...allowed].join(' or ')} (window from ${seconds(from - timeline.start)} s)`;
    found.push({ invariant: 'fence', at: session.accepted, message });
  }
  return found;
}

// No session outlives its master's demotion by more than the window.
function fenceSurvivors(timeline: Timeline): Found[] {
  const { changes, end } = timeline;
  const found: Found[] = [];
  for (let i = 1; i < changes.length; i++) {
    const demoted = changes[i - 1]!.master;
    const at = changes[i]!.t;
    if (changes[i]!.master === demoted) continue;
    let deadline = at;
    while (windowStart(timeline, deadline) <= at) deadline += ms(100);
    if (mastersBetween(timeline, deadline, deadline).has(demoted) || deadline > end) continue;
    const survivor = timeline.clientSessions.find((s) => s.backend === demoted && s.accepted <= at && (s.closed === undefined ? end >= deadline : s.closed > deadline));
    if (survivor === undefined) continue;
    const message = `a session to ${demoted} (from ${seconds(survivor.accepted - timeline.start)} s) was still open ${seconds(deadline - at)} s after etcd named ${changes[i]!.master} at ${seconds(at - timeline.start)} s`;
    found.push({ invariant: 'fence-survivor', at: deadline, message });
  }
  return found;
}

// The fence's order, on the wire: no client connected to one instance while a session that carried a
// client's bytes to another was still open.
function fenceOrder(timeline: Timeline): Found[] {
  if (timeline.source !== 'wire') return [];
  return fenceOverlaps(timeline.connections.map((e) => ({ kind: e.type, at: e.t, backend: e.backend, id: e.id }))).map((overlap) => ({
    invariant: 'fence-order',
    at: overlap.at,
    message: `${overlap.accepted} took a client while a session to ${overlap.stillOpen} stayed open ${(Number(overlap.overlapNs) / 1e6).toFixed(3)} ms longer`,
  }));
}

// The hold, from the clients' side: refused only while no master was settled, answered only by a master.
function hold(timeline: Timeline): Found[] {
  const found: Found[] = [];
  const at = (t: bigint) => seconds(t - timeline.start);
  // The one master etcd named through the whole window before `t`, if one was.
  const settled = (t: bigint) => {
    const named = mastersBetween(timeline, windowStart(timeline, t), t);
    return named.size === 1 ? [...named][0] : undefined;
  };
  // Until ambassador has started and had time to route, nothing holds.
  const firstStart = timeline.events.find((e) => e.type === 'ambassador-start')?.t ?? timeline.end;
  for (const probe of timeline.events.filter((e): e is Extract<SoakEvent, { type: 'probe' }> => e.type === 'probe')) {
    const sent = probe.sent ?? probe.t;
    if (sent < firstStart + ms(timeline.settings.recoverMs)) continue;
    if (probe.answered !== '') {
      const allowed = mastersBetween(timeline, windowStart(timeline, sent), probe.t);
      if (allowed.size > 0 && !allowed.has(probe.answered)) {
        found.push({ invariant: 'hold', at: probe.t, message: `a connection opened at ${at(sent)} s was answered by ${probe.answered} at ${at(probe.t)} s, when etcd had named ${[...allowed].join(' or ')}` });
      }
      continue;
    }
    // A fault is recorded once made (an OOM kill, up to a second after the worker was moved into its cgroup).
    if (overlapping(timeline, sent - ms(timeline.settings.recoverMs), probe.t + ms(FAULT_RECORDED_WITHIN_MS), REFUSING).length > 0) continue;
    const moment = [sent, probe.t].find((t) => settled(t) !== undefined);
    if (moment === undefined) continue;
    found.push({ invariant: 'hold', at: probe.t, message: `a connection opened at ${at(sent)} s was closed without an answer at ${at(probe.t)} s, when etcd had named ${settled(moment)} through the window before ${at(moment)} s` });
  }
  return found;
}

// Convergence: by convergeMs into each quiet period, every new connection reaches the master etcd says.
function convergence(timeline: Timeline): Found[] {
  const probes = timeline.events.filter((e): e is Extract<SoakEvent, { type: 'probe' }> => e.type === 'probe');
  const found: Found[] = [];
  let quietStart: bigint | undefined;
  for (const event of timeline.events) {
    if (event.type === 'quiet-start') quietStart = event.t;
    if (event.type !== 'quiet-end' || quietStart === undefined) continue;
    const expected = masterAt(timeline, quietStart);
    const due = quietStart + ms(timeline.settings.convergeMs);
    const late = probes.filter((p) => p.t >= due && p.t <= event.t);
    const wrong = late.filter((p) => p.answered !== expected);
    if (expected !== undefined && (late.length === 0 || wrong.length > 0)) {
      const reached = [...new Set(late.map((p) => p.answered || 'nobody'))].join(', ') || 'nothing (no probe)';
      found.push({ invariant: 'convergence', at: wrong[0]?.t ?? due, message: `${timeline.settings.convergeMs} ms into a quiet period, new connections reached ${reached}, etcd names ${expected}` });
    }
    quietStart = undefined;
  }
  return found;
}

// Liveness, up to the end of the run (then the soak stops everything itself): ambassador exits only as a
// fault made it, /healthz answers, and never two haproxy masters in two samples in a row.
function liveness(timeline: Timeline): Found[] {
  const { events } = timeline;
  const found: Found[] = [];
  const stopped = events.find((e) => e.type === 'end')?.t ?? timeline.end;
  for (const exit of events.filter((e): e is Extract<SoakEvent, { type: 'ambassador-exit' }> => e.type === 'ambassador-exit' && e.t < stopped)) {
    if (overlapping(timeline, exit.t - ms(15_000), exit.t, EXITING).length === 0) found.push({ invariant: 'liveness', at: exit.t, message: `ambassador ${exit.pid} exited (${exit.code ?? exit.signal}) with no fault to make it: ${exit.reason}` });
  }
  let unanswered: bigint | undefined;
  for (const sample of events.filter((e): e is Extract<SoakEvent, { type: 'healthz' }> => e.type === 'healthz')) {
    if (sample.status !== 0) {
      unanswered = undefined;
      continue;
    }
    unanswered ??= sample.t;
    if (sample.t - unanswered > ms(10_000) && overlapping(timeline, unanswered, sample.t, BLINDING).length === 0) {
      found.push({ invariant: 'liveness', at: sample.t, message: `/healthz did not answer for ${seconds(sample.t - unanswered)} s with no fault to explain it` });
      unanswered = undefined;
    }
  }
  let twoBefore = false;
  for (const sample of events.filter((e): e is Extract<SoakEvent, { type: 'haproxy-masters' }> => e.type === 'haproxy-masters')) {
    if (sample.count > 1 && twoBefore) found.push({ invariant: 'one-haproxy', at: sample.t, message: `${sample.count} haproxy masters in two samples in a row` });
    twoBefore = sample.count > 1;
  }
  return found;
}

// A second ambassador on the same port or runtime dir exits 1, and so never shares either.
function alone(timeline: Timeline): Found[] {
  return timeline.events
    .filter((e): e is Extract<SoakEvent, { type: 'intruder' }> => e.type === 'intruder' && e.code !== 1)
    .map((intruder) => ({ invariant: 'alone', at: intruder.t, message: `a second ambassador on the same ${intruder.on} ${intruder.code === null ? 'did not exit' : `exited ${intruder.code}`}: ${intruder.reason}` }));
}

// /healthz never says "ok" for a state older than a prefix write acknowledged more than maxStaleMs before.
function staleOk(timeline: Timeline): Found[] {
  const writes = timeline.events.filter((e): e is Extract<SoakEvent, { type: 'write' | 'churn' }> => e.type === 'write' || e.type === 'churn');
  const found: Found[] = [];
  for (const sample of timeline.events.filter((e): e is Extract<SoakEvent, { type: 'healthz' }> => e.type === 'healthz')) {
    const revision = /^ok: revision (\d+)/.exec(sample.body)?.[1];
    if (sample.status !== 200 || revision === undefined) continue;
    const missed = writes.filter((w) => w.t < sample.t - ms(timeline.settings.maxStaleMs) && w.revision > BigInt(revision));
    if (missed.length > 0) found.push({ invariant: 'stale-ok', at: sample.t, message: `/healthz said "${sample.body.trim()}" although revision ${missed.at(-1)!.revision} was written ${seconds(sample.t - missed.at(-1)!.t)} s before` });
  }
  return found;
}

// Coverage: each fault kind scheduled happened, master changes happened while faults were on, and enough traffic.
function coverage(timeline: Timeline, kinds: readonly string[]): { faultKinds: Record<string, number>; violations: Found[] } {
  const { events } = timeline;
  const faultKinds = Object.fromEntries(kinds.map((kind) => [kind, events.filter((e) => e.type === 'fault-start' && e.kind === kind).length]));
  const violations: Found[] = [];
  const uncovered = (message: string) => violations.push({ invariant: 'coverage', at: undefined, message });
  for (const [kind, count] of Object.entries(faultKinds)) if (count === 0) uncovered(`no ${kind} fault happened`);
  const changesDuringFaults = timeline.changes.filter((c) => activeAt(timeline, c.t).length > 0).length;
  const faultCount = events.filter((e) => e.type === 'fault-start').length;
  if (changesDuringFaults < faultCount) uncovered(`only ${changesDuringFaults} master changes while faults were on, for ${faultCount} faults`);
  if (timeline.clientSessions.length < 100) uncovered(`only ${timeline.clientSessions.length} client sessions`);
  if (!events.some((e) => e.type === 'quiet-end')) uncovered('no quiet period to check convergence in');
  return { faultKinds, violations };
}

function counts(timeline: Timeline): Record<string, number> {
  const { events } = timeline;
  const count = (type: SoakEvent['type']) => events.filter((e) => e.type === type).length;
  return {
    seconds: Math.round(Number(timeline.end - timeline.start) / 1e9),
    masterChanges: timeline.changes.length,
    masterChangesDuringFaults: timeline.changes.filter((c) => activeAt(timeline, c.t).length > 0).length,
    unknownWrites: count('write-unknown'),
    faults: count('fault-start'),
    quietPeriods: count('quiet-end'),
    clientSessions: timeline.clientSessions.length,
    probes: count('probe'),
    healthzSamples: count('healthz'),
    ambassadorExits: count('ambassador-exit'),
  };
}
