// A hostile registry and a hostile host, against real etcd and haproxy: values of hostile size or encoding, a
// second ambassador on the port, a runtime dir deleted under it, more instances than the file limit allows, a
// flood of idle status connections, a wrong password, a burst of SIGHUPs. Each of these took ambassador down, or
// kept clients on the wrong master, before the fix its test names.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as assert from 'uvu/assert';
import { startEtcd } from '../../harness/etcd.ts';
import { masterCommand } from '../../harness/haproxy.ts';
import { within } from '../../harness/limits.ts';
import { answers, eventually, freePort, openSession, startBackend, whoAnswers } from '../../harness/net.ts';
import { worldSuite, type World } from '../../harness/world.ts';

const { test, run } = worldSuite('hostile');

const MB = 1 << 20;

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(5_000) });
  return { status: response.status, body: await response.text() };
}

// What /state says of the watch.
async function watchState(statusPort: number): Promise<{ snapshots: number; resyncs: Record<string, number> }> {
  return JSON.parse((await get(statusPort, '/state')).body).etcd;
}

// Until the watch has confirmed its state against etcd (a check that agreed) at least `afterMs` from now: the
// checks made meanwhile all read the routing keys of the state now.
async function confirmedAfter(statusPort: number, afterMs: number): Promise<void> {
  const from = Date.now() + afterMs;
  const confirmedAt = async () => {
    const { confirmedSecondsAgo } = JSON.parse((await get(statusPort, '/state')).body).etcd as { confirmedSecondsAgo: number | null };
    return confirmedSecondsAgo === null ? 0 : Date.now() - confirmedSecondsAgo * 1000;
  };
  await eventually(confirmedAt, (at) => at > from, afterMs + 10_000, `a check that agreed, ${afterMs} ms from now`);
}

// Private memory of a process in MB: what the bench bounds (bench/README.md, "Memory and scale").
function privateMb(pid: number): number {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Anonymous:\s+(\d+) kB/m.exec(rollup)![1]) / 1024;
}

// Writes `count` keys under `prefix` with values made by `value`, 16 at a time.
async function writeMany(world: World, count: number, key: (i: number) => string, value: (i: number) => string | Buffer): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < count) {
        const i = next++;
        await world.etcd.client.put(key(i)).value(value(i));
      }
    }),
  );
}

