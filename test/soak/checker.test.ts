// The soak's checker can fail: recorded histories with a planted violation each, and a clean one.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { check, DEFAULT_CHECK } from '../../soak/checker.ts';
import { readHistory, type SoakEvent } from '../../soak/history.ts';
import { FAULT_KINDS, scheduledKinds, type Schedule } from '../../soak/schedule.ts';

const s = (seconds: number) => BigInt(Math.round(seconds * 1e9));

// A client's session on the wire to `backend`: accepted at `from`, its first bytes a millisecond later, closed at `to`.
const wireSession = (backend: string, id: number, from: number, to: number): SoakEvent[] => [
  { type: 'accept', t: s(from), source: 'wire', backend, id },
  { type: 'session', t: s(from + 0.001), source: 'wire', backend, id },
  { type: 'close', t: s(to), source: 'wire', backend, id },
];

// A clean history: master a, then b at 10 s; sessions on the wire that follow it; every fault kind once, far
// from the change; a quiet period at the end where everything reaches b; /healthz current.
function clean(): SoakEvent[] {
  const events: SoakEvent[] = [
    { type: 'ambassador-start', t: s(0), pid: 42 },
    { type: 'write', t: s(0), sent: s(0), master: 'a', revision: 5n },
    { type: 'write', t: s(10), sent: s(9.99), master: 'b', revision: 9n },
  ];
  // A fault every 2 s from 20 s on, each held 1 s, with a master change inside each.
  let revision = 10n;
  for (const [i, kind] of FAULT_KINDS.entries()) {
    const at = 20 + i * 2;
    events.push({ type: 'fault-start', t: s(at), id: i + 1, kind }, { type: 'fault-end', t: s(at + 1), id: i + 1 });
    events.push({ type: 'write', t: s(at + 0.5), sent: s(at + 0.5), master: i % 2 === 0 ? 'a' : 'b', revision: revision++ });
  }
  const last = (FAULT_KINDS.length - 1) % 2 === 0 ? 'a' : 'b';
  const lastChange = 20 + (FAULT_KINDS.length - 1) * 2 + 0.5;
  // Sessions: one per 100 ms, on whoever etcd named 100 ms before (well inside the window).
  let id = 0;
  const masterAt = (t: number) => {
    let master = 'a';
    for (const e of events) if (e.type === 'write' && e.t <= s(t)) master = e.master;
    return master;
  };
  for (let t = 0.2; t < lastChange + 13; t += 0.1) {
    const backend = masterAt(t - 0.1);
    events.push(...wireSession(backend, ++id, t, t + 0.05));
  }
  events.push({ type: 'quiet-start', t: s(lastChange + 5) });
  for (let t = lastChange + 5; t < lastChange + 13; t += 0.2) {
    events.push({ type: 'probe', t: s(t), answered: last }, { type: 'healthz', t: s(t), status: 200, body: `ok: revision ${revision - 1n}, 1 server(s) routed` });
  }
  events.push({ type: 'quiet-end', t: s(lastChange + 13) });
  return events;
}

const invariants = (events: SoakEvent[]) => check(events).violations.map((v) => v.invariant);
// When the clean history's quiet period is over (its last fault, plus 13 s).
const CLEAN_END = 20 + (FAULT_KINDS.length - 1) * 2 + 0.5 + 13;

test('a clean history passes', () => {
  const verdict = check(clean());
  assert.equal(verdict.violations, [], JSON.stringify(verdict.violations.slice(0, 2), (_, v) => (typeof v === 'bigint' ? String(v) : v)));
  assert.ok(verdict.counts.clientSessions! > 100);
});

test('catches a late accept: the demoted master takes a client past the window', () => {
  const events = clean();
  events.push(...wireSession('a', 9001, 12, 12.01));
  assert.ok(invariants(events).includes('fence'));
});

test('a late accept inside the window, or while ambassador was paused, is no violation', () => {
  const inside = clean();
  inside.push(...wireSession('a', 9001, 10.5, 10.51));
  assert.not.ok(invariants(inside).includes('fence'));
  const paused = clean();
  paused.push({ type: 'fault-start', t: s(9), id: 99, kind: 'pause-ambassador' }, { type: 'fault-end', t: s(13), id: 99 });
  paused.push(...wireSession('a', 9001, 12, 12.01));
  assert.not.ok(invariants(paused).includes('fence'));
});

test('catches a session to a demoted master that survives the window', () => {
  const events = clean();
  events.push(...wireSession('a', 9001, 9, 13));
  assert.ok(invariants(events).includes('fence-survivor'));
});

test('catches an overlap on the wire: the new master takes a client before the old one\'s last session closed', () => {
  const events = clean();
  events.push(...wireSession('a', 9001, 9.9, 10.25));
  assert.ok(invariants(events).includes('fence-order'));
});

test('a write of unknown outcome counts as made at any moment until the read that settled it', () => {
  const events = clean().filter((e) => !(e.type === 'write' && e.master === 'b' && e.t === s(10)));
  events.push({ type: 'write-unknown', t: s(11), sent: s(9.99), master: 'b' }, { type: 'read', t: s(11.5), master: 'b', modRevision: 9n, revision: 9n });
  assert.not.ok(invariants(events).includes('fence'), 'a and b both allowed while it was unknown');
});

