// The replica port under Patroni's layout, chosen as Patroni's REST checks answer (--replicas), held steady.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { replicaSelection, Refusal, type ReplicaSelection } from '../../lib/options/kinds.ts';
import { readCluster, selectPatroni, type PatroniSettings } from '../../lib/service/patroni.ts';
import type { ReplicaMemory } from '../../lib/service/replicas.ts';
import { patroniMember } from '../../harness/patroni-keys.ts';

const P = '/service/demo';
const member = (name: string, over: Record<string, unknown> = {}) => patroniMember(`127.0.0.3${name.slice(-1)}`, 5432, over);
const selection = (spec: string) => {
  const read = replicaSelection.read(spec);
  if (read instanceof Refusal) throw new Error(read.message);
  return read;
};
const settings = (spec: string, fallback = false): PatroniSettings => ({ prefix: P, masterOnly: true, replicas: true, selection: selection(spec), fallback });

// A leader pg1 and replicas pg2, pg3 (pg2 the synchronous standby, or both quorum voters), Patroni 4.1's keys.
function cluster(over: Record<string, string> = {}, mode: 'off' | 'on' | 'quorum' = 'on') {
  const keys: Record<string, string> = {
    leader: 'pg1',
    status: '{"optime":100000000}',
    config: JSON.stringify({ ttl: 10, synchronous_mode: mode === 'on' ? true : mode === 'quorum' ? 'quorum' : false }),
    sync: JSON.stringify({ leader: 'pg1', quorum: mode === 'quorum' ? 1 : 0, sync_standby: mode === 'quorum' ? 'pg2,pg3' : 'pg2' }),
    'members/pg1': member('pg1', { role: 'primary', version: '4.1.5', replay_lsn: 100000000 }),
    'members/pg2': member('pg2', { version: '4.1.5', replication_state: 'streaming', replay_lsn: 100000000, tags: { zone: 'a' } }),
    'members/pg3': member('pg3', { version: '4.1.5', replication_state: 'streaming', replay_lsn: 100000000, tags: { zone: 'b' } }),
    ...over,
  };
  return readCluster(new Map(Object.entries(keys).map(([key, value]) => [`${P}/${key}`, value])), P);
}
const routed = (spec: string, read = cluster(), fallback = false) =>
  selectPatroni(read, settings(spec, fallback))
    .selection.replicas!.filter((server) => server.enabled)
    .map((server) => server.name);

test('--replicas reads Patroni\'s endpoints and parameters, and refuses what Patroni would not take', () => {
  assert.equal(selection('/replica?lag=16MB&replication_state=streaming&tag_zone=a'), { endpoint: 'replica', lag: 16 << 20, replicationState: 'streaming', tags: [['zone', 'a']] } satisfies ReplicaSelection);
  assert.is(selection('/synchronous').endpoint, 'sync');
  for (const bad of ['replica', '/primary', '/replica?lag=lots', '/replica?weight=3', '/replica?tag_=x']) assert.ok(replicaSelection.read(bad) instanceof Refusal, bad);
});

test('each endpoint routes what Patroni\'s own check would answer 200 for', () => {
  assert.equal(routed('/replica'), ['pg2', 'pg3']);
  assert.equal(routed('/sync'), ['pg2'], 'the synchronous standby');
  assert.equal(routed('/async'), ['pg3']);
  assert.equal(routed('/quorum'), [], 'not quorum mode');
  assert.equal(routed('/quorum', cluster({}, 'quorum')), ['pg2', 'pg3'], 'the voters of ANY 1');
  assert.equal(routed('/sync', cluster({}, 'quorum')), [], 'Patroni answers 503 to /sync in quorum mode');
  assert.equal(routed('/read-only'), ['pg1', 'pg2', 'pg3']);
  assert.equal(routed('/read-only-sync'), ['pg1', 'pg2']);
  assert.equal(routed('/read-only-sync', cluster({}, 'quorum')), ['pg1'], 'a quorum voter is not a synchronous standby to /read-only-sync (Patroni 4.0.7 answers 503)');
  assert.equal(routed('/sync', cluster({ sync: '{"leader":"pg3","sync_standby":"pg2"}' })), [], 'a /sync key written for another leader says nothing');
  assert.equal(routed('/sync', cluster({}, 'off')), [], 'not synchronous mode');
});

