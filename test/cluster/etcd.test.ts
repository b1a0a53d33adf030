// A 3-member etcd cluster whose members fail one at a time, for real (firewall, SIGSTOP, SIGKILL, member
// replacement), always the member ambassador's watch is on, as its own connections show. Each test states
// its bound: from the write made through the majority to a new connection answered by the new master.

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as assert from 'uvu/assert';
import { startEtcdCluster, watchedMember, type EtcdCluster } from '../../harness/etcd-cluster.ts';
import { workerPids } from '../../harness/haproxy.ts';
import { within } from '../../harness/limits.ts';
import { eventually, freePort, whoAnswers } from '../../harness/net.ts';
import { startRelay } from '../../harness/relay.ts';
import { worldSuite, type World } from '../../harness/world.ts';

const { test, run } = worldSuite('an etcd cluster, its members failing one at a time');

const report = (what: string, ms: number) => console.log(`      ${what}: ${ms.toFixed(0)} ms`);

// A test on a fresh cluster, its prefix seeded with instances 1-3 and master 2; the cluster stopped after.
async function onCluster(world: World, body: (cluster: EtcdCluster, prefix: string) => Promise<void>) {
  const cluster = await startEtcdCluster();
  const prefix = world.prefix();
  try {
    for (const i of [1, 2, 3]) await cluster.client.put(`${prefix}/instances/${i}/private_ip`).value(`127.0.0.1${i}`);
    await cluster.client.put(`${prefix}/master`).value('2');
    await body(cluster, prefix);
  } finally {
    await cluster.stop();
  }
}

async function start(world: World, cluster: EtcdCluster, prefix: string, endpoints: string[], flags: string[] = []) {
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--etcd=${endpoints.join(',')}`, `--status=127.0.0.1:${statusPort}`, ...flags], { replaceEtcd: true });
  await world.routesTo(ambassador.port, 'node-2');
  const healthz = async () => {
    const response = await fetch(`http://127.0.0.1:${statusPort}/healthz`, { signal: AbortSignal.timeout(2000) });
    return { status: response.status, body: await response.text() };
  };
  return Object.assign(ambassador, { healthz, member: () => watchedMember(ambassador.child.pid!, cluster) });
}

// Time from `since` until a new connection through `port` is answered by `name`, failing past `boundMs`.
async function routedWithin(world: World, port: number, name: string, since: number, boundMs: number, what: string): Promise<number> {
  await world.routesTo(port, name, Math.max(0, since + boundMs - performance.now()));
  const ms = performance.now() - since;
  report(what, ms);
  assert.ok(ms <= boundMs, `${what}: ${ms.toFixed(0)} ms, bound ${boundMs} ms`);
  return ms;
}

test('the watched member cut off in a minority: left, and a master written through the majority routed within 6 s', async ({ world }) =>
  onCluster(world, async (cluster, prefix) => {
    const ambassador = await start(world, cluster, prefix, cluster.endpoints);
    const watched = await ambassador.member();
    const from = ambassador.logs.length;
    cluster.partition(watched);
    const { at: wrote } = await cluster.write(`${prefix}/master`, '3', watched);
    await routedWithin(world, ambassador.port, 'node-3', wrote, 6_000, `member ${watched + 1} cut off, write → routed`);
    const left = await ambassador.waitForLog(new RegExp(`leaving member http://${cluster.members[watched]!.address}:2379`), 1000, from);
    assert.match(left, 'WARN');
    assert.is.not(await ambassador.member(), watched, 'now on another member');
    assert.is((await ambassador.healthz()).status, 200, 'confirmed current on the majority');
    await stillWhole(ambassador);
  }));

test('only the cut-off member given: the last state keeps serving, one WARN names it and why, /healthz 503 within --max-stale, routed once healed', async ({ world }) =>
  onCluster(world, async (cluster, prefix) => {
    const ambassador = await start(world, cluster, prefix, [cluster.endpoints[0]!], ['--max-stale=3s']);
    const from = ambassador.logs.length;
    cluster.partition(0);
    const cutAt = performance.now();
    await cluster.write(`${prefix}/master`, '3', 0);
    const warning = await ambassador.waitForLog(/WARN .*etcd: (leaving member|unreachable)/, 10_000, from);
    assert.match(warning, cluster.members[0]!.address);
    const unhealthy = await eventually(() => ambassador.healthz(), (r) => r.status === 503, 10_000, '/healthz 503');
    report('cut off → /healthz 503 (--max-stale=3s)', performance.now() - cutAt);
    assert.match(unhealthy.body, 'has not been confirmed current');
    assert.is(await whoAnswers(ambassador.port), 'node-2', 'the last state keeps serving');
    cluster.heal(0);
    const healed = performance.now();
    await routedWithin(world, ambassador.port, 'node-3', healed, 15_000, 'healed → routed');
    await eventually(() => ambassador.healthz(), (r) => r.status === 200, 10_000, '/healthz 200 again');
    await stillWhole(ambassador);
  }));

