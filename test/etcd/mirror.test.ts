// The mirror's rules: what a watch response, a read of the routing keys and a listing of the prefix say of it.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { applyEvents, compareKeys, compareListing, mirrorOf, progressOrdered, type KeyState, type Mirror, type WatchEvent } from '../../lib/etcd/mirror.ts';

const put = (key: string, value: string, modRevision: number): WatchEvent => ({ type: 'put', key, value, modRevision: BigInt(modRevision) });
const del = (key: string, modRevision: number): WatchEvent => ({ type: 'delete', key, value: '', modRevision: BigInt(modRevision) });
const state = (value: string, modRevision: number): KeyState => ({ value, modRevision: BigInt(modRevision) });
const mirror = (revision: number, entries: [string, string, number][]): Mirror => mirrorOf(new Map(entries.map(([key, value, rev]) => [key, state(value, rev)])), BigInt(revision));
const entries = (m: Mirror) => [...m.values].map(([key, value]) => [key, value, Number(m.revisions.get(key))]);

test('events newer than the revision held are applied in order, and move it', () => {
  const m = mirror(5, [['/p/a', '1', 3]]);
  assert.equal(applyEvents(m, [put('/p/a', '2', 6), put('/p/b', '3', 7)], 5n), { kind: 'applied', keys: ['/p/a', '/p/b'] });
  assert.equal(applyEvents(m, [del('/p/a', 8)], 5n), { kind: 'applied', keys: ['/p/a'] });
  assert.equal(entries(m), [['/p/b', '3', 7]]);
  assert.is(m.revision, 8n);
});

test("a revision's events come in one response: several at one revision are one step", () => {
  const m = mirror(5, []);
  assert.equal(applyEvents(m, [put('/p/a', '1', 6), put('/p/b', '2', 6), del('/p/a', 6)], 5n), { kind: 'applied', keys: ['/p/a', '/p/b', '/p/a'] });
  assert.equal(entries(m), [['/p/b', '2', 6]]);
});

test('a watch started at the revision held sends that revision again: known, skipped', () => {
  const m = mirror(9, [['/p/a', '1', 9]]);
  assert.equal(applyEvents(m, [put('/p/a', '1', 9), put('/p/a', '2', 10)], 9n), { kind: 'applied', keys: ['/p/a'] });
  assert.equal(entries(m), [['/p/a', '2', 10]]);
});

test('an event at or below the revision held breaks the order, and nothing of its response is applied', () => {
  const m = mirror(10, [['/p/master', 'a', 10]]);
  assert.equal(applyEvents(m, [put('/p/x', '1', 11), put('/p/master', 'b', 9)], 10n), { kind: 'out-of-order', key: '/p/master', revision: 9n, held: 11n });
  assert.equal(entries(m), [['/p/master', 'a', 10]], 'nothing applied');
  assert.equal(applyEvents(m, [put('/p/x', '1', 12)], 10n), { kind: 'applied', keys: ['/p/x'] });
  assert.equal(applyEvents(m, [put('/p/master', 'b', 11)], 10n), { kind: 'out-of-order', key: '/p/master', revision: 11n, held: 12n }, 'two responses swapped');
  assert.equal(applyEvents(m, [put('/p/master', 'b', 12)], 10n), { kind: 'out-of-order', key: '/p/master', revision: 12n, held: 12n }, 'a revision delivered twice');
  assert.equal(applyEvents(m, [put('/p/master', 'b', 10)], 10n), { kind: 'out-of-order', key: '/p/master', revision: 10n, held: 12n }, 'the start revision, once the watch has moved past it');
});