test('an acknowledged write counts as made from its sending: the new master may take a client before the writer hears back', () => {
  // The write that names b is slow (a paused leader, say): sent at 8.5 s, answered at 10 s.
  const slow = () => clean().map((e) => (e.type === 'write' && e.master === 'b' && e.t === s(10) ? { ...e, sent: s(8.5) } : e));
  const b = (t: number) => [
    { type: 'accept', t: s(t), source: 'backend', backend: 'b', id: 9001 },
    { type: 'session', t: s(t + 0.001), source: 'backend', backend: 'b', id: 9001 },
    { type: 'close', t: s(t + 0.01), source: 'backend', backend: 'b', id: 9001 },
  ] as SoakEvent[];
  // The backends' record, so that the wire's order (its own invariant) does not come into it.
  const fromBackends = (events: SoakEvent[]) => events.map((e) => (e.type === 'accept' || e.type === 'session' || e.type === 'close' ? { ...e, source: 'backend' as const } : e));
  assert.not.ok(invariants(fromBackends([...slow(), ...b(9.2)])).includes('fence'), 'b, between the sending and the answer');
  assert.ok(invariants(fromBackends([...slow(), ...b(8.3)])).includes('fence'), 'b, before the write was sent');
});

test('a write of unknown outcome that the writer\'s settling write shows was never made allows nothing', () => {
  // b is lost; the writer then writes a (the master it knows) on the same condition, and that is acknowledged.
  const events = [
    ...clean().filter((e) => !(e.type === 'write' && e.master === 'b' && e.t === s(10))),
    { type: 'write-unknown', t: s(10), sent: s(9.99), master: 'b' } as SoakEvent,
    { type: 'write', t: s(10.05), sent: s(10.01), master: 'a', revision: 9n } as SoakEvent,
  ];
  assert.ok(invariants(events).includes('fence'), 'the sessions on b after 10 s');
});

test('the run of seed 32739 that the checker once failed: a slow write\'s new master, taken before its answer, is no violation', () => {
  const dir = join(import.meta.dirname, '../../soak/regressions/seed32739-5m');
  const schedule = JSON.parse(readFileSync(join(dir, 'schedule.json'), 'utf8')) as Schedule;
  const verdict = check(readHistory(join(dir, 'history.jsonl.gz')), DEFAULT_CHECK, scheduledKinds(schedule));
  assert.equal(verdict.violations.map((v) => v.message), []);
  assert.ok(verdict.counts.clientSessions! > 2000);
});

test('catches a new connection closed without an answer while a master was settled, and one answered by a master long replaced', () => {
  const refused = clean();
  refused.push({ type: 'probe', t: s(14), sent: s(13.5), answered: '' });
  assert.equal(invariants(refused), ['hold']);
  const misrouted = clean();
  misrouted.push({ type: 'probe', t: s(15), sent: s(14.9), answered: 'a' });
  assert.equal(invariants(misrouted), ['hold']);
});

test('a connection held through a failover and answered by the new master, or closed while ambassador was killed, is no violation', () => {
  const held = clean();
  held.push({ type: 'probe', t: s(10.3), sent: s(9.8), answered: 'b' });
  held.push({ type: 'probe', t: s(9.5), sent: s(9.4), answered: 'a' });
  assert.equal(invariants(held), []);
  const killed = clean();
  killed.push({ type: 'fault-start', t: s(14.2), id: 98, kind: 'kill-ambassador' }, { type: 'fault-end', t: s(15), id: 98 });
  killed.push({ type: 'probe', t: s(14.1), sent: s(14.0), answered: '' });
  assert.not.ok(invariants(killed).includes('hold'));
});

test('catches a stale "ok": /healthz current although a newer write is past --max-stale', () => {
  const events = clean();
  events.push({ type: 'healthz', t: s(30), status: 200, body: 'ok: revision 5, 1 server(s) routed' });
  assert.ok(invariants(events).includes('stale-ok'));
});

test('catches a lost final state: the quiet period never reaches the master etcd names', () => {
  const events = clean().map((e) => (e.type === 'probe' ? { ...e, answered: e.answered === 'a' ? 'b' : 'a' } : e));
  assert.ok(invariants(events).includes('convergence'));
});

test('catches an exit no fault made, /healthz that stops answering, and two haproxy masters', () => {
  const events = clean();
  events.push({ type: 'ambassador-exit', t: s(5), pid: 42, code: 1, signal: null, reason: 'internal error' });
  for (let t = CLEAN_END + 1; t < CLEAN_END + 13; t += 0.5) events.push({ type: 'healthz', t: s(t), status: 0, body: '' });
  events.push({ type: 'haproxy-masters', t: s(3), count: 2 }, { type: 'haproxy-masters', t: s(4), count: 2 });
  // Stopped by the soak itself at the end: no violation.
  events.push({ type: 'end', t: s(CLEAN_END + 30) }, { type: 'ambassador-exit', t: s(CLEAN_END + 30.5), pid: 43, code: 0, signal: null, reason: 'SIGTERM' });
  assert.equal(new Set(invariants(events)), new Set(['liveness', 'one-haproxy']));
  assert.is(invariants(events).filter((i) => i === 'liveness').length, 2);
});

test('catches a second ambassador that did not exit 1 on the same port or runtime dir', () => {
  const events = clean();
  events.push({ type: 'intruder', t: s(30), on: 'port', code: 1, reason: 'port taken' }, { type: 'intruder', t: s(31), on: 'runtime-dir', code: null, reason: '' });
  assert.equal(invariants(events), ['alone']);
});

test('catches a run that did not exercise what it claims', () => {
  const events = clean().filter((e) => !(e.type === 'fault-start' && e.kind === 'pause-leader'));
  assert.ok(check(events).violations.some((v) => v.invariant === 'coverage' && v.message.includes('pause-leader')));
});

test.run();
