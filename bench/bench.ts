// npm run bench: dist/ambassador against a real etcd and haproxy on loopback, each workload run twice,
// with the runtime API (--apply=runtime) and with reloads only (--apply=reload). Prints a table and writes
// it as JSON to bench/results/latest.json. Every loop is bounded; everything started is stopped.

import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAmbassador, type RunningAmbassador } from '../test/helpers/ambassador.ts';
import { startEtcd } from '../test/helpers/etcd.ts';
import { serverStates, workerPids } from '../test/helpers/haproxy.ts';
import { freePort, openSession, startBackend, whoAnswers, type Session } from '../test/helpers/net.ts';
import { stopAll } from '../test/helpers/processes.ts';

type Mode = 'runtime' | 'reload';
const MODES: Mode[] = ['runtime', 'reload'];
const root = resolve(import.meta.dirname, '..');

interface Row {
  metric: string;
  target: string;
  values: Partial<Record<Mode, number>>;
  unit: string;
}
const rows: Row[] = [];
const record = (metric: string, mode: Mode, value: number, unit: string, target = '') => {
  let row = rows.find((r) => r.metric === metric);
  if (!row) rows.push((row = { metric, target, values: {}, unit }));
  row.values[mode] = value;
};

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
};

const etcd = await startEtcd();
const backendPort = await freePort('127.0.0.11');
const backends = await Promise.all([1, 2, 3].map((i) => startBackend(`node-${i}`, `127.0.0.1${i}`, backendPort)));
let prefixes = 0;
const running: RunningAmbassador[] = [];

async function start(mode: Mode, flags: string[]): Promise<RunningAmbassador & { port: number; started: number }> {
  const port = await freePort();
  const started = performance.now();
  const ambassador = await startAmbassador(
    // debug: the runtime commands are counted from the log.
    [`--etcd=${etcd.endpoint}`, `--port=${port}`, '--bind=127.0.0.1', `--backend-port=${backendPort}`, `--apply=${mode}`, ...(flags.some((f) => f.startsWith('--log-level=')) ? [] : ['--log-level=debug']), ...flags],
    { binary: 'dist' },
  );
  running.push(ambassador);
  return Object.assign(ambassador, { port, started });
}

async function stopRunning() {
  await Promise.all(running.splice(0).map((a) => a.cleanup()));
}

// The servers haproxy routes to now: "name address:port", drained and disabled ones left out.
async function routed(runtimeDir: string): Promise<string[]> {
  return (await serverStates(runtimeDir)).filter((s) => s.endsWith(' ready')).map((s) => s.slice(0, -' ready'.length));
}

async function expected(prefix: string): Promise<string[]> {
  const keys = await etcd.client.getAll().prefix(`${prefix}/instances/`).strings();
  return Object.entries(keys)
    .map(([key, address]) => `${key.split('/').at(-2)} ${address}:${backendPort}`)
    .sort();
}

const reloads = (a: RunningAmbassador) => a.logs.filter((line) => line.includes('(reload, ')).length;
const runtimeCommands = (a: RunningAmbassador) =>
  a.logs.filter((line) => /haproxy: (set server|add server|del server|enable health|shutdown sessions) /.test(line)).length;
const rssMb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

async function writeSeed(prefix: string) {
  for (const i of [1, 2, 3]) await etcd.put(`${prefix}/instances/${i}/private_ip`, `127.0.0.1${i}`);
  await etcd.put(`${prefix}/master`, '2');
}

async function waitFor(probe: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (await probe()) return true;
    await sleep(2);
  }
  return false;
}

// Startup: process start → the first connection answered by the master (a small registry, etcd up).
async function startup(mode: Mode, runs = 5) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  await writeSeed(prefix);
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const ambassador = await start(mode, [`--etcd-prefix=${prefix}`, '--master-only']);
    await waitFor(async () => (await whoAnswers(ambassador.port, '127.0.0.1', 200)) === 'node-2', 10_000);
    times.push(performance.now() - ambassador.started);
    await stopRunning();
  }
  record('startup: process start → first connection served, median', mode, percentile(times, 50), 'ms');
}