test('routing keys: the same as the mirror agrees; newer or deleted in etcd is pending; older than the revision held is missed', () => {
  const m = mirror(20, [['/p/master', 'a', 10], ['/p/instances/a/private_ip', '10.0.0.1', 5]]);
  const keys = ['/p/master', '/p/instances/a/private_ip', '/p/instances/a/port'];
  const read = (revision: number, found: [string, KeyState][]) => ({ revision: BigInt(revision), found: new Map(found) });
  const ip = ['/p/instances/a/private_ip', state('10.0.0.1', 5)] as [string, KeyState];
  assert.equal(compareKeys(m, read(25, [['/p/master', state('a', 10)], ip]), keys, 20n), { kind: 'agrees' });
  assert.equal(compareKeys(m, read(25, [['/p/master', state('b', 22)], ip]), keys, 20n), { kind: 'pending', key: '/p/master' }, 'written after revision 20');
  assert.equal(compareKeys(m, read(25, [ip]), keys, 20n), { kind: 'pending', key: '/p/master' }, 'deleted by 25, the mirror at 20: on its way');
  assert.equal(compareKeys(m, read(25, [['/p/master', state('b', 15)], ip]), keys, 20n), { kind: 'missed', key: '/p/master', etcd: 15n, mirror: 10n }, 'written at 15, the mirror holds up to 20');
  assert.equal(compareKeys(m, read(25, [['/p/master', state('a', 10)], ip, ['/p/instances/a/port', state('5433', 18)]]), keys, 20n), { kind: 'missed', key: '/p/instances/a/port', etcd: 18n, mirror: undefined });
  assert.equal(compareKeys(m, read(25, [['/p/master', state('z', 10)], ip]), keys, 20n), { kind: 'missed', key: '/p/master', etcd: 10n, mirror: 10n }, 'the same revision, another value');
  assert.equal(compareKeys(m, read(19, [['/p/master', state('a', 10)], ip]), keys, 20n), { kind: 'etcd-behind', revision: 19n });
  assert.equal(compareKeys(m, read(19, [['/p/master', state('a', 10)], ip]), keys, 18n), { kind: 'agrees' }, 'the mirror moved past the read while it was on its way');
});

test('a routing key the mirror changed after the read was made is no evidence either way', () => {
  const m = mirror(30, [['/p/master', 'c', 28]]);
  const read = (found: [string, KeyState][]) => ({ revision: 25n, found: new Map(found) });
  assert.equal(compareKeys(m, read([['/p/master', state('b', 24)]]), ['/p/master'], 20n), { kind: 'agrees' }, 'put at 28, after the read at 25');
  applyEvents(m, [del('/p/master', 31)], 30n);
  assert.equal(compareKeys(m, read([['/p/master', state('b', 24)]]), ['/p/master'], 20n), { kind: 'agrees' }, 'deleted at 31, after the read at 25');
  assert.equal(compareKeys(m, { revision: 32n, found: new Map([['/p/master', state('b', 24)]]) }, ['/p/master'], 31n), { kind: 'missed', key: '/p/master', etcd: 24n, mirror: undefined }, 'a read after the delete');
});

test('a listing of the prefix: keys missing on either side, or at another revision, differ', () => {
  const m = mirror(20, [['/p/a', '1', 3], ['/p/b', '2', 4]]);
  assert.equal(compareListing(m, new Map([['/p/a', 3n], ['/p/b', 4n]])), { kind: 'agrees' });
  assert.equal(compareListing(m, new Map([['/p/a', 3n], ['/p/b', 7n], ['/p/c', 8n]])), { kind: 'differs', keys: 2, example: '/p/b' });
  assert.equal(compareListing(m, new Map([['/p/a', 3n]])), { kind: 'differs', keys: 1, example: '/p/b' });
});

test('progress replies are ordered with events from etcd 3.4.25 and 3.5.8', () => {
  for (const version of ['3.4.23', '3.4.24', '3.5.0', '3.5.7', 'unknown', '']) assert.not.ok(progressOrdered(version), version);
  for (const version of ['3.4.25', '3.4.37', '3.5.8', '3.5.16', '3.5.30', '3.6.0', '4.0.0']) assert.ok(progressOrdered(version), version);
});

test.run();