test('ninety values of 1 MB: each a problem cut short, memory bounded, the master still routed; a fresh start on that prefix (over 64 MiB) serves (fixed in lib/common/text.ts, lib/etcd/connection.ts)', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  // The executable, whose heap bounds are the ones the memory bound is about.
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`], { binary: 'dist' });
  await world.routesTo(ambassador.port, 'node-2');
  const megabyte = (i: number) => `${i}`.padEnd(MB, 'x');
  await writeMany(world, 90, (i) => `${prefix}/instances/h${i}/private_ip`, megabyte);
  const state = await eventually(() => get(statusPort, '/state'), (answer) => JSON.parse(answer.body).problems.length === 90, 30_000, 'ninety problems in /state');
  assert.is(ambassador.child.exitCode, null, 'ambassador lives');
  assert.is(await whoAnswers(ambassador.port), 'node-2', 'the master still routed');
  const problems = JSON.parse(state.body).problems as { value?: string }[];
  assert.ok(problems.every((problem) => (problem.value ?? '').length < 200), 'values cut short in /state');
  assert.ok(state.body.length < 100_000, `/state is ${state.body.length} bytes`);
  const memory = privateMb(ambassador.child.pid!);
  assert.ok(memory < 80, `private memory ${memory.toFixed(0)} MB`);
  assert.ok(ambassador.logs.every((line) => line.length < 2_000), 'log lines stay short');
  assert.ok(ambassador.logs.some((line) => /rejected .*\/instances\/h89\/private_ip=".*… \(1048576 bytes\)": a value of 1048576 bytes: longer than the 512 allowed/.test(line)));

  const fresh = await world.start([`--etcd-prefix=${prefix}`, '--master-only'], { binary: 'dist' });
  await world.routesTo(fresh.port, 'node-2', 30_000);
  assert.not.ok(fresh.logs.some((line) => /unreachable|RESOURCE_EXHAUSTED/.test(line)), fresh.logs.join('\n'));
});

test('a second ambassador on the same port exits 1 naming who listens there; the first keeps its clients and reloads (fixed in lib/render/render.ts, lib/host/ports.ts)', async ({ world }) => {
  const [first, second] = [world.prefix(), world.prefix()];
  await world.writeSeed(first, '2');
  await world.writeSeed(second, '3');
  const ambassador = await world.start([`--etcd-prefix=${first}`, '--master-only', '--apply=reload']);
  await world.routesTo(ambassador.port, 'node-2');
  const intruder = await world.start([`--etcd-prefix=${second}`, '--master-only'], { port: ambassador.port });
  const code = await within(intruder.exited, 10_000, 'the second ambassador exits');
  assert.is(code, 1);
  const line = intruder.logs.find((l) => l.includes('ERROR'))!;
  assert.match(line, new RegExp(`port ${ambassador.port} is taken: 127\\.0\\.0\\.1:${ambassador.port} \\(pid \\d+, haproxy\\)`));
  assert.equal(await answers(ambassador.port, 40), Array(40).fill('node-2'), 'every client to the first one\'s master');
  const from = ambassador.logs.length;
  await world.etcd.put(`${first}/master`, '1');
  await ambassador.waitForLog(/applied revision \d+: master 2 -> 1 \(reload, \d+ ms\)/, 10_000, from);
  assert.equal(await answers(ambassador.port, 10), Array(10).fill('node-1'), 'a reload keeps the port');
});

test('the fence holds for an IPv4-mapped IPv6 master: a session an old worker keeps is cut at the failover (fixed in lib/haproxy/sockets.ts)', async ({ world }) => {
  const prefix = world.prefix();
  const port = await freePort('127.0.0.31');
  const backends = [await startBackend('node-a', '127.0.0.31', port), await startBackend('node-b', '127.0.0.32', port)];
  try {
    for (const [name, address] of [['a', '::ffff:127.0.0.31'], ['b', '127.0.0.32']]) {
      await world.etcd.put(`${prefix}/instances/${name}/private_ip`, address!);
      await world.etcd.put(`${prefix}/instances/${name}/port`, String(port));
    }
    await world.etcd.put(`${prefix}/master`, 'a');
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
    await world.routesTo(ambassador.port, 'node-a');
    const session = await openSession(ambassador.port);
    assert.is(session.greeting, 'node-a');
    // An instance by DNS name needs a reload: the session stays with the worker it replaces.
    await world.etcd.put(`${prefix}/instances/named/private_ip`, 'localhost');
    await ambassador.waitForLog(/applied revision \d+: .*\(reload, \d+ ms\)/);
    await world.etcd.put(`${prefix}/master`, 'b');
    await within(session.closed, 5_000, 'the old worker\'s session to the mapped master cut');
    await world.routesTo(ambassador.port, 'node-b', 5_000);
  } finally {
    await Promise.all(backends.map((backend) => backend.close()));
  }
});

test('a 1.4 MB master value is a problem and does not stall the watch: a valid master written after it is routed (fixed in lib/service/instances.ts routingKeys)', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  // --hold=0: a new connection is closed at once while the master is refused.
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--etcd-check-interval=200ms', `--status=127.0.0.1:${statusPort}`, '--hold=0']);
  await world.routesTo(ambassador.port, 'node-2');
  const from = ambassador.logs.length;
  await world.etcd.put(`${prefix}/master`, 'm'.repeat(1_400_000));
  await world.routesTo(ambassador.port, '');
  // Checks that read the routing keys while that value is the master's (each of them failed before).
  await confirmedAfter(statusPort, 600);
  await world.etcd.put(`${prefix}/master`, '3');
  await world.routesTo(ambassador.port, 'node-3');
  assert.not.ok(ambassador.logs.slice(from).some((line) => /leaving member|cannot serve/.test(line)), ambassador.logs.slice(from).join('\n'));
  assert.ok(ambassador.logs.some((line) => /rejected .*\/master="m+… \(1400000 bytes\)": a value of 1400000 bytes: longer than the 512 allowed/.test(line)));
});

test('the runtime dir deleted while running: made again, and a failover moves every new connection (fixed in lib/haproxy/driver.ts)', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`]);
  await world.routesTo(ambassador.port, 'node-2');
  // haproxy's master re-executes itself once its first worker runs, and one whose socket's dir is gone at that
  // instant exits (ambassador then exits 1, for its supervisor): that instant is not this test's.
  await eventually(() => masterCommand(ambassador.runtimeDir, 'show proc').catch(() => ''), (answer) => answer.includes('master'), 10_000, "haproxy's master in wait mode");
  rmSync(ambassador.runtimeDir, { recursive: true, force: true });
  assert.not.ok(existsSync(ambassador.runtimeDir), 'the runtime dir is gone');
  await world.etcd.put(`${prefix}/master`, '3');
  await world.routesTo(ambassador.port, 'node-3', 5_000);
  assert.equal(await answers(ambassador.port, 20), Array(20).fill('node-3'));
  await ambassador.waitForLog(/runtime dir .* was deleted: made it again/);
  assert.is(statSync(ambassador.runtimeDir).mode & 0o777, 0o700);
  // And what needs haproxy's worker still works, through its master: the next failover, the metrics.
  await world.etcd.put(`${prefix}/master`, '1');
  await world.routesTo(ambassador.port, 'node-1', 5_000);
  const metrics = await get(statusPort, '/metrics');
  assert.match(metrics.body, /ambassador_haproxy_stats_up 1/);
  assert.match(metrics.body, /ambassador_runtime_dir_restored_total 1/);
});

