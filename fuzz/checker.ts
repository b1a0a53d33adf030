// The fuzzer's checker: a run's history in, its violations out. Pure, so that it is held to histories with
// planted violations (test/fuzz/checker.test.ts) and can be run again on a stored history. One function per
// property:
// - alive: ambassador never exits while the fuzzer runs;
// - memory: its private memory stays within MAX_PRIVATE_MB (the bench's bound), sampled through every round;
// - routed: once a round settles, new connections reach what its state should route to (a backend, or none);
// - master: no client is answered by an instance that was not the master as written, allowing the master a
//   write names from the write's sending, and the one it replaces until FENCE_MS after the answer;
// - loop: the watch took one snapshot, at the start, and never a resync (nothing here asks for one);
// - health: /healthz tells the truth: 200 "ok" for a revision at least the round's last write's, or 503
//   "refused" while the state has more servers than the file limit allows.

export const MAX_PRIVATE_MB = 80;
export const FENCE_MS = 1_000;

export type FuzzEvent =
  // A write that may have changed what the master port routes to, and what it should route to after it.
  | { type: 'write'; sent: number; answered: number; expected: string }
  // A client's connection through the master port: who greeted it ('' for refused or closed).
  | { type: 'probe'; sent: number; answered: number; answer: string }
  | { type: 'memory'; t: number; privateMb: number }
  | { type: 'settled'; t: number; round: number; kind: string; expected: string; observed: string; overBound: boolean; revision: number; health: { status: number; body: string }; snapshots: number; resyncs: number }
  | { type: 'exit'; t: number; code: number | null; signal: string | null };

export interface FuzzViolation {
  property: 'alive' | 'memory' | 'routed' | 'master' | 'loop' | 'health';
  t: number;
  message: string;
}

export function checkFuzz(events: readonly FuzzEvent[]): FuzzViolation[] {
  return [...alive(events), ...memory(events), ...routed(events), ...masterOnly(events), ...loop(events), ...health(events)];
}

const of = <T extends FuzzEvent['type']>(events: readonly FuzzEvent[], type: T) => events.filter((event): event is Extract<FuzzEvent, { type: T }> => event.type === type);

function alive(events: readonly FuzzEvent[]): FuzzViolation[] {
  return of(events, 'exit').map((exit) => ({ property: 'alive', t: exit.t, message: `ambassador exited (code ${exit.code}, signal ${exit.signal})` }));
}

function memory(events: readonly FuzzEvent[]): FuzzViolation[] {
  const worst = of(events, 'memory').reduce<Extract<FuzzEvent, { type: 'memory' }> | undefined>((max, sample) => (max === undefined || sample.privateMb > max.privateMb ? sample : max), undefined);
  return worst !== undefined && worst.privateMb > MAX_PRIVATE_MB ? [{ property: 'memory', t: worst.t, message: `private memory ${worst.privateMb.toFixed(1)} MB, over ${MAX_PRIVATE_MB} MB` }] : [];
}

function routed(events: readonly FuzzEvent[]): FuzzViolation[] {
  return of(events, 'settled')
    .filter((settled) => settled.observed !== settled.expected)
    .map((settled) => ({ property: 'routed', t: settled.t, message: `round ${settled.round} (${settled.kind}): new connections answered by ${JSON.stringify(settled.observed)}, the state routes to ${JSON.stringify(settled.expected)}` }));
}

// When each backend could be the master: from the sending of a write that makes it the master, to the answer
// of the write that makes it no longer the master, plus FENCE_MS.
function masterTimes(writes: readonly Extract<FuzzEvent, { type: 'write' }>[]): Map<string, { from: number; to: number }[]> {
  const times = new Map<string, { from: number; to: number }[]>();
  let current: { name: string; from: number } | undefined;
  for (const write of [...writes].sort((a, b) => a.sent - b.sent)) {
    if (current !== undefined && current.name === write.expected) continue;
    if (current !== undefined) times.set(current.name, [...(times.get(current.name) ?? []), { from: current.from, to: write.answered + FENCE_MS }]);
    current = write.expected === '' ? undefined : { name: write.expected, from: write.sent };
  }
  if (current !== undefined) times.set(current.name, [...(times.get(current.name) ?? []), { from: current.from, to: Infinity }]);
  return times;
}

function masterOnly(events: readonly FuzzEvent[]): FuzzViolation[] {
  const times = masterTimes(of(events, 'write'));
  return of(events, 'probe')
    .filter((probe) => probe.answer !== '' && !(times.get(probe.answer) ?? []).some(({ from, to }) => from <= probe.answered && probe.sent <= to))
    .map((probe) => ({ property: 'master', t: probe.sent, message: `a client sent at ${probe.sent.toFixed(0)} ms was answered by ${probe.answer}, which was not the master then` }));
}

function loop(events: readonly FuzzEvent[]): FuzzViolation[] {
  const last = of(events, 'settled').at(-1);
  if (last === undefined || (last.snapshots <= 1 && last.resyncs === 0)) return [];
  return [{ property: 'loop', t: last.t, message: `${last.snapshots} snapshots and ${last.resyncs} resyncs: the watch distrusted what it holds` }];
}

function health(events: readonly FuzzEvent[]): FuzzViolation[] {
  return of(events, 'settled')
    .filter(({ overBound, health: { status, body }, revision }) => {
      if (overBound) return !(status === 503 && /refused/.test(body));
      const shown = Number(/^ok: revision (\d+)/.exec(body)?.[1] ?? -1);
      return status !== 200 || shown < revision;
    })
    .map((settled) => ({ property: 'health', t: settled.t, message: `round ${settled.round} (${settled.kind}${settled.overBound ? ', over the server bound' : ''}, revision ${settled.revision}): /healthz said ${settled.health.status} ${JSON.stringify(settled.health.body.trim())}` }));
}
