// A real Prometheus (2.42, Debian's) scrapes a real ambassador every second, with the README's alert rules:
// the target is up, the traffic shows per instance, and killing etcd past --max-stale fires the alert.
// The README's Grafana dashboard is checked here too, for metric names only.

import type { ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as assert from 'uvu/assert';
import { requireCommand } from '../../harness/etcd.ts';
import { answers, eventually, freePort } from '../../harness/net.ts';
import { startProcess, stopPid } from '../../harness/processes.ts';
import { docBlock } from '../../harness/docs.ts';
import { worldSuite, type World } from '../../harness/world.ts';

const { test, run } = worldSuite('Prometheus scraping ambassador');

async function api<T>(port: number, path: string): Promise<T> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`);
  const body = (await response.json()) as { status: string; data: T };
  if (body.status !== 'success') throw new Error(`${path}: ${JSON.stringify(body)}`);
  return body.data;
}

async function query(port: number, expr: string): Promise<number | undefined> {
  const data = await api<{ result: { value: [number, string] }[] }>(port, `/api/v1/query?query=${encodeURIComponent(expr)}`);
  return data.result[0] === undefined ? undefined : Number(data.result[0].value[1]);
}

test('scraped every second: the target is up, sessions show per instance, and etcd killed past --max-stale fires the README\'s alert', async ({ world }) => {
  requireCommand('prometheus', 'apt-get install -y prometheus');
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`, '--max-stale=2s']);
  await world.routesTo(ambassador.port, 'node-2');

  const dir = join(world.tempDir, 'prometheus');
  mkdirSync(dir);
  writeFileSync(join(dir, 'ambassador-alerts.yml'), docBlock('docs/operating.md', '## Alerts', 'yaml'));
  writeFileSync(join(dir, 'prometheus.yml'), [
    'global: {scrape_interval: 1s, evaluation_interval: 1s}',
    'rule_files: [ambassador-alerts.yml]',
    'scrape_configs:',
    `  - {job_name: ambassador, static_configs: [{targets: ["127.0.0.1:${statusPort}"]}]}`,
    '',
  ].join('\n'));
  const port = await freePort();
  const prometheus = startProcess('prometheus', [
    `--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn',
  ]);
  try {
    await scrapedAndAlerted(port, prometheus, ambassador.port, world);
  } finally {
    if (prometheus.pid !== undefined) await stopPid(prometheus.pid);
  }
});

async function scrapedAndAlerted(port: number, prometheus: ChildProcess, proxyPort: number, world: World): Promise<void> {
  let log = '';
  prometheus.stdout!.resume();
  prometheus.stderr!.on('data', (data) => (log = (log + data).slice(-3000)));
  const ready = () => fetch(`http://127.0.0.1:${port}/-/ready`).then((r) => r.status === 200, () => false);
  await eventually(ready, (ok) => ok || prometheus.exitCode !== null, 30_000, 'Prometheus ready');
  assert.is(prometheus.exitCode, null, log);

  await eventually(() => query(port, 'up{job="ambassador"}'), (up) => up === 1, 15_000, 'the target up');
  const sessions = `ambassador_backend_sessions_total{job="ambassador",instance_name="2",port="primary"}`;
  const before = (await eventually(() => query(port, sessions), (value) => value !== undefined, 15_000, 'the per-instance series')) ?? 0;
  assert.equal(await answers(proxyPort, 10), Array(10).fill('node-2'));
  await eventually(() => query(port, sessions), (value) => value !== undefined && value >= before + 10, 15_000, 'the 10 sessions counted for instance 2');
  assert.is(await query(port, 'ambassador_backend_sessions_total{instance_name="3"}'), 0, 'none for the standby');

  type Alerts = { alerts: { labels: { alertname: string }; state: string }[] };
  const watchDown = (data: Alerts) => data.alerts.find((alert) => alert.labels.alertname === 'AmbassadorEtcdWatchDown');
  assert.is(watchDown(await api<Alerts>(port, '/api/v1/alerts')), undefined, 'not before');
  try {
    const killedAt = performance.now();
    await world.etcd.kill();
    await eventually(() => api<Alerts>(port, '/api/v1/alerts'), (data) => watchDown(data)?.state === 'firing', 30_000, 'AmbassadorEtcdWatchDown firing');
    console.log(`      etcd killed → AmbassadorEtcdWatchDown firing in Prometheus: ${(performance.now() - killedAt).toFixed(0)} ms (--max-stale=2s, scrape and evaluation every 1 s)`);
  } finally {
    await world.etcd.start();
  }
}

test('the README\'s Grafana dashboard names only metrics that /metrics exports', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`]);
  await world.routesTo(ambassador.port, 'node-2');
  const exported = new Set(
    (await (await fetch(`http://127.0.0.1:${statusPort}/metrics`)).text())
      .split('\n')
      .filter((line) => line !== '' && !line.startsWith('#'))
      .map((line) => /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)![0]),
  );
  const dashboard = JSON.parse(docBlock('docs/operating.md', '<summary>ambassador-dashboard.json</summary>', 'json')) as { panels: { targets: { expr: string }[] }[] };
  const exprs = dashboard.panels.flatMap((panel) => panel.targets.map((target) => target.expr));
  assert.ok(exprs.length >= 10);
  // Metric names: identifiers that are not PromQL's functions, keywords, labels or variables.
  const notMetrics = /^(sum|min|max|avg|rate|increase|by|on|and|or|le|histogram_quantile|job|instance|instance_name|port|path)$/;
  const names = new Set(exprs.flatMap((expr) => [...expr.replace(/"[^"]*"/g, '').replace(/\$\w+/g, '').matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)].map((m) => m[0]).filter((word) => !notMetrics.test(word))));
  assert.ok(names.size >= 15, [...names].join(' '));
  for (const name of names) assert.ok(exported.has(name), `${name} is not in /metrics`);
});

run();
