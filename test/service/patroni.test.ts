// Patroni's layout, read as Patroni 3.0.2 writes it (member JSON verbatim from a real cluster), and selected.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readCluster, selectPatroni, type PatroniSettings } from '../../lib/service/patroni.ts';
import { renderConfig } from '../../lib/render/render.ts';
import { patroniMember } from '../../harness/patroni-keys.ts';
import { readService, selectServers } from '../../lib/service/instances.ts';

const P = '/service/demo';
const settings: PatroniSettings = { prefix: P, masterOnly: true, replicas: true, selection: { endpoint: 'replica', lag: undefined, replicationState: undefined, tags: [] }, fallback: false };
// One selection, with no memory of earlier readings.
const selectOnce = (read: ReturnType<typeof readCluster>, with_: PatroniSettings) => selectPatroni(read, with_).selection;

const member = (name: string, over: Record<string, unknown> = {}) => patroniMember(`127.0.0.3${name.slice(-1)}`, 5432, over);

function cluster(entries: Record<string, string>) {
  return new Map(Object.entries(entries).map(([key, value]) => [`${P}/${key}`, value]));
}

const healthy = () =>
  cluster({
    leader: 'pg1',
    status: '{"optime":67108864}',
    'members/pg1': member('pg1', { role: 'master' }),
    'members/pg2': member('pg2'),
    'members/pg3': member('pg3'),
  });

const routed = (servers: { name: string; enabled: boolean }[] | undefined) => (servers ?? []).filter((s) => s.enabled).map((s) => s.name);

test('reads the member JSON Patroni 4 writes, verbatim: role primary, replication_state', () => {
  const mirror = cluster({
    leader: 'pg1',
    status: '{"optime":83886080}',
    'members/pg1': '{"conn_url":"postgres://127.0.0.31:5432/postgres","api_url":"http://127.0.0.31:8008/patroni","state":"running","role":"primary","version":"4.0.7","xlog_location":83886080,"timeline":1}',
    'members/pg2': '{"conn_url":"postgres://127.0.0.32:5432/postgres","api_url":"http://127.0.0.32:8008/patroni","state":"running","role":"replica","version":"4.0.7","xlog_location":83886080,"replication_state":"streaming","timeline":1}',
  });
  const read = readCluster(mirror, P);
  assert.equal(read.problems, []);
  const selection = selectOnce(read, settings);
  assert.equal(routed(selection.servers), ['pg1']);
  assert.equal(routed(selection.replicas), ['pg2']);
});

test('reads the member JSON Patroni writes, verbatim', () => {
  const mirror = cluster({
    leader: 'pg3',
    'members/pg3': '{"conn_url":"postgres://127.0.0.33:5432/postgres","api_url":"http://127.0.0.33:8008/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":67108864,"timeline":1}',
    'members/pg1': '{"conn_url":"postgres://127.0.0.31:5432/postgres","api_url":"http://127.0.0.31:8008/patroni","state":"running","role":"replica","version":"3.0.2","tags":{"nofailover":true,"noloadbalance":true,"clonefrom":true,"zone":"a"},"xlog_location":67316280,"timeline":3}',
  });
  const read = readCluster(mirror, P);
  assert.equal(read.problems, []);
  assert.equal(read.members.map((m) => [m.name, m.address, m.port, m.role, m.noloadbalance]), [
    ['pg1', '127.0.0.31', 5432, 'replica', true],
    ['pg3', '127.0.0.33', 5432, 'master', false],
  ]);
  const selection = selectOnce(read, settings);
  assert.equal(routed(selection.servers), ['pg3']);
  assert.equal(routed(selection.replicas), [], 'the only replica is tagged noloadbalance');
});

test('the primary port follows the leader key; the replica port every running replica but the leader', () => {
  const selection = selectOnce(readCluster(healthy(), P), settings);
  assert.equal(routed(selection.servers), ['pg1']);
  assert.equal(routed(selection.replicas), ['pg2', 'pg3']);
  assert.is(selection.master, 'pg1');
});

test('a new leader is routed as soon as the leader key names it, though its member key still says replica', () => {
  const mirror = healthy();
  mirror.set(`${P}/leader`, 'pg2');
  mirror.set(`${P}/members/pg1`, member('pg1', { role: 'demoted', state: 'stopping' }));
  const selection = selectOnce(readCluster(mirror, P), settings);
  assert.equal(routed(selection.servers), ['pg2']);
  assert.equal(routed(selection.replicas), ['pg3']);
});

test('the primary is fenced when its member says demoted or not running, or the leader key goes or names another', () => {
  for (const over of [{ role: 'demoted' }, { state: 'stopping' }, { state: 'stopped' }, { state: 'crashed' }, { state: 'restarting' }]) {
    const mirror = healthy();
    mirror.set(`${P}/members/pg1`, member('pg1', { role: 'master', ...over }));
    assert.equal(routed(selectOnce(readCluster(mirror, P), settings).servers), [], JSON.stringify(over));
  }
  const noLeader = healthy();
  noLeader.delete(`${P}/leader`);
  const selection = selectOnce(readCluster(noLeader, P), settings);
  assert.equal(routed(selection.servers), []);
  assert.match(selection.problems.map((p) => p.reason).join(), 'no leader');
  const unknown = healthy();
  unknown.set(`${P}/leader`, 'pg9');
  assert.equal(routed(selectOnce(readCluster(unknown, P), settings).servers), []);
});