test('more instances than haproxy can open under the file limit are refused before haproxy sees them, naming the limit; a failover still opens the new master (fixed in lib/haproxy/driver.ts)', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const limit = 4_000;
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`], { limitFiles: limit });
  await world.routesTo(ambassador.port, 'node-2');
  // More than haproxy itself can open (servers + ~230 descriptors: "Cannot raise FD limit" past it).
  await writeMany(world, limit, (i) => `${prefix}/instances/n${i}/private_ip`, (i) => `127.1.${i >> 8}.${i & 255}`);
  await ambassador.waitForLog(/haproxy: refused the config/, 30_000);
  await world.etcd.put(`${prefix}/master`, '3');
  await world.routesTo(ambassador.port, 'node-3', 10_000);
  // The master moves at run time first; the rest of that state is refused a moment after.
  const healthz = await eventually(() => get(statusPort, '/healthz'), (answer) => answer.status !== 200, 10_000, '/healthz to say the newest state was refused');
  assert.is(healthz.status, 503);
  assert.match(healthz.body, 'refused');
  assert.ok(ambassador.logs.some((line) => /haproxy: refused the config .*reason="4003 servers: more than the \d+ haproxy can open under the open-file limit of 4000/.test(line)), 'refused by ambassador, naming the limit');
});

test('keys and values that are not UTF-8 are problems, said once, and the watch does not take snapshot after snapshot (fixed in lib/common/text.ts)', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  // An instance whose name is not UTF-8, the master naming it, and an address that is not UTF-8.
  const name = Buffer.from([0x6e, 0xff, 0x31]);
  await world.etcd.client.put(Buffer.concat([Buffer.from(`${prefix}/instances/`), name, Buffer.from('/private_ip')])).value('127.0.0.13');
  await world.etcd.client.put(`${prefix}/instances/4/private_ip`).value(Buffer.from([0x31, 0x32, 0x37, 0xc0, 0x2e]));
  await world.etcd.client.put(`${prefix}/master`).value(name);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--etcd-check-interval=100ms', `--status=127.0.0.1:${statusPort}`]);
  await ambassador.waitForLog(/status: serving/);
  // Checks of the routing keys, for two seconds: each one found a "missed" key before.
  await confirmedAfter(statusPort, 2_000);
  const etcd = await watchState(statusPort);
  assert.is(etcd.snapshots, 1, JSON.stringify(etcd));
  assert.equal(Object.values(etcd.resyncs), [0, 0, 0, 0, 0, 0]);
  await world.etcd.put(`${prefix}/master`, '3');
  await world.routesTo(ambassador.port, 'node-3');
  assert.ok(ambassador.logs.some((line) => /rejected .*\/instances\/4\/private_ip=.*: not UTF-8/.test(line)));
  assert.ok(ambassador.logs.some((line) => /rejected .*\/master=.*: not UTF-8: no instance is routed/.test(line)));
});

test('a shared runtime dir (sticky, open to all) is refused and left as it was (fixed in lib/host/rundir.ts)', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const shared = join(world.tempDir, 'shared');
  mkdirSync(shared);
  execFileSync('chmod', ['1777', shared]);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only'], { runtimeDir: shared });
  assert.is(await within(ambassador.exited, 10_000, 'ambassador exits'), 1);
  assert.match(ambassador.logs.join('\n'), /runtime dir .*shared is open to others \(mode 1777\)/);
  assert.is(statSync(shared).mode & 0o7777, 0o1777, 'left as it was');
});

test('haproxy gets none of ambassador\'s settings in its environment (its admin socket prints it)', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start(['--master-only'], { env: { AMBASSADOR_ETCD_PREFIX: prefix, AMBASSADOR_LOG_LEVEL: 'info' } });
  await world.routesTo(ambassador.port, 'node-2');
  const environ = readFileSync(`/proc/${ambassador.haproxyPid()}/environ`, 'utf8');
  assert.not.match(environ, 'AMBASSADOR_');
  assert.ok(environ.includes('PATH='), 'the rest of the environment is kept');
});

test('a flood of idle connections to the status port, at a low file limit, blocks neither a failover nor /healthz (fixed in lib/status/server.ts)', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`]);
  await world.routesTo(ambassador.port, 'node-2');
  await ambassador.waitForLog(/status: serving/);
  // ambassador's own limit, lowered while it runs (haproxy, started before, keeps its own).
  execFileSync('prlimit', [`--pid=${ambassador.child.pid}`, '--nofile=200:200']);
  const idle: Socket[] = [];
  try {
    for (let i = 0; i < 250; i++) {
      const socket = connect(statusPort, '127.0.0.1');
      socket.on('error', () => {});
      idle.push(socket);
    }
    await Promise.all(idle.map((socket) => new Promise((resolve) => (socket.connecting ? socket.once('connect', resolve).once('error', resolve) : resolve(undefined)))));
    await world.etcd.put(`${prefix}/master`, '3');
    await world.routesTo(ambassador.port, 'node-3', 10_000);
    // At once, with the flood still open.
    const healthz = await get(statusPort, '/healthz');
    assert.match(healthz.body, /^ok/);
    assert.ok(idle.filter((socket) => !socket.destroyed).length <= 32, 'the flood holds no more than 32 of ambassador\'s descriptors');
  } finally {
    for (const socket of idle) socket.destroy();
  }
});