test('tags, replication state and timeline, as Patroni reads them; noloadbalance is any truthy value', () => {
  assert.equal(routed('/replica?tag_zone=b'), ['pg3']);
  assert.equal(routed('/replica?tag_zone=B&tag_rack=1'), []);
  const archive = cluster({ 'members/pg3': member('pg3', { replication_state: 'in archive recovery', replay_lsn: 100000000 }) });
  assert.equal(routed('/replica?replication_state=streaming', archive), ['pg2']);
  const otherTimeline = cluster({ 'members/pg3': member('pg3', { timeline: 2, replication_state: 'streaming', replay_lsn: 100000000 }) });
  assert.equal(routed('/replica', otherTimeline), ['pg2']);
  for (const value of [true, 'false', 1, 'yes']) assert.equal(routed('/replica', cluster({ 'members/pg3': member('pg3', { tags: { noloadbalance: value } }) })), ['pg2'], JSON.stringify(value));
  for (const value of [false, 0, '', null]) assert.equal(routed('/replica', cluster({ 'members/pg3': member('pg3', { tags: { noloadbalance: value } }) })), ['pg2', 'pg3'], JSON.stringify(value));
});

test('a member that does not write what --replicas asks about (an older Patroni) is left out and said, not guessed', () => {
  const old = cluster({ 'members/pg3': member('pg3', { replay_lsn: 100000000 }) });
  assert.equal(routed('/replica?replication_state=streaming', old), ['pg2']);
  const notices = selectPatroni(old, settings('/replica?replication_state=streaming')).selection.problems.filter((p) => p.notice);
  assert.equal(notices.map((p) => p.reason), ['writes no replication_state (Patroni before 3.0.4): left out, as --replicas asks for replication_state=streaming']);
});

test('replay lag from replay_lsn, held steady: out after two readings over the bound, back at one of half of it', () => {
  const settled = settings('/replica?lag=1MB');
  let memory: ReplicaMemory = new Map();
  const step = (optime: number, replayed: number) => {
    const chosen = selectPatroni(cluster({ status: `{"optime":${Math.round(optime)}}`, 'members/pg3': member('pg3', { replication_state: 'streaming', replay_lsn: Math.round(replayed) }) }), settled, memory);
    memory = chosen.memory;
    return chosen.selection.replicas!.filter((s) => s.enabled).map((s) => s.name).includes('pg3');
  };
  const MB = 1 << 20;
  assert.is(step(10 * MB, 10 * MB), true);
  assert.is(step(12 * MB, 10 * MB), true, 'one reading over: stays');
  assert.is(step(11 * MB, 10.5 * MB), true, 'back under: the count starts again');
  assert.is(step(13 * MB, 10.5 * MB), true);
  assert.is(step(14 * MB, 10.5 * MB), false, 'two readings over in a row: out');
  assert.is(step(14 * MB, 10.5 * MB), false, 'the same reading again counts once');
  assert.is(step(14 * MB, 13.2 * MB), false, 'under the bound but over half of it: still out');
  assert.is(step(14 * MB, 13.6 * MB), true, 'a reading at half or less: back');
  assert.is(step(15.1 * MB, 13.8 * MB), true, 'over the bound once: stays');
  assert.is(step(14.5 * MB, 13.8 * MB), true, 'under it: the count starts again');
});

test('replay lag as Patroni judges it: a replica read ahead of the optime is not lagging, nor is any before the leader writes /status; a replica out is said in the same words at each reading', () => {
  const lagging = (over: Record<string, string>) => selectPatroni(cluster(over), settings('/replica?lag=1MB'));
  const ahead = lagging({ status: '{"optime":50000000}' });
  assert.equal(routed('/replica?lag=1MB', cluster({ status: '{"optime":50000000}' })), ['pg2', 'pg3'], 'replay_lsn past the optime: sampled at another moment');
  assert.not.ok(ahead.selection.problems.some((problem) => /behind/.test(problem.reason)));
  const unwritten = lagging({ status: '' });
  assert.equal(unwritten.selection.replicas!.filter((s) => s.enabled).map((s) => s.name), ['pg2', 'pg3']);
  assert.equal(unwritten.selection.problems.filter((problem) => /not judged/.test(problem.reason)).length, 1, 'said once');
  let memory: ReplicaMemory = new Map();
  const reasons = [60, 70, 80, 90].map((behind) => {
    const chosen = selectPatroni(cluster({ status: `{"optime":${100000000 + behind * 1000000}}` }), settings('/replica?lag=1MB'), memory);
    memory = chosen.memory;
    return chosen.selection.problems.filter((problem) => problem.key.endsWith('/pg2')).map((problem) => problem.reason).join();
  });
  assert.ok(reasons[0]!.includes('more than 1048576 bytes behind'), reasons[0]);
  assert.equal(new Set(reasons).size, 1, 'one text while it lasts: logged once');
});

test('--replica-fallback: the primary serves the replica port while no replica qualifies, and leaves when one does', () => {
  const none = cluster({ 'members/pg2': member('pg2', { state: 'starting' }), 'members/pg3': member('pg3', { state: 'starting' }) });
  assert.equal(routed('/replica', none), []);
  assert.equal(routed('/replica', none, true), ['pg1']);
  assert.equal(routed('/replica', cluster(), true), ['pg2', 'pg3']);
});

test.run();