// Failover: put master → the first new connection that reaches the new master; and how long a session
// to the old master lives after the put.
async function failover(mode: Mode, count = 50) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  await writeSeed(prefix);
  const ambassador = await start(mode, [`--etcd-prefix=${prefix}`, '--master-only']);
  await waitFor(async () => (await whoAnswers(ambassador.port)) === 'node-2', 10_000);
  const latencies: number[] = [];
  const cuts: number[] = [];
  let master = '2';
  for (let i = 0; i < count; i++) {
    const next = master === '2' ? '3' : '2';
    const session: Session = await openSession(ambassador.port);
    let cutAt = Infinity;
    void session.closed.then(() => (cutAt = performance.now()));
    const put = performance.now();
    await etcd.put(`${prefix}/master`, next);
    let answer = '';
    while (answer !== `node-${next}` && performance.now() - put < 10_000) answer = await whoAnswers(ambassador.port);
    latencies.push(performance.now() - put);
    await waitFor(async () => session.isClosed(), 1000);
    cuts.push(cutAt - put);
    session.close();
    master = next;
    await sleep(20);
  }
  record('failover: put → new master answers, p50', mode, percentile(latencies, 50), 'ms');
  record('failover: put → new master answers, p99', mode, percentile(latencies, 99), 'ms', '≤ 25');
  record('failover: put → new master answers, max', mode, Math.max(...latencies), 'ms');
  record('failover: put → old master sessions cut, p99', mode, percentile(cuts, 99), 'ms', '≤ 50');
  record('failover: old master sessions not cut within 1 s', mode, cuts.filter((c) => c === Infinity).length, `of ${count}`, '0');
  record('failover: reloads', mode, reloads(ambassador), `for ${count}`, '0');
  await stopRunning();
}

// Burst: 1,000 membership writes as fast as etcd takes them → the final state live.
async function burst(mode: Mode, writes = 1000) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  for (let i = 0; i < 20; i++) await etcd.put(`${prefix}/instances/i${i}/private_ip`, `127.0.0.1${1 + (i % 3)}`);
  const ambassador = await start(mode, [`--etcd-prefix=${prefix}`]);
  await ambassador.waitForLog(/applied revision/);
  const reloadsBefore = reloads(ambassador);
  const commandsBefore = runtimeCommands(ambassador);
  let next = 0;
  const writer = async () => {
    while (next < writes) {
      const i = next++;
      const key = `${prefix}/instances/i${(i * 7) % 50}/private_ip`;
      if (i % 5 === 4) await etcd.del(key);
      else await etcd.put(key, `127.0.0.1${1 + (i % 3)}`);
    }
  };
  await Promise.all(Array.from({ length: 32 }, writer));
  const lastWrite = performance.now();
  const want = (await expected(prefix)).join();
  const live = await waitFor(async () => (await routed(ambassador.runtimeDir)).join() === want, 10_000);
  const liveAfter = performance.now() - lastWrite;
  await sleep(1000);
  const finalLive = await routed(ambassador.runtimeDir);
  const wantList = want.split(',');
  const stale = finalLive.filter((s) => !wantList.includes(s)).length + wantList.filter((s) => !finalLive.includes(s)).length;
  record(`burst of ${writes}: last write → final state live`, mode, live ? liveAfter : Infinity, 'ms', '≤ 200');
  record(`burst of ${writes}: reloads`, mode, reloads(ambassador) - reloadsBefore, '', '0');
  record(`burst of ${writes}: runtime commands`, mode, runtimeCommands(ambassador) - commandsBefore, '');
  record(`burst of ${writes}: stale servers at the end`, mode, stale, '', '0');
  await stopRunning();
}

// Changes on instances d..h while a, b and c stay: the service is never empty.
async function churn(prefix: string, changes: number, gapMs: number) {
  const names = ['d', 'e', 'f', 'g', 'h'];
  for (let i = 0; i < changes; i++) {
    const key = `${prefix}/instances/${names[i % names.length]}/private_ip`;
    if (i % 4 === 3) await etcd.del(key);
    else await etcd.put(key, `127.0.0.1${1 + (i % 3)}`);
    await sleep(gapMs);
  }
}

async function writeStable(prefix: string) {
  for (const [name, i] of [['a', 1], ['b', 2], ['c', 3]] as const) await etcd.put(`${prefix}/instances/${name}/private_ip`, `127.0.0.1${i}`);
}

