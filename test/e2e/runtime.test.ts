// Hitless changes through haproxy's runtime API, against real etcd and haproxy.

import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as assert from 'uvu/assert';
import { adminCommand, serverStates, workerPids } from '../../harness/haproxy.ts';
import { answers, eventually, freePort, openSession, startBackend, whoAnswers } from '../../harness/net.ts';
import { stopPid, track } from '../../harness/processes.ts';
import { worldSuite, type World } from '../../harness/world.ts';

const { test, run } = worldSuite('runtime API');

test('a failover cuts sessions to the old master before the new one takes connections, with no reload', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  const master = ambassador.haproxyPid()!;
  const worker = workerPids(master);
  const session = await openSession(ambassador.port);
  assert.is(session.greeting, 'node-2');
  await world.etcd.put(`${prefix}/master`, '3');
  await session.closed;
  await world.routesTo(ambassador.port, 'node-3');
  await ambassador.waitForLog(/applied revision \d+: master 2 -> 3 \(runtime, \d+ ms\)/);
  assert.equal(workerPids(master), worker, 'same haproxy worker');
  assert.equal(await answers(ambassador.port, 4), Array(4).fill('node-3'));
});

test('membership changes keep the same haproxy worker and the config file in step with what is live', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`]);
  await world.servedBy(ambassador.port, ['node-1', 'node-2', 'node-3']);
  const master = ambassador.haproxyPid()!;
  const worker = workerPids(master);
  await world.etcd.del(`${prefix}/instances/1/private_ip`);
  await world.servedBy(ambassador.port, ['node-2', 'node-3']);
  await world.etcd.put(`${prefix}/instances/4/private_ip`, '127.0.0.11');
  await world.servedBy(ambassador.port, ['node-1', 'node-2', 'node-3']);
  await world.etcd.put(`${prefix}/instances/3/private_ip`, '127.0.0.12');
  await world.servedBy(ambassador.port, ['node-1', 'node-2']);
  assert.equal(workerPids(master), worker, 'same haproxy worker');
  assert.not.ok(ambassador.logs.some((line) => line.includes('(reload, ')), 'no reload');
  await eventually(() => serverStates(ambassador.runtimeDir), (live) => !live.some((s) => s.startsWith('1 ')), 5000, 'the drained server deleted');
  const config = readFileSync(ambassador.configPath, 'utf8');
  assert.match(config, /\n    server 2 127\.0\.0\.12:\d+\n    server 3 127\.0\.0\.12:\d+\n    server 4 127\.0\.0\.11:\d+\n$/);
});

test('a removed instance drains: its sessions stay, new connections go elsewhere, then it is deleted', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  await world.etcd.del(`${prefix}/instances/3/private_ip`);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--log-level=debug']);
  await world.routesTo(ambassador.port, 'node-1');
  let session = await openSession(ambassador.port);
  while (session.greeting !== 'node-1') {
    session.close();
    session = await openSession(ambassador.port);
  }
  await world.etcd.del(`${prefix}/instances/1/private_ip`);
  await world.servedBy(ambassador.port, ['node-2']);
  // The sweep of draining servers is the one step that could wrongly delete the server under the session:
  // two sweeps that saw it and kept it, then the session is still there.
  const kept = /haproxy: drained server service\/1 kept, 1 session\(s\) open/;
  const first = await ambassador.waitForLog(kept);
  await ambassador.waitForLog(kept, undefined, ambassador.logs.indexOf(first) + 1);
  assert.not.ok(session.isClosed(), 'the session to the removed instance lives on');
  assert.ok((await serverStates(ambassador.runtimeDir)).some((s) => /^1 .* drain$/.test(s)), 'still draining');
  session.close();
  await eventually(() => serverStates(ambassador.runtimeDir), (live) => !live.some((s) => s.startsWith('1 ')), 5000, 'the drained server deleted');
});

test('a reload yields exactly what was live after runtime changes', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  await world.etcd.put(`${prefix}/master`, '3');
  await world.etcd.put(`${prefix}/instances/4/private_ip`, '127.0.0.11');
  await world.etcd.put(`${prefix}/instances/1/private_ip`, '127.0.0.12');
  await ambassador.waitForLog(/moved 1 \(runtime/);
  await world.routesTo(ambassador.port, 'node-3');
  const before = await serverStates(ambassador.runtimeDir);
  const master = ambassador.haproxyPid()!;
  const oldWorkers = workerPids(master);
  // haproxy can drop a SIGHUP that comes while it settles after a load: say it again until a new worker runs.
  const reloaded = () => workerPids(master).filter((pid) => !oldWorkers.includes(pid)).length > 0;
  for (let attempt = 0; attempt < 5 && !reloaded(); attempt++) {
    process.kill(master, 'SIGHUP');
    await eventually(reloaded, (done) => done, 2000, 'a new worker').catch(() => {});
  }
  await eventually(() => workerPids(master), (now) => now.length > 0 && !now.some((pid) => oldWorkers.includes(pid)), 10_000, 'the new worker alone');
  assert.equal(await serverStates(ambassador.runtimeDir), before);
  assert.equal(await answers(ambassador.port, 4), Array(4).fill('node-3'));
});

test('a runtime command that fails falls back to a reload that ends on the wanted state', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  // Behind ambassador's back: server 3 disappears from the live haproxy.
  assert.match(await adminCommand(ambassador.runtimeDir, 'del server service/3'), 'Server deleted.');
  await world.etcd.put(`${prefix}/master`, '3');
  await ambassador.waitForLog(/runtime commands failed, reloading instead: .*set server service\/3 state ready.*No such server/);
  await ambassador.waitForLog(/applied revision \d+: master 2 -> 3 \(reload, \d+ ms\)/);
  await world.routesTo(ambassador.port, 'node-3');
  assert.equal(await answers(ambassador.port, 4), Array(4).fill('node-3'));
});

test('an instance by DNS name is resolved by haproxy through a checked reload', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const port = await freePort('127.0.0.1');
  // localhost may resolve to ::1 first (it does for haproxy 3.2 on Debian sid): one backend on each.
  const local = await startBackend('node-localhost', '127.0.0.1', port);
  const local6 = await startBackend('node-localhost', '::1', port);
  try {
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
    await world.routesTo(ambassador.port, 'node-2');
    await world.etcd.put(`${prefix}/instances/named/port`, String(port));
    await world.etcd.put(`${prefix}/instances/named/private_ip`, 'localhost');
    await ambassador.waitForLog(/reloading, the runtime API cannot do this change: server service\/named has a DNS name \(localhost\)/);
    await world.etcd.put(`${prefix}/master`, 'named');
    await ambassador.waitForLog(/master 2 -> named \(runtime, \d+ ms\)/);
    await world.routesTo(ambassador.port, 'node-localhost');
    assert.match(readFileSync(ambassador.configPath, 'utf8'), `\n    server named localhost:${port}\n`);
  } finally {
    await local.close();
    await local6.close();
  }
});

test('a reload ends once the worker it replaced, still holding a session, says its proxies stopped, however haproxy words it', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--log-level=debug']);
  await world.routesTo(ambassador.port, 'node-2');
  // haproxy 2.6 leaves a runtime command's context ("CLI") on the worker's thread, and a stop that thread says
  // later carries it ("(pid) : CLI : Proxy service stopped"); later releases do not.
  const contextKept = /using HAProxy version 2\.6\./.test(ambassador.logs.join('\n'));
  const inContext = () => ambassador.logs.filter((line) => /\(\d+\) : \S.* : Proxy service stopped/.test(line)).length;
  let rounds = 0;
  for (; rounds < 8 && inContext() === 0; rounds++) {
    const from = ambassador.logs.length;
    // Two changes, two runtime connections: one of them on the thread that says the stop, as often as not.
    for (const added of [`a${rounds}`, `b${rounds}`]) {
      await world.etcd.put(`${prefix}/instances/${added}/private_ip`, '127.0.0.11');
      await ambassador.waitForLog(new RegExp(`added ${added} \\(runtime, `), 10_000, from);
    }
    // A worker with no session exits at once; one with a session lives on, stopped, as in production.
    const session = await openSession(ambassador.port);
    try {
      // A DNS name is a change only a reload makes.
      await world.etcd.put(`${prefix}/instances/named${rounds}/private_ip`, 'localhost');
      await ambassador.waitForLog(new RegExp(`added named${rounds} \\(reload, `), 10_000, from);
    } finally {
      session.close();
    }
  }
  if (contextKept) assert.ok(inContext() > 0, `a worker said its proxies stopped with a context, in ${rounds} reloads`);
  assert.not.ok(ambassador.logs.some((line) => line.includes('has not said its proxies stopped')), `each of ${rounds} reloads saw the worker it replaced stop`);
});

// More servers with health checks than haproxy's file limit allows: `haproxy -c` passes, the load fails.
async function tooManyServers(world: World, prefix: string) {
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 600; i++) writes.push(world.etcd.put(`${prefix}/instances/x${i}/private_ip`, `127.1.${i >> 8}.${i & 255}`));
  await Promise.all(writes);
}

test('more servers than haproxy can open under the file limit are refused before haproxy sees them: the last good one keeps serving', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--apply=reload'], { limitFiles: 512 });
  await world.routesTo(ambassador.port, 'node-2');
  await tooManyServers(world, prefix);
  await ambassador.waitForLog(/haproxy: refused the config for the newest state; the last good one keeps serving/, 30_000);
  await ambassador.waitForLog(/haproxy: refused the config.*under the open-file limit of 512/, 1000);
  // The writes land in any order, so a config with some of them can load; one with all 600 cannot.
  const servers = readFileSync(ambassador.configPath, 'utf8').match(/\n {4}server x\d+ /g)?.length ?? 0;
  assert.ok(servers < 600, `the file is a config that runs, not the refused one (${servers} of 600 servers)`);
  assert.is(await whoAnswers(ambassador.port), 'node-2', 'the last good config serves');
});

test('--once: a config haproxy cannot load is refused (exit 1), and the haproxy it started keeps the last good one', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const dir = join(world.tempDir, 'once-refused');
  const port = await freePort();
  const once = (expected: number) =>
    world.start([`--etcd-prefix=${prefix}`, '--master-only', '--once'], { runtimeDir: dir, port, limitFiles: 512 }).then(async (run) => {
      assert.is(await run.exited, expected, run.logs.join('\n'));
      return run;
    });
  await once(0);
  const pid = Number(readFileSync(join(dir, 'haproxy.pid'), 'utf8'));
  track(pid);
  try {
    await world.routesTo(port, 'node-2');
    await tooManyServers(world, prefix);
    const refused = await once(1);
    assert.ok(refused.logs.some((line) => line.includes('did not reload: haproxy could not load the config')), refused.logs.join('\n'));
    assert.is(await whoAnswers(port), 'node-2', 'the last good config serves');
  } finally {
    await stopPid(pid);
  }
});

test('with --apply=reload every change is a validated reload', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--apply=reload']);
  await world.routesTo(ambassador.port, 'node-2');
  await world.etcd.put(`${prefix}/master`, '1');
  await ambassador.waitForLog(/master 2 -> 1 \(reload, \d+ ms\)/);
  await world.routesTo(ambassador.port, 'node-1');
  assert.is(await whoAnswers(ambassador.port), 'node-1');
});

test('reloads back to back lose no SIGHUP', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const hasty = resolve(import.meta.dirname, '../fixtures/hasty-haproxy');
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--apply=reload', `--haproxy=${hasty}`]);
  await world.routesTo(ambassador.port, 'node-2');
  // Each flip lands while the last reload is in flight, so its SIGHUP follows that reload's load at once; the
  // flips go on until three reloads have followed each other (however long a reload takes here).
  const reloads = () => ambassador.logs.filter((line) => /master \S+ -> \S+ \(reload, /.test(line)).length;
  const before = reloads();
  for (let flip = 0; flip < 600 && reloads() - before < 3; flip++) {
    await world.etcd.put(`${prefix}/master`, flip % 2 === 0 ? '1' : '3');
    await sleep(30);
  }
  await world.etcd.put(`${prefix}/master`, '3');
  await world.servedBy(ambassador.port, ['node-3']);
  assert.not.ok(ambassador.logs.some((line) => line.includes('sending it again')), 'no SIGHUP lost');
  assert.ok(reloads() - before >= 3, `reloads followed each other: ${reloads() - before}`);
});

run();
