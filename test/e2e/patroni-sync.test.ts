// The replica port in front of a real Patroni cluster in synchronous mode (Patroni 4: Debian 13's 4.0.7 with
// PostgreSQL 17, sid's 4.1.5 with PostgreSQL 18), as --replicas names it in Patroni's own words: what it routes
// to is held against what Patroni's REST API answers for each member at the same moment.

import { execFileSync, spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import * as assert from 'uvu/assert';
import { within } from '../../harness/limits.ts';
import { eventually, freePort } from '../../harness/net.ts';
import { POSTGRES_BIN, startPatroni, type PatroniCluster } from '../../harness/patroni.ts';
import { track } from '../../harness/processes.ts';
import { worldSuite, type World } from '../../harness/world.ts';

const { test, run } = worldSuite<{ cluster: PatroniCluster }>('the replica port on a Patroni cluster in synchronous mode', undefined, async ({ cluster }) => cluster?.stop());

const patroniVersion = () => execFileSync('/usr/bin/patroni', ['--version'], { encoding: 'utf8' }).trim().split(' ').at(-1)!;
// Replay lag in the member keys: from Patroni 4.1.
const writesReplayLsn = () => {
  const [major, minor] = patroniVersion().split('.').map(Number) as [number, number];
  return major > 4 || (major === 4 && minor >= 1);
};

async function startCluster(world: World, context: { cluster: PatroniCluster }, synchronousMode: 'on' | 'quorum') {
  await context.cluster?.stop();
  context.cluster = await startPatroni(world.etcd.endpoint, (key) => world.etcd.client.get(key).string().then((v) => v ?? undefined), { synchronousMode });
  return context.cluster;
}

// The members `count` connections through `port` reach (by the server's address), held open together for a
// moment: leastconn spreads sessions that overlap over every routed member (sessions one after the other may
// all find the same one idlest), so four of them reach both of two replicas.
async function servedBy(cluster: PatroniCluster, port: number, count = 4): Promise<string[]> {
  const addresses = await Promise.all(
    Array.from({ length: count }, () => cluster.sql('127.0.0.1', port, 'select inet_server_addr(), pg_sleep(0.3)').catch(() => '')),
  );
  const seen = addresses.map((address) => cluster.memberAt(address.split('|')[0]!.replace(/\/\d+$/, ''))?.name ?? (address || 'nobody'));
  return [...new Set(seen)].sort();
}

// The members whose Patroni answers 200 to `path`.
async function restSays(cluster: PatroniCluster, path: string): Promise<string[]> {
  const answers = await Promise.all(cluster.members.map(async (member) => [member.name, await cluster.rest(member.name, path)] as const));
  return answers.filter(([, status]) => status === 200).map(([name]) => name).sort();
}

async function syncStandbys(world: World, cluster: PatroniCluster): Promise<string[]> {
  const sync = JSON.parse((await world.etcd.client.get(`${cluster.prefix}/sync`).string()) ?? '{}') as { sync_standby?: string | null };
  return (sync.sync_standby ?? '').split(',').filter(Boolean).sort();
}

test('synchronous_mode on: --replicas=/sync routes to the synchronous standby, as Patroni\'s /sync answers, and follows a switchover, cutting the session it leaves', async (context) => {
  const { world } = context;
  const cluster = await startCluster(world, context, 'on');
  const replicaPort = await freePort();
  const ambassador = await world.start(['--layout=patroni', `--etcd-prefix=${cluster.prefix}`, '--master-only', `--replica-port=${replicaPort}`, '--replicas=/sync']);
  const standby = await eventually(() => syncStandbys(world, cluster), (names) => names.length === 1, 30_000, 'a synchronous standby in /sync');
  await eventually(() => servedBy(cluster, replicaPort), (served) => served.join() === standby.join(), 20_000, 'the replica port on the synchronous standby');
  // Patroni's REST API reads /sync once per loop: it agrees within a few.
  await eventually(() => restSays(cluster, '/sync'), (names) => names.join() === standby.join(), 10_000, "Patroni's /sync to answer 200 there alone");

  // A session held on the synchronous standby through the replica port.
  const held = spawn(`${POSTGRES_BIN}/psql`, ['-h', '127.0.0.1', '-p', String(replicaPort), '-U', 'postgres', '-XAtc', 'select pg_sleep(120)'], { stdio: 'ignore', env: { PATH: '/usr/bin:/bin' } });
  track(held.pid);
  const heldEnded = new Promise((resolve) => held.on('exit', resolve));
  await eventually(() => cluster.sql('127.0.0.1', replicaPort, "select count(*) from pg_stat_activity where query = 'select pg_sleep(120)'"), (n) => n === '1', 10_000, 'the held session');
  // A switchover to the synchronous standby: it becomes the primary, and another member the standby.
  const leader = (await cluster.leader())!;
  await cluster.switchover(leader, standby[0]!);
  await within(heldEnded, 30_000, 'the session on the member that left the replica port cut (--replica-sessions=cut)');
  await cluster.healthy();
  const next = await eventually(() => syncStandbys(world, cluster), (names) => names.length === 1 && names[0] !== standby[0], 60_000, 'a new synchronous standby');
  await eventually(() => servedBy(cluster, replicaPort), (served) => served.join() === next.join(), 30_000, 'the replica port on the new synchronous standby');
  await eventually(() => restSays(cluster, '/sync'), (names) => names.join() === next.join(), 10_000, "Patroni's /sync to answer 200 there alone");
  assert.ok(ambassador.logs.some((line) => /replicas \S+ -> /.test(line)));
});

test('synchronous_mode quorum: --replicas=/quorum routes to the voters Patroni\'s /quorum answers 200 for; /sync to none, as Patroni says', async (context) => {
  const { world } = context;
  const cluster = await startCluster(world, context, 'quorum');
  const [quorumPort, syncPort] = [await freePort(), await freePort()];
  await world.start(['--layout=patroni', `--etcd-prefix=${cluster.prefix}`, '--master-only', `--replica-port=${quorumPort}`, '--replicas=/quorum']);
  const sync = await world.start(['--layout=patroni', `--etcd-prefix=${cluster.prefix}`, '--master-only', `--replica-port=${syncPort}`, '--replicas=/sync', '--hold=0']);
  const voters = await eventually(() => syncStandbys(world, cluster), (names) => names.length === 2, 60_000, 'two quorum voters in /sync');
  await eventually(() => restSays(cluster, '/quorum'), (names) => names.join() === voters.join(), 30_000, "Patroni's /quorum to settle");
  await eventually(() => servedBy(cluster, quorumPort), (served) => served.join() === voters.join(), 20_000, 'the replica port on the voters');
  assert.equal(await restSays(cluster, '/sync'), [], 'no member is a plain synchronous standby in quorum mode');
  await sync.waitForLog(/replicas none/);
  assert.equal(await servedBy(cluster, syncPort), ['nobody']);
});

test('a replica whose replay is held back (recovery_min_apply_delay) leaves the replica port within its bound, with no flap, and comes back when it catches up', async (context) => {
  const { world } = context;
  const cluster = await startCluster(world, context, 'on');
  const replicaPort = await freePort();
  const ambassador = await world.start(['--layout=patroni', `--etcd-prefix=${cluster.prefix}`, '--master-only', `--replica-port=${replicaPort}`, '--replicas=/replica?lag=1MB']);
  const leader = (await cluster.leader())!;
  const lagging = cluster.members.find((member) => member.name !== leader)!.name;
  await eventually(() => servedBy(cluster, replicaPort), (served) => served.includes(lagging) && served.length === 2, 30_000, 'both replicas on the replica port');
  // Each moment the replica port is asked, whether the lagging replica answered, for the whole episode. A
  // moment where a connection failed tells nothing (round robin over the routed replicas: four answers
  // include every one of them).
  const samples: { at: number; in: boolean }[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const served = await servedBy(cluster, replicaPort);
      if (!served.includes('nobody')) samples.push({ at: performance.now(), in: served.includes(lagging) });
      else await sleep(50); // a moment where a connection failed: paced, not waited on; the next sample decides
    }
  })();
  const from = ambassador.logs.length;
  const leaving = new RegExp(`/members/${lagging}: replays more than`);
  try {
    await cluster.replay(lagging, false);
    // A commit first: replay waits at it, and what follows arrives and is not replayed.
    await cluster.sql(cluster.members.find((m) => m.name === leader)!.host, 5432, 'create table lag_gate (x int)');
    await cluster.sql(cluster.members.find((m) => m.name === leader)!.host, 5432, "create table lag_test as select repeat('x', 1000) as filler from generate_series(1, 8000)", 30_000);
    const stopped = performance.now();
    // With replay_lsn in the keys, ambassador's own decision first (a client's view alone may also see the
    // member's PostgreSQL reload its settings).
    if (writesReplayLsn()) await ambassador.waitForLog(leaving, 30_000, from);
    const decided = performance.now();
    await eventually(() => samples.at(-1), (sample) => sample !== undefined && sample.at > decided && !sample.in, 30_000, `${lagging} to leave the replica port`);
    const left = performance.now() - stopped;
    // Out for a while yet, replay still stopped: it left for its lag, and stays out while it lasts.
    const outFrom = performance.now();
    await eventually(() => samples.filter((sample) => sample.at > outFrom).length, (n) => n >= 5, 30_000, 'five samples while it lags');
    await cluster.replay(lagging, true);
    const resumed = performance.now();
    await eventually(() => samples.at(-1), (sample) => sample !== undefined && sample.at > resumed && sample.in, 30_000, `${lagging} to come back`);
    const back = performance.now() - resumed;
    console.log(`      Patroni ${patroniVersion()} (lag from ${writesReplayLsn() ? 'replay_lsn' : "Patroni's REST API"}): left ${left.toFixed(0)} ms after 8 MB it did not replay, back ${back.toFixed(0)} ms after replay resumed`);
    // Stays back: no flap once it caught up.
    const settled = performance.now();
    await eventually(() => samples.filter((s) => s.at > settled).length, (n) => n >= 10, 30_000, 'ten samples after it came back');
    const history = `${samples.map((s) => (s.in ? '+' : '-')).join('')}\n${ambassador.logs.join('\n')}`;
    assert.ok(samples.filter((s) => s.at > settled).every((s) => s.in), `still in: ${history}`);
    const flips = samples.slice(1).filter((s, i) => s.in !== samples[i]!.in).length;
    assert.is(flips, 2, `one leave, one return: ${history}`);
    if (writesReplayLsn()) {
      assert.is(ambassador.logs.slice(from).filter((line) => leaving.test(line)).length, 1, `its leaving said once: ${history}`);
      assert.ok(ambassador.logs.some((line) => new RegExp(`applied revision \\d+: replicas \\S+ -> (?!.*${lagging})`).test(line)), history);
    }
  } finally {
    sampling = false;
    await cluster.replay(lagging, true);
    await sampler;
  }
});

run();