// Zero loss: new connections as fast as a client process makes them while 100 changes are applied.
async function zeroLoss(mode: Mode) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  await writeStable(prefix);
  const ambassador = await start(mode, [`--etcd-prefix=${prefix}`]);
  await ambassador.waitForLog(/applied revision/);
  const load = spawn(process.execPath, [join(root, 'bench/load.ts'), String(ambassador.port), '20000', '24'], { stdio: ['pipe', 'pipe', 'inherit'] });
  let output = '';
  load.stdout.on('data', (data) => (output += data));
  const done = new Promise((resolve) => load.on('exit', resolve));
  await sleep(300);
  await churn(prefix, 100, 25);
  await sleep(300);
  load.stdin.end();
  await done;
  const { ok, failed, seconds } = JSON.parse(output) as { ok: number; failed: number; seconds: number };
  record('zero loss: new connections per second', mode, ok / seconds, '/s', '≥ 2000');
  record('zero loss: failed connections during 100 changes', mode, failed, '', '0');
  await stopRunning();
}

// Long-lived sessions: 50 held open across 100 membership changes.
async function longLived(mode: Mode) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  await writeStable(prefix);
  const ambassador = await start(mode, [`--etcd-prefix=${prefix}`]);
  await ambassador.waitForLog(/applied revision/);
  const sessions = await Promise.all(Array.from({ length: 50 }, () => openSession(ambassador.port)));
  await churn(prefix, 100, 30);
  await sleep(1000);
  record('long-lived: haproxy processes after 100 changes', mode, 1 + workerPids(ambassador.haproxyPid()!).length, '', '2');
  record('long-lived: sessions cut (of 50)', mode, sessions.filter((s) => s.isClosed()).length, '', '0');
  for (const session of sessions) session.close();
  await stopRunning();
}

