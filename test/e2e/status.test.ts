// Operating it: --status endpoints in healthy, stale and broken states; --dry-run with a diff; --once; the demo.

import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as assert from 'uvu/assert';
import { answers, freePort, eventually, openSession, whoAnswers } from '../../harness/net.ts';
import { processOf, stopPid, track } from '../../harness/processes.ts';
import { worldSuite } from '../../harness/world.ts';

const { test, run } = worldSuite('operating');

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: response.status, body: await response.text() };
}

function metric(text: string, name: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line === undefined ? undefined : Number(line.split(' ').at(-1));
}

test('serves /healthz, /metrics and /state that follow the changes', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  await world.etcd.put(`${prefix}/instances/9/private_ip`, '10.0.0.9 x');
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`]);
  await world.routesTo(ambassador.port, 'node-2');
  await ambassador.waitForLog(/status: serving/);
  const healthz = await get(statusPort, '/healthz');
  assert.is(healthz.status, 200);
  assert.match(healthz.body, /^ok: revision \d+, 1 server\(s\) routed/);

  await world.etcd.put(`${prefix}/master`, '3');
  await world.routesTo(ambassador.port, 'node-3');
  const metrics = (await eventually(() => get(statusPort, '/metrics'), (m) => m.body.includes('ambassador_changes_applied_total{path="runtime"} 1'), 5000, 'the runtime change counted')).body;
  assert.is(metric(metrics, 'ambassador_changes_applied_total{path="start"}'), 1);
  assert.is(metric(metrics, 'ambassador_changes_applied_total{path="reload"}'), 0);
  assert.is(metric(metrics, 'ambassador_master{instance_name="3"}'), 1);
  assert.is(metric(metrics, 'ambassador_instances_known'), 4);
  assert.is(metric(metrics, 'ambassador_instances_routed'), 1);
  assert.is(metric(metrics, 'ambassador_instances_rejected'), 1);
  assert.is(metric(metrics, 'ambassador_validation_failures_total'), 1);
  assert.is(metric(metrics, 'ambassador_etcd_connected'), 1);
  assert.is(metric(metrics, 'ambassador_haproxy_workers'), 1);
  assert.is(metric(metrics, 'ambassador_healthy'), 1);
  assert.is(metric(metrics, 'ambassador_convergence_seconds_count'), 2);
  assert.ok(metric(metrics, 'ambassador_etcd_events_total')! >= 1);
  assert.ok(metric(metrics, 'process_resident_memory_bytes')! > 0);

  const state = JSON.parse((await get(statusPort, '/state')).body);
  assert.is(state.master, '3');
  assert.equal(state.instances.filter((i: { routed: boolean }) => i.routed).map((i: { name: string }) => i.name), ['3']);
  assert.equal(state.problems.map((p: { key: string }) => p.key), [`${prefix}/instances/9/private_ip`]);
  assert.is(state.lastChange.path, 'runtime');
  assert.is(state.lastChange.description, 'master 2 -> 3');
  assert.is((await get(statusPort, '/nothing')).status, 404);
});

test('/metrics counts the traffic per instance, from haproxy at scrape time; a gone instance has no series', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`]);
  await world.routesTo(ambassador.port, 'node-2');
  const before = metric((await get(statusPort, '/metrics')).body, 'ambassador_backend_sessions_total{instance_name="2",port="primary"}') ?? 0;
  assert.equal(await answers(ambassador.port, 7), Array(7).fill('node-2'));
  const session = await openSession(ambassador.port);
  try {
    const text = (await get(statusPort, '/metrics')).body;
    assert.is(metric(text, 'ambassador_backend_sessions_total{instance_name="2",port="primary"}'), before + 8);
    assert.is(metric(text, 'ambassador_backend_sessions{instance_name="2",port="primary"}'), 1);
    assert.is(metric(text, 'ambassador_backend_sessions_total{instance_name="3",port="primary"}'), 0, 'a standby serves nothing');
    assert.ok(metric(text, 'ambassador_backend_sent_bytes_total{instance_name="2",port="primary"}')! >= 8 * 'node-2\n'.length);
    assert.is(metric(text, 'ambassador_backend_up{instance_name="2",port="primary"}'), 1);
    assert.is(metric(text, 'ambassador_backend_up{instance_name="3",port="primary"}'), undefined, 'no health series in maintenance');
    assert.is(metric(text, 'ambassador_backend_queued_connections{instance_name="2",port="primary"}'), 0);
    assert.is(metric(text, 'ambassador_backend_connection_errors_total{instance_name="2",port="primary"}'), 0);
    assert.ok(Math.abs(metric(text, 'ambassador_backend_status_changed_timestamp_seconds{instance_name="2",port="primary"}')! - Date.now() / 1000) < 60);
    assert.is(metric(text, 'ambassador_haproxy_connections'), 1);
    assert.ok(metric(text, 'ambassador_haproxy_connections_total')! >= 8);
    assert.is(metric(text, 'ambassador_haproxy_stats_up'), 1);
    assert.match(text, '# TYPE ambassador_backend_sessions_total counter');
  } finally {
    session.close();
  }
  await world.etcd.del(`${prefix}/instances/1/private_ip`);
  await ambassador.waitForLog(/applied revision \d+: removed 1/);
  assert.not.match((await get(statusPort, '/metrics')).body, 'instance_name="1"');
});

