// npm run bench -- fleet: what a fleet of ambassadors costs the etcd it shares. A real 3-member etcd; N
// simulated ambassadors (bench/fleet-worker.ts: the project's own watch, checks and listings, one client
// connection each) on prefixes of 5, 1,000 and 10,000 instances; for each:
//   - etcd's CPU (all members, from /proc) per ambassador per second while idle, less etcd's own idle CPU;
//   - put latency from another client, without the fleet and with it;
//   - one master change → the last of N holding it;
//   - a member SIGKILLed and restarted with a third of the fleet on it → all N current again, with etcd's
//     CPU and the longest put over that window.
// Then the same idle fleet of 1,000 through etcd's gRPC proxy, and 50 real executables beside 50 simulated
// ones (the simulation's cost is the executable's). On 2 cores the members and the fleet share the CPU: the
// per-ambassador figures carry to other machines, the latencies only to this one.

import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAmbassador, type RunningAmbassador } from '../harness/ambassador.ts';
import { startCluster, startGrpcProxy, type TestCluster } from '../harness/cluster.ts';
import { startEtcd } from '../harness/etcd.ts';
import { freePort } from '../harness/net.ts';
import { track } from '../harness/processes.ts';

export type RecordRow = (metric: string, value: number, unit: string, target?: string) => void;

const root = resolve(import.meta.dirname, '..');
const FLEETS = [100, 1_000, 10_000];
const SIZES = [5, 1_000, 10_000];
// AMBASSADOR_BENCH_FLEET=100x5,1000x1000 runs only those cells (fleet x instances), and skips the proxy and
// real-executable runs unless it names them (proxy, real).
const ONLY = process.env.AMBASSADOR_BENCH_FLEET?.split(',');
// Each idle window: long enough that etcd's own background work (its snapshots, its members' heartbeats) averages out.
const IDLE_MS = 30_000;
const PUT_EVERY_MS = 20;
// Mirrors a worker can hold: a simulated ambassador keeps the whole prefix, ~300 bytes a key.
const MIRROR_BYTES_LIMIT = 12e9;
const PER_WORKER = 2_500;

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
};

// utime + stime of a process, in ms (0 once it is gone).
function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return 0;
  }
}

// etcd's CPU over a window, across restarts: each member's CPU when it was last seen, plus its new process's.
function etcdMeter(cluster: TestCluster, extra: () => (number | undefined)[] = () => []) {
  const spent = new Map<number, number>();
  const sample = () => {
    for (const pid of [...cluster.pids(), ...extra()]) if (pid !== undefined) spent.set(pid, Math.max(spent.get(pid) ?? 0, cpuMs(pid)));
    return [...spent.values()].reduce((a, b) => a + b, 0);
  };
  const start = sample();
  const timer = setInterval(sample, 50);
  return {
    sample,
    stop: () => {
      clearInterval(timer);
      return sample() - start;
    },
  };
}

// etcd's CPU with nothing but itself, ms per second over IDLE_MS.
async function etcdAlone(cluster: TestCluster): Promise<number> {
  const meter = etcdMeter(cluster);
  await sleep(IDLE_MS);
  return meter.stop() / (IDLE_MS / 1000);
}

// Put latencies over IDLE_MS.
async function puts(cluster: TestCluster): Promise<number[]> {
  const running = putter(cluster);
  await sleep(IDLE_MS);
  return running.stop();
}

// A put every PUT_EVERY_MS outside every prefix, as Patroni's lease renewal is: the latencies until stopped.
function putter(cluster: TestCluster) {
  const latencies: number[] = [];
  let running = true;
  const loop = (async () => {
    for (let n = 0; running; n++) {
      const began = performance.now();
      await cluster.client.put(`/fleet-bench/other/${n % 10}`).value(String(n)).catch(() => {});
      latencies.push(performance.now() - began);
      await sleep(Math.max(0, PUT_EVERY_MS - (performance.now() - began)));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return latencies;
    },
  };
}

interface Worker {
  child: ChildProcess;
  // Sends a command; resolves with the answer, which names `key`.
  ask(message: object, key: string): Promise<{ [name: string]: unknown }>;
}

function startWorker(): Worker {
  const child = spawn(process.execPath, ['--max-old-space-size=8192', join(root, 'bench/fleet-worker.ts')], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  track(child.pid);
  let waiting: ((message: Record<string, unknown>) => void)[] = [];
  child.on('message', (message: Record<string, unknown>) => {
    const [next, ...rest] = waiting;
    waiting = rest;
    next?.(message);
  });
  return {
    child,
    ask: (message, key) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`fleet worker: no answer to ${key} in 600 s`)), 600_000);
        waiting.push((answer) => {
          clearTimeout(timer);
          resolve(answer);
        });
        child.send(message);
      }),
  };
}