// Soak: 20,000 membership changes over a few minutes, ambassador's and haproxy's memory sampled.
async function soak(mode: Mode, changes = 20_000) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  await writeStable(prefix);
  const statusPort = await freePort();
  const ambassador = await start(mode, [`--etcd-prefix=${prefix}`, '--log-level=info', `--status=127.0.0.1:${statusPort}`]);
  await ambassador.waitForLog(/applied revision/);
  const haproxy = ambassador.haproxyPid()!;
  const heapMb = async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${statusPort}/metrics`)).text();
    return Number(/^nodejs_heap_size_used_bytes (\S+)$/m.exec(metrics)![1]) / 1e6;
  };
  const rss = () => ({ ambassador: rssMb(ambassador.child.pid!), haproxy: rssMb(haproxy) + workersRss(haproxy) });
  await sleep(1000);
  const first = rss();
  const firstHeap = await heapMb();
  const samples = [first];
  const heaps = [firstHeap];
  const sampler = setInterval(() => {
    samples.push(rss());
    void heapMb().then((mb) => heaps.push(mb));
  }, 2000);
  const began = performance.now();
  let warmedUp = first;
  // About 110 changes a second: a few minutes in all.
  for (let i = 0; i < changes; i++) {
    if (i === changes / 4) warmedUp = rss();
    const key = `${prefix}/instances/s${i % 200}/private_ip`;
    if (i % 7 === 6) await etcd.del(key);
    else await etcd.put(key, `127.0.0.1${1 + (i % 3)}`);
    await sleep(8);
  }
  const seconds = (performance.now() - began) / 1000;
  await sleep(3000);
  clearInterval(sampler);
  const last = rss();
  samples.push(last);
  const want = (await expected(prefix)).join();
  record(`soak: ${changes} changes, over`, mode, seconds, 's');
  record('soak: ambassador RSS at start', mode, first.ambassador, 'MB');
  record('soak: ambassador RSS after a quarter of the changes', mode, warmedUp.ambassador, 'MB');
  record('soak: ambassador RSS max', mode, Math.max(...samples.map((s) => s.ambassador)), 'MB', '≤ 250');
  record('soak: ambassador RSS at the end', mode, last.ambassador, 'MB');
  record('soak: ambassador RSS growth over the last three quarters', mode, last.ambassador - warmedUp.ambassador, 'MB');
  record('soak: ambassador JS heap used first', mode, firstHeap, 'MB');
  record('soak: ambassador JS heap used max', mode, Math.max(...heaps), 'MB');
  record('soak: ambassador JS heap used last', mode, await heapMb(), 'MB');
  record('soak: haproxy RSS first', mode, first.haproxy, 'MB');
  record('soak: haproxy RSS last', mode, last.haproxy, 'MB');
  record('soak: final state live', mode, (await routed(ambassador.runtimeDir)).join() === want ? 1 : 0, '', '1');
  await stopRunning();
}

function workersRss(master: number): number {
  return workerPids(master).reduce((sum, pid) => sum + rssMb(pid), 0);
}

// Scale: 10,000 instances.
const SCALE = 10_000;
const scalePrefix = `/bench-scale/services/mysql`;
async function writeScale() {
  let next = 0;
  const writer = async () => {
    while (next < SCALE) {
      const i = next++;
      await etcd.put(`${scalePrefix}/instances/i${i}/private_ip`, `127.1.${i >> 8}.${i & 255}`);
    }
  };
  await Promise.all(Array.from({ length: 64 }, writer));
}

async function scale(mode: Mode) {
  const ambassador = await start(mode, [`--etcd-prefix=${scalePrefix}`]);
  await ambassador.waitForLog(/applied revision/, 60_000);
  record(`scale ${SCALE}: start → all served`, mode, performance.now() - ambassador.started, 'ms', '≤ 2000');
  const haproxy = ambassador.haproxyPid()!;
  const worker = workerPids(haproxy)[0]!;
  record(`scale ${SCALE}: ambassador RSS`, mode, rssMb(ambassador.child.pid!), 'MB');
  record(`scale ${SCALE}: haproxy RSS (master + worker)`, mode, rssMb(haproxy) + rssMb(worker), 'MB');
  const from = ambassador.logs.length;
  const put = performance.now();
  await etcd.put(`${scalePrefix}/instances/i5000/private_ip`, '127.2.0.1');
  await ambassador.waitForLog(/applied revision \d+: moved i5000/, 60_000, from);
  record(`scale ${SCALE}: one change, put → applied`, mode, performance.now() - put, 'ms');
  await etcd.put(`${scalePrefix}/instances/i5000/private_ip`, `127.1.${5000 >> 8}.${5000 & 255}`);
  await stopRunning();
}

function table(): string {
  const header = ['metric', 'target', 'runtime API', 'reload only', 'reload / runtime'];
  const format = (value: number | undefined) =>
    value === undefined ? '-' : value === Infinity ? 'never' : Number.isInteger(value) || value >= 100 ? value.toFixed(0) : value.toFixed(1);
  const lines = rows.map((row) => {
    const { runtime, reload } = row.values;
    const comparable = runtime !== undefined && reload !== undefined && runtime > 0 && Number.isFinite(runtime) && Number.isFinite(reload);
    const ratio = comparable ? `${(reload / runtime).toFixed(1)}×` : '-';
    const cell = (value: number | undefined) => (value === Infinity ? 'never' : `${format(value)} ${row.unit}`.trim());
    return [row.metric, row.target ? `${row.target} ${row.unit}`.trim() : '', cell(runtime), cell(reload), ratio];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ') + ' |';
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...lines.map(line)].join('\n');
}

// Workloads named on the command line (npm run bench -- soak failover), or all of them.
const WORKLOADS: Record<string, (mode: Mode) => Promise<void>> = { startup, failover, burst, 'zero-loss': zeroLoss, 'long-lived': longLived, scale, soak };
const chosen = process.argv.slice(2).length > 0 ? process.argv.slice(2) : Object.keys(WORKLOADS);
for (const name of chosen) if (!(name in WORKLOADS)) throw new Error(`unknown workload ${name}: choose from ${Object.keys(WORKLOADS).join(', ')}`);

try {
  for (const name of chosen) {
    if (name === 'scale') {
      process.stderr.write(`bench: writing ${SCALE} instances\n`);
      await writeScale();
    }
    // The soak runs with the runtime API only: with reloads it measures haproxy's reload storm, not ambassador.
    for (const mode of name === 'soak' ? (['runtime'] as const) : MODES) {
      process.stderr.write(`bench: ${mode}: ${name}\n`);
      await WORKLOADS[name]!(mode);
    }
  }
  const text = table();
  console.log(text);
  const dir = join(root, 'bench/results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'latest.json'), JSON.stringify({ date: new Date().toISOString(), rows }, null, 2) + '\n');
  console.log(`\nwritten to bench/results/latest.json`);
} finally {
  await stopRunning();
  await Promise.all(backends.map((b) => b.close()));
  await etcd.stop();
  await stopAll();
}