test('/healthz turns 503 when etcd is down longer than --max-stale, and 200 once it is back', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`, '--max-stale=2s']);
  await world.routesTo(ambassador.port, 'node-2');
  await ambassador.waitForLog(/status: serving/);
  try {
    await world.etcd.kill();
    await eventually(() => get(statusPort, '/healthz'), (r) => r.status === 503, 10_000, '503');
    const down = await get(statusPort, '/healthz');
    assert.match(down.body, /^the etcd state has not been confirmed current for \d+ s \(http:\/\/127\.0\.0\.1:\d+: .+\); serving revision \d+/);
    assert.is(metric((await get(statusPort, '/metrics')).body, 'ambassador_etcd_connected'), 0);
    assert.is(await whoAnswers(ambassador.port), 'node-2', 'still serving the last state');
  } finally {
    await world.etcd.start();
  }
  await eventually(() => get(statusPort, '/healthz'), (r) => r.status === 200, 15_000, '200 again');
});

// With the runtime API, only a change that needs a reload is checked by haproxy: an instance by DNS name.
for (const [mode, refusedAddress] of [['reload', '127.0.0.66'], ['runtime', 'refused.invalid']] as const) {
  test(`/healthz turns 503 when haproxy refuses the newest config (--apply=${mode})`, async ({ world }) => {
    const prefix = world.prefix();
    await world.writeSeed(prefix);
    const statusPort = await freePort();
    const picky = resolve(import.meta.dirname, '../fixtures/picky-haproxy');
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`, `--haproxy=${picky}`, `--apply=${mode}`]);
    await world.routesTo(ambassador.port, 'node-2');
    await world.etcd.put(`${prefix}/instances/6/private_ip`, refusedAddress);
    const refused = await eventually(() => get(statusPort, '/healthz'), (r) => r.status === 503, 10_000, '503');
    assert.match(refused.body, 'haproxy refused the config for the newest etcd state');
    assert.is(metric((await get(statusPort, '/metrics')).body, 'ambassador_haproxy_refused_total'), 1);
    await world.etcd.del(`${prefix}/instances/6/private_ip`);
    await eventually(() => get(statusPort, '/healthz'), (r) => r.status === 200, 10_000, '200 once the value is gone');
  });
}

test('--dry-run prints a unified diff against an existing config', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const dir = join(world.tempDir, 'dry');
  const config = join(world.tempDir, 'haproxy.cfg');
  const first = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--dry-run'], { runtimeDir: dir });
  assert.is(await first.exited, 0);
  writeFileSync(config, first.logs.filter((l) => !/^\d{4}-/.test(l)).join('\n') + '\n');
  await world.etcd.put(`${prefix}/master`, '3');
  const second = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--dry-run', `--haproxy-config=${config}`], { runtimeDir: dir });
  assert.is(await second.exited, 0);
  const output = second.logs.join('\n');
  assert.match(output, `--- ${config}\n+++ ${config} (revision`);
  assert.match(output, /\n-    server 2 127\.0\.0\.12:\d+\n/);
  assert.match(output, /\n\+    server 2 127\.0\.0\.12:\d+ disabled\n/);
  assert.match(output, /\n\+    server 3 127\.0\.0\.13:\d+\n/);
  assert.match(output, 'diff against');
});

test('--once starts haproxy, then reloads it, and exits each time', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const dir = join(world.tempDir, 'once');
  const port = await freePort();
  const once = async () => {
    const run = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--once'], { runtimeDir: dir, port });
    assert.is(await run.exited, 0, run.logs.join('\n'));
    return run;
  };
  const first = await once();
  await first.waitForLog(/once: revision \d+ applied, haproxy started/);
  const pid = Number(readFileSync(join(dir, 'haproxy.pid'), 'utf8'));
  track(pid);
  try {
    await world.routesTo(port, 'node-2');
    await world.etcd.put(`${prefix}/master`, '1');
    const second = await once();
    await second.waitForLog(/once: revision \d+ applied, haproxy reloaded/);
    await world.routesTo(port, 'node-1');
    assert.ok(processOf(pid)(), 'the same haproxy master');
  } finally {
    await stopPid(pid);
  }
});

test('the demo runs and exits 0', async () => {
  const demo = resolve(import.meta.dirname, '../../harness/demo.ts');
  const { code, output } = await new Promise<{ code: number | null; output: string }>((done) => {
    const child = execFile(process.execPath, [demo], { timeout: 60_000 }, (err, stdout, stderr) => done({ code: err ? (err.code as number) ?? 1 : 0, output: stdout + stderr }));
    track(child.pid);
  });
  assert.is(code, 0, output);
  assert.match(output, /The first new connection to reach instance 3 did so \d+ ms after the put/);
  assert.match(output, 'exited with code 0');
});

run();
