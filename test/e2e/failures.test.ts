// ambassador's own steps failing, against real etcd and haproxy: a config check that hangs, an haproxy that
// cannot be run or spawned, a slow reload interrupted, a watch that dies as soon as it connects, a failover
// that leaves haproxy without a server for an instant. Faults are injected by wrapper haproxys (test/fixtures).

import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as assert from 'uvu/assert';
import { within } from '../../harness/limits.ts';
import { eventually, freePort, whoAnswers } from '../../harness/net.ts';
import { processOf } from '../../harness/processes.ts';
import { startRelay } from '../../harness/relay.ts';
import { worldSuite } from '../../harness/world.ts';

const { test, run } = worldSuite('failures of ambassador\'s own steps');

const fixture = (name: string) => resolve(import.meta.dirname, '../fixtures', name);
const realHaproxy = () => execFileSync('sh', ['-c', 'command -v haproxy || echo /usr/sbin/haproxy'], { encoding: 'utf8' }).trim();

async function healthz(port: number): Promise<{ status: number; body: string }> {
  const response = await fetch(`http://127.0.0.1:${port}/healthz`);
  return { status: response.status, body: await response.text() };
}

test('a config check that hangs is cut off and retried: /healthz 503 past --max-stale, the newest state applied once the check answers', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const flag = join(world.tempDir, 'stuck-check');
  const statusPort = await freePort();
  const ambassador = await world.start(
    [`--etcd-prefix=${prefix}`, '--master-only', '--apply=reload', `--haproxy=${fixture('stuck-check-haproxy')}`, `--status=127.0.0.1:${statusPort}`, '--max-stale=2s'],
    { env: { STUCK_CHECK_FLAG: flag } },
  );
  await world.routesTo(ambassador.port, 'node-2');
  writeFileSync(flag, '');
  const stuckAt = performance.now();
  await world.etcd.put(`${prefix}/master`, '3');
  // Within --max-stale (2 s) plus the check's time limit (10 s).
  const unhealthy = await eventually(() => healthz(statusPort), (h) => h.status === 503, 14_000, '/healthz 503');
  console.log(`      check stuck → /healthz 503: ${(performance.now() - stuckAt).toFixed(0)} ms`);
  assert.match(unhealthy.body, /has not been live for \d+ s/);
  assert.is(await whoAnswers(ambassador.port), 'node-2', 'the last good state keeps serving');
  await ambassador.waitForLog(/could not apply the newest state \(.*did not finish within 10 s\); retrying/, 15_000);
  unlinkSync(flag);
  const freedAt = performance.now();
  await world.routesTo(ambassador.port, 'node-3', 20_000);
  console.log(`      check answers again → applied: ${(performance.now() - freedAt).toFixed(0)} ms`);
  await ambassador.waitForLog(/applied after \d+ failed attempt\(s\)/);
  assert.is(ambassador.logs.filter((line) => line.includes('could not apply the newest state')).length, 1, 'said once per streak');
  await eventually(() => healthz(statusPort), (h) => h.status === 200, 5000, '/healthz 200 again');
});