interface Fleet {
  workers: Worker[];
  current(revision: bigint): Promise<{ current: number; members: Record<string, number> }>;
  seen(master: string): Promise<(bigint | null)[]>;
  stop(): Promise<void>;
}

async function startFleet(count: number, endpoints: string[], prefix: string, checkMs = 2000): Promise<Fleet> {
  const workers = Array.from({ length: Math.ceil(count / PER_WORKER) }, startWorker);
  const share = (i: number) => Math.floor(count / workers.length) + (i < count % workers.length ? 1 : 0);
  // A fleet that starts at once reads the prefix N times: spread over a few seconds, as a rollout would.
  const spreadMs = Math.min(20_000, Math.max(1_000, count * 2));
  try {
    await Promise.all(workers.map((worker, i) => worker.ask({ start: { count: share(i), endpoints, prefix, checkMs, spreadMs } }, 'started')));
  } catch (err) {
    for (const worker of workers) worker.child.kill('SIGKILL');
    throw err;
  }
  return {
    workers,
    current: async (revision) => {
      const answers = await Promise.all(workers.map((worker) => worker.ask({ current: String(revision) }, 'current')));
      const members: Record<string, number> = {};
      for (const answer of answers) for (const [member, n] of Object.entries(answer.members as Record<string, number>)) members[member] = (members[member] ?? 0) + n;
      return { current: answers.reduce((sum, answer) => sum + (answer.current as number), 0), members };
    },
    seen: async (master) =>
      (await Promise.all(workers.map((worker) => worker.ask({ seen: master }, 'seen'))))
        .flatMap((answer) => answer.seen as (string | null)[])
        .map((t) => (t === null ? null : BigInt(t))),
    stop: async () => {
      await Promise.all(workers.map((worker) => worker.ask({ stop: true }, 'stopped').catch(() => worker.child.kill('SIGKILL'))));
    },
  };
}

// Every simulated ambassador current (connected, confirmed, holding `revision`), within `ms`; the time it took.
async function untilCurrent(fleet: Fleet, count: number, revision: bigint, ms: number): Promise<number | undefined> {
  const began = performance.now();
  while (performance.now() - began < ms) {
    if ((await fleet.current(revision)).current >= count) return performance.now() - began;
    await sleep(100);
  }
  return undefined;
}

