// A replica port, and Patroni's layout, against real etcd and haproxy: keys written the way Patroni writes
// them (its member JSON, its switchover sequence), with the suite's named backends standing in for PostgreSQL.

import { readFileSync, statSync } from 'node:fs';
import * as assert from 'uvu/assert';
import { answeredBy, freePort, openSession, whoAnswers } from '../../harness/net.ts';
import { within } from '../../harness/limits.ts';
import { patroniMember } from '../../harness/patroni-keys.ts';
import { worldSuite, type World } from '../../harness/world.ts';

const { test, run } = worldSuite('replica port and Patroni layout');

// Member pg<i>, on backend node-<i>.
const member = (world: World, i: number, over: Record<string, unknown> = {}) => patroniMember(`127.0.0.1${i}`, world.backendPort, over);

async function patroniCluster(world: World, scope: string, leader = 2) {
  const prefix = `/service/${scope}`;
  await world.etcd.put(`${prefix}/status`, '{"optime":67108864}');
  for (const i of [1, 2, 3]) await world.etcd.put(`${prefix}/members/pg${i}`, member(world, i, i === leader ? { role: 'master' } : {}));
  await world.etcd.put(`${prefix}/leader`, `pg${leader}`);
  return prefix;
}

async function startPatroni(world: World, prefix: string, flags: string[] = []) {
  const replicaPort = await freePort();
  const ambassador = await world.start(['--layout=patroni', `--etcd-prefix=${prefix}`, '--master-only', `--replica-port=${replicaPort}`, ...flags]);
  return Object.assign(ambassador, { replicaPort });
}

test('the instances layout with a replica port: every instance but the master, moved with the master in one step', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const replicaPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--replica-port=${replicaPort}`]);
  await world.routesTo(ambassador.port, 'node-2');
  await world.servedBy(replicaPort, ['node-1', 'node-3']);
  await world.etcd.put(`${prefix}/master`, '3');
  await ambassador.waitForLog(/applied revision \d+: master 2 -> 3, replicas 1,3 -> 1,2 \(runtime, \d+ ms\)/);
  await world.routesTo(ambassador.port, 'node-3');
  await world.servedBy(replicaPort, ['node-1', 'node-2']);
  await world.etcd.del(`${prefix}/instances/1/private_ip`);
  await world.etcd.del(`${prefix}/instances/2/private_ip`);
  await ambassador.waitForLog(/replicas [\w,]+ -> none/);
  // No replica: a new connection to the replica port waits for one, as the primary port's do for a master.
  const held = whoAnswers(replicaPort, '127.0.0.1', 20_000);
  assert.is(await whoAnswers(ambassador.port), 'node-3');
  await world.etcd.put(`${prefix}/instances/1/private_ip`, '127.0.0.11');
  assert.is(await held, 'node-1', 'the held connection goes to the replica that came');
});

test('Patroni: the primary port reaches the leader, the replica port the running replicas, noloadbalance left out', async ({ world }) => {
  const prefix = await patroniCluster(world, 'routes');
  const ambassador = await startPatroni(world, prefix);
  await world.routesTo(ambassador.port, 'node-2');
  await world.servedBy(ambassador.replicaPort, ['node-1', 'node-3']);
  await world.etcd.put(`${prefix}/members/pg3`, member(world, 3, { tags: { noloadbalance: true, nofailover: true } }));
  await world.servedBy(ambassador.replicaPort, ['node-1']);
  await world.etcd.put(`${prefix}/members/pg1`, member(world, 1, { state: 'starting' }));
  await ambassador.waitForLog(/replicas [\w,]+ -> none/);
  assert.is(await whoAnswers(ambassador.replicaPort, '127.0.0.1', 1_000), '', 'no replica running: held, not answered');
  assert.is(await whoAnswers(ambassador.port), 'node-2');
});

test('Patroni: a switchover as Patroni writes it fences the old primary at once and moves both ports', async ({ world }) => {
  const prefix = await patroniCluster(world, 'switchover');
  const ambassador = await startPatroni(world, prefix);
  await world.routesTo(ambassador.port, 'node-2');
  const session = await openSession(ambassador.port);
  assert.is(session.greeting, 'node-2');
  // The old primary demotes itself while the leader key still names it: fenced, its sessions cut.
  await world.etcd.put(`${prefix}/members/pg2`, member(world, 2, { role: 'demoted', state: 'stopping' }));
  await within(session.closed, 5000, 'the session to the old primary cut');
  // A client that comes now, with no leader routable, waits, and never for the old primary.
  const held = whoAnswers(ambassador.port, '127.0.0.1', 20_000);
  // Its lease goes, a new leader takes the key; its member key still says replica for a while.
  await world.etcd.del(`${prefix}/leader`);
  await world.etcd.put(`${prefix}/leader`, 'pg3');
  assert.is(await held, 'node-3', 'the client held through the switchover reaches the new leader');
  await world.routesTo(ambassador.port, 'node-3');
  await world.servedBy(ambassador.replicaPort, ['node-1']);
  await world.etcd.put(`${prefix}/members/pg2`, member(world, 2, { state: 'running', role: 'replica' }));
  await world.servedBy(ambassador.replicaPort, ['node-1', 'node-2']);
  await world.etcd.put(`${prefix}/members/pg3`, member(world, 3, { role: 'master' }));
  assert.equal(await answeredBy(ambassador.port, 6), ['node-3']);
  assert.not.ok(ambassador.logs.some((line) => line.includes('(reload, ')), 'all through the runtime API');
});

test('Patroni: hostile member values are refused and logged once; the others keep serving', async ({ world }) => {
  const prefix = await patroniCluster(world, 'hostile');
  const ambassador = await startPatroni(world, prefix);
  await world.routesTo(ambassador.port, 'node-2');
  const port = world.backendPort;
  const hostile: [string, string][] = [
    ['members/evil1', `{"conn_url":"postgres://127.0.0.13\\n    server evil 127.0.0.13:${port}\\n#:${port}/x","role":"replica","state":"running"}`],
    ['members/evil2', '{not json'],
    ['members/evil3', member(world, 3, { conn_url: `postgres://127.0.0.13:${port} backup/x` })],
    ['members/evil4', member(world, 3, { role: ['master'] })],
    ['members/evil5', `{"conn_url":"postgres://127.0.0.13:${port}/x","role":"replica","state":"running","pad":"${'x'.repeat(1 << 20)}"}`],
    ['members/ev il6', member(world, 3)],
  ];
  for (const [key, value] of hostile) {
    await world.etcd.put(`${prefix}/${key}`, value);
    await ambassador.waitForLog(new RegExp(`rejected ${prefix}/${key}`.replaceAll('/', '\\/')));
  }
  const config = readFileSync(ambassador.configPath, 'utf8');
  assert.not.match(config, 'evil');
  assert.is(config.split('\n').filter((line) => line.startsWith('    server ')).length, 6);
  await world.servedBy(ambassador.replicaPort, ['node-1', 'node-3']);
  for (const [key] of hostile) assert.is(ambassador.logs.filter((line) => line.includes(`rejected ${prefix}/${key}`)).length, 1, key);
});

