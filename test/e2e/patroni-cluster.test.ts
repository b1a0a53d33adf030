// ambassador in front of a real Patroni cluster (3 members, PostgreSQL 15) with --layout=patroni: the primary
// port reaches the primary, the replica port only replicas, through a switchover and a crash of the primary.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as assert from 'uvu/assert';
import { within } from '../../harness/limits.ts';
import { eventually, freePort } from '../../harness/net.ts';
import { POSTGRES_BIN, startPatroni, type PatroniCluster } from '../../harness/patroni.ts';
import { track } from '../../harness/processes.ts';
import { worldSuite, type World } from '../../harness/world.ts';

const { test, run } = worldSuite<{ cluster: PatroniCluster }>(
  'ambassador in front of a real Patroni cluster',
  undefined,
  async ({ cluster }) => cluster?.stop(),
);

async function startCluster(world: World, context: { cluster: PatroniCluster }) {
  context.cluster = await startPatroni(world.etcd.endpoint, (key) => world.etcd.client.get(key).string().then((v) => v ?? undefined), { tags: { pg3: { noloadbalance: true } } });
  return context.cluster;
}

// Which member answered, and whether it is in recovery (a replica), asked through `port`.
async function whoServes(cluster: PatroniCluster, port: number): Promise<{ member: string; recovery: boolean } | undefined> {
  const answer = await cluster.sql('127.0.0.1', port, 'select inet_server_addr(), pg_is_in_recovery()').catch(() => undefined);
  if (answer === undefined) return undefined;
  const [address, recovery] = answer.split('|');
  return { member: cluster.memberAt(address!)?.name ?? address!, recovery: recovery === 't' };
}

test('the primary port reaches the primary and the replica port only replicas, noloadbalance left out; a switchover moves it and cuts the old primary\'s session', async (context) => {
  const { world } = context;
  const cluster = await startCluster(world, context);
  const leader = await cluster.healthy();
  const replicaPort = await freePort();
  const ambassador = await world.start(['--layout=patroni', `--etcd-prefix=${cluster.prefix}`, '--master-only', `--replica-port=${replicaPort}`]);
  await eventually(() => whoServes(cluster, ambassador.port), (who) => who?.member === leader, 20_000, 'the primary port to reach the leader');
  assert.equal(await whoServes(cluster, ambassador.port), { member: leader, recovery: false });
  const replicas = new Set<string>();
  for (let i = 0; i < 8; i++) {
    const who = await whoServes(cluster, replicaPort);
    assert.ok(who?.recovery, `a replica answers the replica port: ${JSON.stringify(who)}`);
    replicas.add(who!.member);
  }
  assert.not.ok(replicas.has('pg3'), 'pg3 is tagged noloadbalance');
  assert.not.ok(replicas.has(leader));

  // A session held open to the old primary, through the primary port.
  const held = spawn(`${POSTGRES_BIN}/psql`, ['-h', '127.0.0.1', '-p', String(ambassador.port), '-U', 'postgres', '-XAtc', 'select pg_sleep(120)'], { stdio: 'ignore', env: { PATH: '/usr/bin:/bin' } });
  track(held.pid);
  const heldEnded = new Promise((resolve) => held.on('exit', resolve));
  await eventually(() => cluster.sql('127.0.0.1', ambassador.port, "select count(*) from pg_stat_activity where query = 'select pg_sleep(120)'"), (n) => n === '1', 10_000, 'the held session');
  const candidate = leader === 'pg1' ? 'pg2' : 'pg1';
  const began = performance.now();
  const from = ambassador.logs.length;
  await cluster.switchover(leader, candidate);
  await within(heldEnded, 30_000, 'the session to the old primary cut');
  console.log(`      switchover: the held session ended ${(performance.now() - began).toFixed(0)} ms after patronictl was run`);
  await eventually(() => whoServes(cluster, ambassador.port), (who) => who?.member === candidate && !who.recovery, 30_000, 'the primary port to reach the new primary');
  // The leader key's gap between Patroni's delete and put is a routine step: said at info, never at warn.
  const warnings = ambassador.logs.slice(from).filter((line) => line.includes(' WARN ') && line.includes('leader'));
  assert.equal(warnings, [], 'no warning for the leader gap of a switchover');
  // Whatever Patroni does next (on a loaded machine it may fail over again), ambassador follows it: once the
  // cluster is settled, the primary port reaches its leader and the replica port only its routable replicas.
  const settled = await cluster.healthy(90_000);
  await eventually(() => whoServes(cluster, ambassador.port), (who) => who?.member === settled && !who.recovery, 30_000, 'the primary port to reach the leader');
  const routable = cluster.members.map((member) => member.name).filter((name) => name !== settled && name !== 'pg3');
  await eventually(() => whoServes(cluster, replicaPort), (who) => who !== undefined && who.recovery && routable.includes(who.member), 60_000, `a replica (${routable}) on the replica port`);
});

test('a SIGKILLed primary is followed once Patroni elects a new leader', async ({ world, cluster }) => {
  const leader = await cluster.healthy();
  const replicaPort = await freePort();
  const ambassador = await world.start(['--layout=patroni', `--etcd-prefix=${cluster.prefix}`, '--master-only', `--replica-port=${replicaPort}`]);
  await eventually(() => whoServes(cluster, ambassador.port), (who) => who?.member === leader, 20_000, 'the primary port to reach the leader');
  const crashed = performance.now();
  await cluster.crash(leader);
  const next = await eventually(() => whoServes(cluster, ambassador.port), (who) => who !== undefined && who.member !== leader && !who.recovery, 45_000, 'a new primary through the primary port');
  console.log(`      crash of ${leader}: the primary port reached the new primary ${next!.member} ${(performance.now() - crashed).toFixed(0)} ms later`);
  const replica = await whoServes(cluster, replicaPort);
  assert.ok(replica === undefined || (replica.recovery && replica.member !== leader), JSON.stringify(replica));
});

test('hostile values written to member keys are refused and never routed', async ({ world, cluster }) => {
  const leader = (await cluster.leader())!;
  const ambassador = await world.start(['--layout=patroni', `--etcd-prefix=${cluster.prefix}`, '--master-only']);
  await eventually(() => whoServes(cluster, ambassador.port), (who) => who?.member === leader, 20_000, 'the primary port to reach the leader');
  const hostile = {
    evil1: '{"conn_url":"postgres://127.0.0.31:5432\\n    server evil 127.0.0.32:5432\\n#/x","role":"master","state":"running"}',
    evil2: '{"conn_url":"postgres://127.0.0.31:5432/x","role":"master"',
    evil3: '{"conn_url":"postgres://127.0.0.31:5432 backup/x","role":"master","state":"running"}',
  };
  for (const [name, value] of Object.entries(hostile)) {
    await world.etcd.put(`${cluster.prefix}/members/${name}`, value);
    await ambassador.waitForLog(new RegExp(`rejected ${cluster.prefix.replaceAll('/', '\\/')}\\/members\\/${name}=`));
  }
  assert.not.match(readFileSync(ambassador.configPath, 'utf8'), 'evil');
  assert.equal(await whoServes(cluster, ambassador.port), { member: leader, recovery: false });
  for (const name of Object.keys(hostile)) await world.etcd.del(`${cluster.prefix}/members/${name}`);
});

run();