test('without --master-only the primary port routes every running member', () => {
  const mirror = healthy();
  mirror.set(`${P}/members/pg3`, member('pg3', { state: 'starting' }));
  assert.equal(routed(selectOnce(readCluster(mirror, P), { ...settings, masterOnly: false }).servers), ['pg1', 'pg2']);
});

test('a lag bound is replay lag: from replay_lsn where every member writes it (4.1), else asked of Patroni\'s REST API by haproxy', () => {
  const lagged = (replayLsn: boolean) => {
    const mirror = healthy();
    mirror.set(`${P}/status`, '{"optime":100000000}');
    mirror.set(`${P}/members/pg1`, member('pg1', { role: 'master', ...(replayLsn ? { replay_lsn: 100000000 } : {}) }));
    mirror.set(`${P}/members/pg2`, member('pg2', { xlog_location: 100000000, ...(replayLsn ? { replay_lsn: 100000000 - (16 << 20) } : {}) }));
    mirror.set(`${P}/members/pg3`, member('pg3', { xlog_location: 100000000, ...(replayLsn ? { replay_lsn: 100000000 - (16 << 20) - 1 } : {}) }));
    return readCluster(mirror, P);
  };
  const bounded = { ...settings, selection: { ...settings.selection, lag: 16 << 20 } };
  assert.equal(routed(selectOnce(lagged(true), bounded).replicas), ['pg2'], 'received everything, replayed less: out by replay_lsn');
  assert.equal(routed(selectOnce(lagged(true), settings).replicas), ['pg2', 'pg3']);
  const asked = selectOnce(lagged(false), bounded);
  assert.equal(routed(asked.replicas), ['pg2', 'pg3'], 'xlog_location is the received position: it says nothing of replay');
  assert.equal(asked.replicas!.map((server) => server.restCheck), ['off', { address: '127.0.0.32', port: 8008, path: '/replica?lag=16777216' }, { address: '127.0.0.33', port: 8008, path: '/replica?lag=16777216' }]);
  assert.ok(asked.problems.some((problem) => problem.notice && problem.reason.includes('Patroni before 4.1')), 'said');
});

test('hostile members are problems that keep them out, and never reach the config', () => {
  const hostile: Record<string, string> = {
    'members/bad1': '{not json',
    'members/bad2': member('bad2', { conn_url: 'postgres://127.0.0.12\n    server evil 127.0.0.13:5432\n#:5432/postgres' }),
    'members/bad3': member('bad3', { conn_url: 'postgres://127.0.0.12:99999/postgres' }),
    'members/bad4': member('bad4', { role: 7 }),
    'members/bad5': member('bad5', { tags: 'noloadbalance' }),
    'members/bad6': member('bad6', { conn_url: 'http://127.0.0.12/' }),
    'members/bad7': `{"conn_url":"postgres://127.0.0.12:5432/x","role":"replica","state":"running","pad":"${'x'.repeat(1 << 20)}"}`,
    'members/b d8': member('bad8'),
    'members/bad9': member('bad9', { xlog_location: '67108864' }),
    'members/bad10': '[]',
  };
  const mirror = healthy();
  for (const [key, value] of Object.entries(hostile)) mirror.set(`${P}/${key}`, value);
  const read = readCluster(mirror, P);
  assert.equal(read.members.map((m) => m.name), ['pg1', 'pg2', 'pg3']);
  assert.equal(read.problems.map((p) => p.key.slice(P.length + 1)).sort(), Object.keys(hostile).sort());
  const selection = selectOnce(read, settings);
  const config = renderConfig({ prefix: P, bind: '127.0.0.1', port: 5000, replicaPort: 5001, masterOnly: true, hardStopAfter: '5m', adminSocket: '/run/a.sock', holdMs: 0, holdScript: '/run/a/hold.lua', replicaSessions: 'cut' }, selection);
  assert.not.match(config, 'evil');
  assert.not.match(config, '127.0.0.12');
  assert.is(config.split('\n').filter((line) => line.startsWith('    server ')).length, 6, 'three members on each port');
});

test('with the instances layout, the replica port routes every instance but the master', () => {
  const mirror = new Map([
    ['/s/master', '2'],
    ['/s/instances/1/private_ip', '10.0.0.1'],
    ['/s/instances/2/private_ip', '10.0.0.2'],
    ['/s/instances/3/private_ip', '10.0.0.3'],
  ]);
  const instances = { prefix: '/s', public: false, backendPort: 5432, masterOnly: true, replicas: true };
  const selection = selectServers(readService(mirror, instances), instances);
  assert.equal(routed(selection.servers), ['2']);
  assert.equal(routed(selection.replicas), ['1', '3']);
  mirror.delete('/s/master');
  assert.equal(routed(selectServers(readService(mirror, instances), instances).replicas), ['1', '2', '3']);
});

test.run();