test('Patroni rewriting its member keys every loop_wait costs no haproxy command, no config write and no log line', async ({ world }) => {
  const prefix = await patroniCluster(world, 'quiet');
  const ambassador = await startPatroni(world, prefix, ['--log-level=debug']);
  await world.routesTo(ambassador.port, 'node-2');
  await world.servedBy(ambassador.replicaPort, ['node-1', 'node-3']);
  // haproxy serves a moment before ambassador has confirmed its start; the rewrites come after that.
  await ambassador.waitForLog(/applied revision \d+: 3 server\(s\)/);
  const written = statSync(ambassador.configPath).mtimeMs;
  const from = ambassador.logs.length;
  for (let loop = 1; loop <= 5; loop++) {
    for (const i of [1, 2, 3]) await world.etcd.put(`${prefix}/members/pg${i}`, member(world, i, { xlog_location: 67108864 + loop * 4096, ...(i === 2 ? { role: 'master' } : {}) }));
    await world.etcd.put(`${prefix}/status`, `{"optime":${67108864 + loop * 4096}}`);
  }
  // A change that does route differently, after them: once it is applied, they were all seen.
  await world.etcd.put(`${prefix}/members/pg3`, member(world, 3, { xlog_location: 67108864 + 5 * 4096, tags: { noloadbalance: true } }));
  await ambassador.waitForLog(/applied revision \d+: replicas pg1,pg3 -> pg1 \(runtime/, 10_000, from);
  const lines = ambassador.logs.slice(from);
  assert.equal(lines.filter((line) => !/replicas pg1,pg3 -> pg1 \(runtime|set server replicas\/pg3 state maint|shutdown sessions server replicas\/pg3|Server replicas\/pg3 is going DOWN/.test(line)), [], 'nothing for the rewrites');
  assert.ok(statSync(ambassador.configPath).mtimeMs > written, 'the last change did write the config');
});

run();