test('the watched member paused (SIGSTOP): a master written through the majority routed within 8 s', async ({ world }) =>
  onCluster(world, async (cluster, prefix) => {
    const ambassador = await start(world, cluster, prefix, cluster.endpoints);
    const watched = await ambassador.member();
    cluster.pause(watched);
    try {
      const { at: wrote } = await cluster.write(`${prefix}/master`, '3', watched);
      await routedWithin(world, ambassador.port, 'node-3', wrote, 8_000, `member ${watched + 1} paused, write → routed`);
    } finally {
      cluster.resume(watched);
    }
  }));

test('the leader killed: a new one elected, and a master written then routed within 6 s', async ({ world }) =>
  onCluster(world, async (cluster, prefix) => {
    const ambassador = await start(world, cluster, prefix, cluster.endpoints);
    const leader = await cluster.leader();
    await cluster.kill(leader);
    const { at } = await cluster.write(`${prefix}/master`, '3', leader);
    await routedWithin(world, ambassador.port, 'node-3', at, 6_000, `leader (member ${leader + 1}) killed, write → routed`);
    await cluster.start(leader);
    await cluster.write(`${prefix}/master`, '1');
    await world.routesTo(ambassador.port, 'node-1', 6_000);
    await stillWhole(ambassador);
  }));

test('the watched member killed, then restarted: followed within 6 s each time', async ({ world }) =>
  onCluster(world, async (cluster, prefix) => {
    const ambassador = await start(world, cluster, prefix, cluster.endpoints);
    const watched = await ambassador.member();
    await cluster.kill(watched);
    const { at } = await cluster.write(`${prefix}/master`, '3', watched);
    await routedWithin(world, ambassador.port, 'node-3', at, 6_000, `watched member ${watched + 1} killed, write → routed`);
    await cluster.start(watched);
    const again = await cluster.write(`${prefix}/master`, '1');
    await routedWithin(world, ambassador.port, 'node-1', again.at, 6_000, 'restarted, write → routed');
    await stillWhole(ambassador);
  }));

test('the watched member removed and replaced by a new one with a wiped data dir: followed throughout', async ({ world }) =>
  onCluster(world, async (cluster, prefix) => {
    const ambassador = await start(world, cluster, prefix, cluster.endpoints);
    const watched = await ambassador.member();
    const replacing = cluster.replace(watched);
    await cluster.write(`${prefix}/master`, '3', watched);
    await replacing;
    const { at } = await cluster.write(`${prefix}/master`, '1', watched);
    await routedWithin(world, ambassador.port, 'node-1', at, 6_000, `member ${watched + 1} replaced, write → routed`);
    await stillWhole(ambassador);
  }));

test('the whole cluster restarted: the last state serves meanwhile, and the next write is routed within 6 s of it', async ({ world }) =>
  onCluster(world, async (cluster, prefix) => {
    const ambassador = await start(world, cluster, prefix, cluster.endpoints);
    const restarting = cluster.restartAll();
    assert.is(await whoAnswers(ambassador.port), 'node-2', 'the last state serves meanwhile');
    await restarting;
    const { at } = await cluster.write(`${prefix}/master`, '3');
    await routedWithin(world, ambassador.port, 'node-3', at, 6_000, 'cluster restarted, write → routed');
    await stillWhole(ambassador);
  }));

test('compacted past its revision while it was cut off from etcd (a silent blackhole): a fresh snapshot, the final state routed', async ({ world }) =>
  onCluster(world, async (cluster, prefix) => {
    const relay = await startRelay(cluster.endpoints[0]!);
    try {
      const ambassador = await start(world, cluster, prefix, [relay.endpoint]);
      relay.partition();
      for (const master of ['3', '1', '3']) await cluster.write(`${prefix}/master`, master);
      await cluster.write(`${prefix}/instances/1/private_ip`, '127.0.0.13');
      const compactedTo = await cluster.compact();
      await ambassador.waitForLog(/WARN .*etcd: (leaving member|unreachable)/, 10_000);
      relay.heal();
      const healed = performance.now();
      await routedWithin(world, ambassador.port, 'node-3', healed, 6_000, `compacted to ${compactedTo} while cut off, healed → routed`);
      await ambassador.waitForLog(/etcd: (reachable again|snapshot taken)/, 5_000);
      await stillWhole(ambassador);
    } finally {
      await relay.close();
    }
  }));