async function writePrefix(cluster: TestCluster, prefix: string, instances: number) {
  let next = 0;
  const writer = async () => {
    while (next < instances) {
      const i = next++;
      await cluster.client.put(`${prefix}/instances/i${i}/private_ip`).value(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
      await cluster.client.put(`${prefix}/instances/i${i}/port`).value('5432');
    }
  };
  await Promise.all(Array.from({ length: 32 }, writer));
  await cluster.client.put(`${prefix}/master`).value('i0');
}

const marker = async (cluster: TestCluster, prefix: string) => BigInt((await cluster.client.put(`${prefix}/meta/marker`).value(String(Date.now())).exec()).header.revision);

export async function fleetWorkload(record: RecordRow): Promise<void> {
  const cluster = await startCluster(3);
  try {
    const prefixes = new Map<number, string>();
    for (const size of SIZES.filter((size) => !ONLY || ONLY.some((cell) => cell.endsWith(`x${size}`)) || size === 5)) {
      const prefix = `/fleet/s${size}/services/db`;
      process.stderr.write(`bench: fleet: writing ${size} instances\n`);
      await writePrefix(cluster, prefix, size);
      prefixes.set(size, prefix);
    }
    // etcd alone: idle (once the writes above have settled: a snapshot of the log may follow them), then under
    // the putter.
    await sleep(10_000);
    const idleMsPerSecond = await etcdAlone(cluster);
    const putsAlone = await puts(cluster);
    record('fleet: etcd alone (3 members), CPU', idleMsPerSecond, 'ms/s');
    record(`fleet: etcd alone, put p50 / p99 (of ${putsAlone.length})`, percentile(putsAlone, 50), `/ ${percentile(putsAlone, 99).toFixed(1)} ms`);

    for (const count of FLEETS) {
      for (const size of SIZES) {
        const name = `fleet of ${count.toLocaleString('en')} on ${size.toLocaleString('en')} instances`;
        if (ONLY && !ONLY.includes(`${count}x${size}`)) continue;
        if (count * size * 2 * 300 > MIRROR_BYTES_LIMIT) {
          record(`${name}: not run (its mirrors would take ${((count * size * 600) / 1e9).toFixed(0)} GB here)`, NaN, '');
          continue;
        }
        process.stderr.write(`bench: ${name}\n`);
        // A fleet this machine cannot carry (its workers do not all start in time) is a row, not the end of the run.
        await fleetCell(record, cluster, name, count, prefixes.get(size)!, idleMsPerSecond).catch((err: Error) => record(`${name}: not run (${err.message})`, NaN, ''));
      }
    }

    // Through etcd's gRPC proxy: the watches coalesce, the linearizable reads go through one for one.
    for (const size of ONLY && !ONLY.includes('proxy') ? [] : [5, 1_000]) {
      const count = 1_000;
      const name = `fleet of 1,000 on ${size.toLocaleString('en')} instances through etcd grpc-proxy`;
      process.stderr.write(`bench: ${name}\n`);
      const proxy = await startGrpcProxy(cluster.endpoints);
      try {
        const prefix = prefixes.get(size)!;
        const fleet = await startFleet(count, [`http://${proxy.endpoint}`], prefix);
        try {
          const ready = await untilCurrent(fleet, count, await marker(cluster, prefix), 120_000);
          if (ready === undefined) record(`${name}: not all current within 120 s`, NaN, '');
          const members = etcdMeter(cluster);
          const own = cpuMs(proxy.pid());
          await sleep(IDLE_MS);
          const spent = members.stop();
          record(`${name}: etcd CPU per ambassador per second, idle`, (spent - idleMsPerSecond * (IDLE_MS / 1000)) / count / (IDLE_MS / 1000), 'ms');
          record(`${name}: the proxy's own CPU per ambassador per second`, (cpuMs(proxy.pid()) - own) / count / (IDLE_MS / 1000), 'ms');
        } finally {
          await fleet.stop();
        }
      } finally {
        await proxy.stop();
      }
    }

    if (!ONLY || ONLY.includes('real')) await realBesideSimulated(record, cluster, prefixes.get(5)!);
  } finally {
    await cluster.stop();
  }
  if (!ONLY || ONLY.includes('ten')) for (const size of [5, 10_000]) await tenOnOneEtcd(record, size);
}

// Ten real executables idle on one etcd (a single member), on a prefix of `size` instances: etcd's CPU per
// ambassador per second, less etcd alone; over 2 minutes, so that the listings of a big prefix (every 5 min
// each) fall in it about as often as they run.
async function tenOnOneEtcd(record: RecordRow, size: number) {
  process.stderr.write(`bench: ten executables on one etcd, ${size} instances\n`);
  const etcd = await startEtcd();
  const running: RunningAmbassador[] = [];
  try {
    const prefix = '/fleet-ten/services/db';
    let next = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (next < size) {
          const i = next++;
          await etcd.put(`${prefix}/instances/i${i}/private_ip`, `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
          await etcd.put(`${prefix}/instances/i${i}/port`, '5432');
        }
      }),
    );
    await etcd.put(`${prefix}/master`, 'i0');
    const windowMs = size > 1_000 ? 120_000 : 30_000;
    const pid = etcd.pid()!;
    let before = cpuMs(pid);
    await sleep(windowMs / 4);
    const alone = (cpuMs(pid) - before) / (windowMs / 4000);
    for (let i = 0; i < 10; i++) {
      const port = await freePort();
      running.push(await startAmbassador([`--etcd=${etcd.endpoint}`, `--etcd-prefix=${prefix}`, '--master-only', `--port=${port}`, '--bind=127.0.0.1', '--log-level=warn'], { binary: 'dist' }));
    }
    await Promise.all(running.map((ambassador) => ambassador.waitForLog(/applied revision/, 60_000).catch(() => '')));
    await sleep(3_000);
    before = cpuMs(pid);
    await sleep(windowMs);
    const perAmbassador = ((cpuMs(pid) - before) / (windowMs / 1000) - alone) / 10;
    record(`ten real executables on one etcd, ${size.toLocaleString('en')} instances: etcd CPU per ambassador per second, idle (over ${windowMs / 1000} s)`, perAmbassador, 'ms', size > 1_000 ? '≤ 1.5' : '≤ 0.5');
  } finally {
    await Promise.all(running.map((ambassador) => ambassador.cleanup()));
    await etcd.stop();
  }
}

async function fleetCell(record: RecordRow, cluster: TestCluster, name: string, count: number, prefix: string, idleMsPerSecond: number) {
  const fleet = await startFleet(count, cluster.endpoints.map((e) => `http://${e}`), prefix);
  try {
    const started = await untilCurrent(fleet, count, await marker(cluster, prefix), 300_000);
    if (started === undefined) {
      record(`${name}: not all current within 300 s of starting`, NaN, '');
      return;
    }
    // Idle, then under the putter.
    const meter = etcdMeter(cluster);
    await sleep(IDLE_MS);
    const spent = meter.stop();
    const withFleet = await puts(cluster);
    record(`${name}: etcd CPU per ambassador per second, idle`, (spent - idleMsPerSecond * (IDLE_MS / 1000)) / count / (IDLE_MS / 1000), 'ms', count <= 1000 ? '≤ 1.5' : '');
    record(`${name}: put p50 / p99 with the fleet (of ${withFleet.length})`, percentile(withFleet, 50), `/ ${percentile(withFleet, 99).toFixed(1)} ms`);

    // One master change → the last of N holding it, five times.
    const lasts: (number | undefined)[] = [];
    for (let n = 1; n <= 5; n++) {
      const master = `i${n}`;
      const put = process.hrtime.bigint();
      await cluster.client.put(`${prefix}/master`).value(master);
      let last: number | undefined;
      for (const began = performance.now(); performance.now() - began < 30_000; await sleep(50)) {
        const seen = await fleet.seen(master);
        if (seen.every((t) => t !== null)) {
          last = Number((seen as bigint[]).reduce((a, b) => (a > b ? a : b)) - put) / 1e6;
          break;
        }
      }
      lasts.push(last);
    }
    const hits = lasts.filter((t): t is number => t !== undefined);
    record(`${name}: master change → the last of N holds it, median / max (of 5)`, hits.length ? percentile(hits, 50) : Infinity, `/ ${hits.length ? Math.max(...hits).toFixed(0) : 'never'} ms`);
    record(`${name}: master changes the fleet did not all hold within 30 s`, lasts.length - hits.length, 'of 5', '0');

    // A member SIGKILLed and restarted at once, with its share of the fleet on it.
    const onKilled = (await fleet.current(0n)).members[`http://${cluster.endpoints[0]}`] ?? 0;
    record(`${name}: member restarted: ambassadors on it`, onKilled, `of ${count}`);
    const restartMeter = etcdMeter(cluster);
    const restartPuts = putter(cluster);
    const killedAt = performance.now();
    await cluster.kill(0);
    const restarting = cluster.start(0);
    const after = await marker(cluster, prefix);
    const back = await untilCurrent(fleet, count, after, 60_000);
    await restarting;
    const window = (performance.now() - killedAt) / 1000;
    const restartSpent = restartMeter.stop();
    const putsThen = await restartPuts.stop();
    record(`${name}: member restarted → all current again`, back ?? Infinity, 'ms', '≤ 10000');
    record(`${name}: member restarted: etcd CPU over that window`, restartSpent / window / 10, '% of a core');
    record(`${name}: member restarted: longest put by another client then (of ${putsThen.length})`, Math.max(...putsThen), 'ms', '≤ 1000');
  } finally {
    await fleet.stop();
  }
}

// 50 real executables (each with its haproxy) beside 50 simulated ambassadors, on one prefix: what each costs etcd.
// Each against etcd alone measured just before it, as that drifts over a long run.
async function realBesideSimulated(record: RecordRow, cluster: TestCluster, prefix: string) {
  const count = 50;
  const endpoints = cluster.endpoints.map((e) => `http://${e}`).join(',');
  const real: RunningAmbassador[] = [];
  let idleMsPerSecond = await etcdAlone(cluster);
  try {
    for (let i = 0; i < count; i++) {
      const port = await freePort();
      real.push(await startAmbassador([`--etcd=${endpoints}`, `--etcd-prefix=${prefix}`, '--master-only', `--port=${port}`, '--bind=127.0.0.1', '--log-level=warn'], { binary: 'dist' }));
    }
    await Promise.all(real.map((ambassador) => ambassador.waitForLog(/applied revision|snapshot taken/, 60_000).catch(() => '')));
    await sleep(3_000);
    const meter = etcdMeter(cluster);
    await sleep(IDLE_MS);
    record(`${count} real executables: etcd CPU per ambassador per second, idle`, (meter.stop() - idleMsPerSecond * (IDLE_MS / 1000)) / count / (IDLE_MS / 1000), 'ms', '≤ 0.5');
  } finally {
    await Promise.all(real.map((ambassador) => ambassador.cleanup()));
  }
  idleMsPerSecond = await etcdAlone(cluster);
  const fleet = await startFleet(count, cluster.endpoints.map((e) => `http://${e}`), prefix);
  try {
    await untilCurrent(fleet, count, await marker(cluster, prefix), 60_000);
    const meter = etcdMeter(cluster);
    await sleep(IDLE_MS);
    record(`${count} simulated ambassadors: etcd CPU per ambassador per second, idle`, (meter.stop() - idleMsPerSecond * (IDLE_MS / 1000)) / count / (IDLE_MS / 1000), 'ms');
  } finally {
    await fleet.stop();
  }
}
