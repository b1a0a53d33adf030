// The fuzzer's checker, held to histories with planted violations: each property finds what it is about, and a
// clean history is clean.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { checkFuzz, FENCE_MS, type FuzzEvent } from '../../fuzz/checker.ts';
import { applyOp, emptyModel, expectedAnswer, makePlan, PREFIX } from '../../fuzz/generate.ts';

const settled = (over: Partial<Extract<FuzzEvent, { type: 'settled' }>> = {}): FuzzEvent => ({
  type: 'settled', t: 1000, round: 1, kind: 'master', expected: 'a', observed: 'a', overBound: false, revision: 10, health: { status: 200, body: 'ok: revision 12, 1 server(s) routed' }, snapshots: 1, resyncs: 0, ...over,
});
const clean: FuzzEvent[] = [
  { type: 'write', sent: 0, answered: 5, expected: 'a' },
  { type: 'probe', sent: 10, answered: 12, answer: 'a' },
  { type: 'write', sent: 100, answered: 105, expected: 'b' },
  // The old master, in the instant between the write and its fence: allowed.
  { type: 'probe', sent: 104, answered: 106, answer: 'a' },
  { type: 'probe', sent: 110, answered: 112, answer: 'b' },
  { type: 'memory', t: 50, privateMb: 60 },
  settled({ expected: 'b', observed: 'b' }),
];

test('a clean history has no violation', () => {
  assert.equal(checkFuzz(clean), []);
});

test('each planted violation is found by its property', () => {
  const found = (events: FuzzEvent[]) => checkFuzz(events).map((v) => v.property);
  assert.equal(found([...clean, { type: 'exit', t: 2000, code: null, signal: 'SIGABRT' }]), ['alive']);
  assert.equal(found([...clean, { type: 'memory', t: 60, privateMb: 81 }]), ['memory']);
  assert.equal(found([...clean, settled({ expected: 'b', observed: '' })]), ['routed']);
  assert.equal(found([...clean, { type: 'probe', sent: 106 + FENCE_MS, answered: 107 + FENCE_MS, answer: 'a' }]), ['master']);
  assert.equal(found([...clean, { type: 'probe', sent: 20, answered: 21, answer: 'c' }]), ['master']);
  assert.equal(found([...clean, settled({ snapshots: 40, resyncs: 39 })]), ['loop']);
  assert.equal(found([...clean, settled({ revision: 13 })]), ['health'], 'an ok for an older revision');
  assert.equal(found([...clean, settled({ overBound: true })]), ['health'], 'ok while the state is refused');
  assert.equal(found([...clean, settled({ overBound: true, health: { status: 503, body: 'haproxy refused the config for the newest etcd state' } })]), []);
});

test('the oracle: a master routes to the backend its address names, if every part of it is taken', () => {
  const model = emptyModel();
  const meanings = new Map([[Buffer.from('127.0.0.42').toString('hex'), { valid: true as const, answers: 'b' as const }]]);
  const put = (key: string | Buffer, value: string | Buffer) => applyOp(model, { kind: 'put', key: Buffer.concat([Buffer.from(`${PREFIX}/`), Buffer.from(key)]), value: Buffer.from(value) }, meanings, new Map([[Buffer.from('5432').toString('hex'), true]]));
  put('instances/x/private_ip', '127.0.0.42');
  put('master', ' x\n');
  assert.is(expectedAnswer(model), 'b');
  put('instances/x/port', '0');
  assert.is(expectedAnswer(model), '', 'a refused port');
  put('instances/x/port', '5432');
  put('master', Buffer.from([0x78, 0xff]));
  assert.is(expectedAnswer(model), '', 'a master that is not UTF-8');
  applyOp(model, { kind: 'delete-prefix' }, meanings, new Map());
  assert.is(expectedAnswer(model), '');
});

test('a plan is the same for the same seed, and deals every kind of round', () => {
  const kinds = (seed: number) => makePlan(seed, 20, 5432, 3000).rounds.map((round) => round.kind);
  assert.equal(kinds(7), kinds(7));
  assert.equal(new Set(kinds(7)).size, 7);
});

test.run();