test('a wrong etcd password backs off (from 1 s to 30 s), and is said once (fixed in lib/etcd/watch.ts)', async ({ world }) => {
  const etcd = await startEtcd();
  // The tries as etcd counts them (its /metrics): refused authentications.
  const refused = async () => {
    const metrics = await (await fetch(`http://${etcd.endpoint}/metrics`, { signal: AbortSignal.timeout(5_000) })).text();
    return Number(/^grpc_server_handled_total\{grpc_code="InvalidArgument",grpc_method="Authenticate",.*\} (\d+)$/m.exec(metrics)?.[1] ?? 0);
  };
  try {
    const etcdctl = (...args: string[]) => execFileSync('etcdctl', [`--endpoints=${etcd.endpoint}`, ...args], { stdio: 'pipe' });
    etcdctl('user', 'add', 'root:root-secret');
    etcdctl('auth', 'enable');
    const prefix = '/wrong/services/mysql';
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--etcd=${etcd.endpoint}`, '--etcd-user=root'], { replaceEtcd: true, env: { AMBASSADOR_ETCD_PASSWORD: 'not-the-secret' } });
    await eventually(refused, (count) => count >= 1, 10_000, 'a first try');
    const first = await refused();
    await sleep(6_000); // the window the tries are counted in, not a wait for an event
    // 1, 2 and 4 s between tries: three more, four with jitter at most (the old loop made ~25).
    const more = (await refused()) - first;
    assert.ok(more <= 4, `${more} more tries in 6 s`);
    assert.is(ambassador.logs.filter((line) => line.includes('refused the credentials')).length, 1, ambassador.logs.join('\n'));
  } finally {
    await etcd.stop();
  }
});

test('an instance name of 100 KB: a problem whose log line and /state entry are cut short, and no metric label of it', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`]);
  await world.routesTo(ambassador.port, 'node-2');
  const long = 'n'.repeat(100_000);
  await world.etcd.put(`${prefix}/instances/${long}/private_ip`, '127.0.0.13');
  await world.etcd.put(`${prefix}/instances/${'w'.repeat(300)}/private_ip`, '127.0.0.13');
  await ambassador.waitForLog(/w{300}/);
  await ambassador.waitForLog(/n{30}/);
  assert.ok(ambassador.logs.every((line) => line.length < 1_000), 'short log lines');
  assert.ok(ambassador.logs.some((line) => /rejected .*: a key of 100021 bytes below the prefix: longer than the 512 allowed/.test(line)));
  assert.ok(ambassador.logs.some((line) => /rejected .*\/instances\/w{300}\/private_ip: an instance name of 300 bytes: longer than the 255 allowed/.test(line)));
  const metrics = await get(statusPort, '/metrics');
  assert.ok(metrics.body.split('\n').every((line) => line.length < 600), 'short metric lines');
  const state = await get(statusPort, '/state');
  assert.ok(state.body.length < 10_000, `/state is ${state.body.length} bytes`);
});

test('a burst of 300 SIGHUPs is one resync (fixed in ambassador.ts)', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`]);
  await world.routesTo(ambassador.port, 'node-2');
  // A millisecond apart, so that the kernel delivers each (it merges a signal that is still pending).
  for (let i = 0; i < 300; i++) {
    process.kill(ambassador.child.pid!, 'SIGHUP');
    await sleep(1);
  }
  await eventually(() => watchState(statusPort), (state) => state.snapshots >= 2, 5_000, 'the resync');
  await world.etcd.put(`${prefix}/master`, '3');
  await world.routesTo(ambassador.port, 'node-3');
  assert.is((await watchState(statusPort)).snapshots, 2);
  assert.ok(ambassador.logs.some((line) => /SIGHUP \(\d+ of them\): resyncing/.test(line)));
});

run();