test('endpoints given as one name for every member: the watched member cut off, another address of the name taken within 6 s', async ({ world }) =>
  onCluster(world, async (cluster, prefix) => {
    // This suite has a mount namespace of its own: its /etc/hosts is no one else's.
    const hosts = join(world.tempDir, 'hosts');
    writeFileSync(hosts, `127.0.0.1 localhost\n${cluster.members.map((m) => `${m.address} etcd-cluster.test`).join('\n')}\n`);
    execFileSync('mount', ['--bind', hosts, '/etc/hosts']);
    try {
      const ambassador = await start(world, cluster, prefix, ['etcd-cluster.test:2379']);
      const watched = await ambassador.member();
      cluster.partition(watched);
      const { at } = await cluster.write(`${prefix}/master`, '3', watched);
      await routedWithin(world, ambassador.port, 'node-3', at, 6_000, `by name, member ${watched + 1} cut off, write → routed`);
      assert.is.not(await ambassador.member(), watched, 'on another address of the name');
      await stillWhole(ambassador);
    } finally {
      execFileSync('umount', ['/etc/hosts']);
    }
  }));

test('a rolling restart of all three members under a change every 300 ms: no stale "ok", no lost update, one haproxy', async ({ world }) =>
  onCluster(world, async (cluster, prefix) => {
    const maxStaleMs = 3_000;
    const ambassador = await start(world, cluster, prefix, cluster.endpoints, [`--max-stale=${maxStaleMs / 1000}s`]);
    const writes: { at: number; revision: bigint; master: string }[] = [];
    const samples: { at: number; status: number; body: string }[] = [];
    let running = true;
    const writer = (async () => {
      for (let i = 0; running; i++) {
        const master = ['1', '2', '3'][i % 3]!;
        writes.push({ ...(await cluster.write(`${prefix}/master`, master)), master });
        await sleep(300); // the pace of changes under test
      }
    })();
    const sampler = (async () => {
      while (running) {
        const at = performance.now();
        samples.push({ at, ...(await ambassador.healthz().catch((err: Error) => ({ status: 0, body: err.message }))) });
        await sleep(100); // the sampling rate
      }
    })();
    const downs: { member: number; from: number; to: number }[] = [];
    for (const i of [0, 1, 2]) {
      const from = performance.now();
      await cluster.kill(i);
      await sleep(3_000); // the member stays down this long
      await cluster.start(i);
      downs.push({ member: i, from, to: performance.now() });
    }
    running = false;
    await within(Promise.all([writer, sampler]), 30_000, 'the writer and the sampler to stop');
    const last = writes.at(-1)!;
    await routedWithin(world, ambassador.port, `node-${last.master}`, last.at, 6_000, 'rolling restart done, last write → routed');
    const stale = staleOks(samples, writes, maxStaleMs);
    assert.equal(stale, [], '"ok" only for a state confirmed current within --max-stale');
    // Two members of three keep a quorum, so changes go on while each one is down: that is what this tests. How
    // many depends on etcd (a write to a member waiting for an election times out after 2 s), not on ambassador.
    for (const down of downs) {
      const during = writes.filter((w) => w.at > down.from && w.at < down.to).length;
      assert.ok(during >= 1, `changes acknowledged while member ${down.member + 1} was down: ${during}`);
    }
    assert.ok(samples.filter((s) => s.status === 200).length > samples.length / 2, 'mostly healthy: three members, one down at a time');
    console.log(`      ${writes.length} writes, ${samples.length} /healthz samples, ${samples.filter((s) => s.status !== 200).length} not 200`);
    await stillWhole(ambassador);
  }));

// The /healthz samples that said "ok: revision R" although a write acknowledged more than maxStaleMs before
// had a revision past R: a stale state reported as current.
function staleOks(samples: { at: number; status: number; body: string }[], writes: { at: number; revision: bigint }[], maxStaleMs: number) {
  return samples.flatMap((sample) => {
    const revision = /^ok: revision (\d+)/.exec(sample.body)?.[1];
    if (sample.status !== 200 || revision === undefined) return [];
    const missed = writes.filter((w) => w.at < sample.at - maxStaleMs && w.revision > BigInt(revision));
    return missed.length > 0 ? [{ ...sample, missed: String(missed.at(-1)!.revision) }] : [];
  });
}

// Ambassador still runs, with exactly one haproxy master (and its workers) in this namespace.
async function stillWhole(ambassador: { child: { exitCode: number | null }; haproxyPid(): number | undefined }) {
  assert.is(ambassador.child.exitCode, null, 'ambassador runs');
  const master = ambassador.haproxyPid()!;
  const haproxies = readdirSync('/proc').filter((pid) => /^\d+$/.test(pid) && readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'haproxy');
  const strays = haproxies.filter((pid) => Number(pid) !== master && !workerPids(master).includes(Number(pid)));
  assert.equal(strays, [], 'no haproxy but ambassador\'s own');
}

run();