test('an haproxy executable gone from its path is a failure to retry, said once; back in place, the change is applied', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const dir = mkdtempSync(join(tmpdir(), 'ambassador-gone-'));
  const link = join(dir, 'haproxy');
  symlinkSync(realHaproxy(), link);
  try {
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--apply=reload', `--haproxy=${link}`]);
    await world.routesTo(ambassador.port, 'node-2');
    unlinkSync(link);
    await world.etcd.put(`${prefix}/master`, '3');
    await ambassador.waitForLog(/could not apply the newest state \(.*could not run \(ENOENT\)\); retrying/);
    assert.is(await whoAnswers(ambassador.port), 'node-2', 'the last good state keeps serving');
    symlinkSync(realHaproxy(), link);
    await world.routesTo(ambassador.port, 'node-3', 15_000);
    assert.is(ambassador.logs.filter((line) => line.includes('could not apply the newest state')).length, 1, 'said once per streak');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a spawn of the haproxy master that fails is an exit like any other: one line, exit 1', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  // No setpriv on this PATH, so ambassador spawns haproxy itself, and that spawn is what fails.
  const dir = mkdtempSync(join(tmpdir(), 'ambassador-vanishing-'));
  const vanishing = join(dir, 'haproxy');
  copyFileSync(fixture('vanishing-haproxy'), vanishing);
  try {
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--haproxy=${vanishing}`], { env: { PATH: dir, REAL_HAPROXY: realHaproxy() } });
    assert.is(await within(ambassador.exited, 20_000, 'exit'), 1);
    await ambassador.waitForLog(/stopping: haproxy master could not be started \(spawn .*ENOENT\)/);
    assert.not.ok(ambassador.logs.some((line) => /^\s+at /.test(line)), 'no stack trace');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGTERM while haproxy is loading a new config: exit 0, no haproxy left', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--apply=reload', '--log-level=debug', `--haproxy=${fixture('slow-reload-haproxy')}`]);
  await world.routesTo(ambassador.port, 'node-2');
  const haproxy = processOf(ambassador.haproxyPid()!);
  const from = ambassador.logs.length;
  await world.etcd.put(`${prefix}/master`, '3');
  // The master has taken the SIGHUP; the wrapper holds its re-execution for 1 s.
  await ambassador.waitForLog(/haproxy: \[NOTICE\].*Reloading HAProxy/, 10_000, from);
  assert.is(await ambassador.stop(), 0);
  const after = ambassador.logs.slice(from);
  const stopping = after.findIndex((line) => line.includes('stopping: SIGTERM'));
  assert.ok(stopping >= 0);
  assert.not.ok(after.slice(0, stopping).some((line) => line.includes('master 2 -> 3')), 'the reload was still in flight');
  assert.not.ok(haproxy(), 'no haproxy left');
});

test('a watch that dies right after connecting backs off instead of hammering etcd, and says so once', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const relay = await startRelay(world.etcd.endpoint, { dropAfterMs: 300 });
  try {
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--etcd=${relay.endpoint}`], { replaceEtcd: true });
    await world.routesTo(ambassador.port, 'node-2');
    const first = relay.connections();
    const from = ambassador.logs.length;
    // Over 5 s: with the backoff reset after every connection, one each ~0.35-0.4 s (13 or more); backing off
    // (to 0.2-0.4 s), one each ~0.5-0.7 s (7-10).
    await new Promise((resolve) => setTimeout(resolve, 5000));
    const made = relay.connections() - first;
    console.log(`      connections in 5 s while each dies after 300 ms: ${made}`);
    assert.ok(made <= 10, `${made} connections in 5 s`);
    const warnings = ambassador.logs.slice(from).filter((line) => line.includes('WARN  etcd:'));
    assert.ok(warnings.length <= 2, warnings.join('\n'));
    assert.is(await whoAnswers(ambassador.port), 'node-2', 'the last state serves meanwhile');
  } finally {
    await relay.close();
  }
});

test('a failover logs no "no server available": that instant is ours; a master that is not routable stays loud', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--log-level=debug']);
  await world.routesTo(ambassador.port, 'node-2');
  for (const master of ['3', '1', '2']) {
    await world.etcd.put(`${prefix}/master`, master);
    await world.routesTo(ambassador.port, `node-${master}`);
  }
  await ambassador.waitForLog(/master 1 -> 2 \(runtime/);
  const loud = (line: string) => /(WARN|ERROR).*has no server available/.test(line);
  assert.not.ok(ambassador.logs.some(loud), ambassador.logs.filter(loud).join('\n'));
  await world.etcd.put(`${prefix}/master`, '9');
  await ambassador.waitForLog(/WARN  haproxy: .*proxy 'service' has no server available/);
});

run();
