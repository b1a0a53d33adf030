// The Patroni workload of npm run bench: one real Patroni cluster (3 members, PostgreSQL 15) with three things
// in front of it at once: ambassador (--layout=patroni) with its hold (the default) and with --hold=0, and an
// haproxy configured as Patroni's documentation and its confd template recommend (the anchor: REST health
// checks every 3 s, fall 3, rise 2). A client makes a new connection and an insert every ~10 ms through each,
// and directly on the nodes (Patroni's own floor), across planned switchovers and crashes of the primary; and
// pgbench -C (a new connection per transaction, libpq's own defaults: no connect timeout) does the same
// through ambassador, hold on and off, and directly with libpq's multi-host read-write choice.

import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { startAmbassador } from '../harness/ambassador.ts';
import type { TestEtcd } from '../harness/etcd.ts';
import { freePort } from '../harness/net.ts';
import { POSTGRES_BIN, startPatroni, type PatroniCluster } from '../harness/patroni.ts';
import { startProcess, stopPid } from '../harness/processes.ts';

type Record = (metric: string, value: number, unit: string, target?: string) => void;

interface Outcome {
  at: number;
  ok: boolean;
  readOnly: boolean;
}

// One insert over a new connection; what happened.
async function insert(host: string, port: number): Promise<{ ok: boolean; readOnly: boolean }> {
  const client = new pg.Client({ host, port, user: 'postgres', password: 'postgres', database: 'postgres', connectionTimeoutMillis: 1000, query_timeout: 2000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('insert into bench_writes (at) values (now())');
    return { ok: true, readOnly: false };
  } catch (err) {
    return { ok: false, readOnly: (err as { code?: string }).code === '25006' };
  } finally {
    await client.end().catch(() => {});
  }
}

// Inserts every ~10 ms until stopped, each on a new connection through `target` (directly on the nodes: any
// node that takes the write; a node that refuses it as read-only is then no news).
function writer(target: () => { host: string; port: number }[]) {
  const outcomes: Outcome[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const started = performance.now();
      const targets = target();
      let result = { ok: false, readOnly: false };
      for (const { host, port } of targets) {
        result = await insert(host, port);
        if (result.ok) break;
      }
      if (targets.length > 1) result.readOnly = false;
      outcomes.push({ at: performance.now(), ...result });
      await sleep(Math.max(0, 10 - (performance.now() - started)));
    }
  })();
  return {
    outcomes,
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

// pgbench -C with an insert script, in runs of 5 s (it writes its log whole only when a run ends), each run
// started again when it ends (a client that cannot connect aborts, and a run whose clients all did ends)
// until stopped: the transactions it logged (their end, as epoch ms) and when each of its clients aborted
// (pgbench aborts a client on any error, a failed connection or a statement refused, and says so at once).
function pgbenchLoop(dir: string, name: string, conninfo: { [name: string]: string }) {
  const script = join(dir, 'insert.sql');
  writeFileSync(script, 'insert into bench_writes (at) values (now());\n');
  const logs = join(dir, `pgbench-${name}`);
  let running = true;
  const aborts: number[] = [];
  const loop = (async () => {
    for (let run = 0; running; run++) {
      const child = spawn(`${POSTGRES_BIN}/pgbench`, ['-n', '-C', '-c', '4', '-j', '1', '-T', '5', '-f', script, '-l', `--log-prefix=${logs}-${run}`, 'postgres'], {
        env: { ...process.env, PGUSER: 'postgres', PGPASSWORD: 'postgres', ...conninfo },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      child.stderr!.on('data', (data: Buffer) => {
        for (let n = (data.toString().match(/client \d+ aborted/g) ?? []).length; n > 0; n--) aborts.push(Date.now());
      });
      await new Promise((resolve) => child.on('exit', resolve));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
    },
    aborts: () => aborts,
    // Transactions' end times, epoch ms, in order.
    done: () =>
      readdirSync(dir)
        .filter((file) => file.startsWith(`pgbench-${name}-`))
        .flatMap((file) => readFileSync(join(dir, file), 'utf8').split('\n'))
        .map((line) => line.split(' '))
        .filter((fields) => fields.length >= 6)
        .map((fields) => Number(fields[4]) * 1000 + Number(fields[5]) / 1000)
        .sort((a, b) => a - b),
  };
}

// Longest stretch between two successful inserts within [from, to].
function writeGap(outcomes: Outcome[], from: number, to: number): number {
  const ok = outcomes.filter((o) => o.ok && o.at >= from - 1000 && o.at <= to).map((o) => o.at);
  let gap = 0;
  for (let i = 1; i < ok.length; i++) gap = Math.max(gap, ok[i]! - ok[i - 1]!);
  return gap;
}

// A PostgreSQL session, connected and idle, that notices when the far side closes it.
async function holdSession(port: number) {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password: 'postgres', database: 'postgres', connectionTimeoutMillis: 2000 });
  let closed = false;
  client.on('error', () => (closed = true));
  client.on('end', () => (closed = true));
  await client.connect();
  await client.query('select 1');
  return { isClosed: () => closed, close: () => client.end().catch(() => {}) };
}

function anchorConfig(cluster: PatroniCluster, primaryPort: number, replicaPort: number): string {
  const servers = cluster.members.map((member) => `    server ${member.name} ${member.host}:5432 maxconn 100 check port 8008`);
  const listen = (name: string, port: number, check: string) => [
    `listen ${name}`,
    `    bind 127.0.0.1:${port}`,
    `    option httpchk OPTIONS ${check}`,
    '    http-check expect status 200',
    '    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions',
    ...servers,
    '',
  ];
  return [
    'global',
    '    maxconn 100',
    '',
    'defaults',
    '    mode tcp',
    '    retries 2',
    '    timeout client 30m',
    '    timeout connect 4s',
    '    timeout server 30m',
    '    timeout check 5s',
    '',
    ...listen('primary', primaryPort, '/primary'),
    ...listen('replicas', replicaPort, '/replica'),
  ].join('\n');
}

export async function patroniWorkload(etcd: TestEtcd, record: Record, switchovers = 10, crashes = 3): Promise<void> {
  const cluster = await startPatroni(etcd.endpoint, (key) => etcd.client.get(key).string().then((v) => v ?? undefined));
  const dir = mkdtempSync(join(tmpdir(), 'ambassador-anchor-'));
  const stops: (() => Promise<unknown>)[] = [];
  try {
    let leader = await cluster.healthy();
    await cluster.sql(cluster.members.find((member) => member.name === leader)!.host, 5432, 'create table if not exists bench_writes (at timestamptz)');
    const [ambassadorPort, ambassadorReplicas, unheldPort, unheldReplicas, anchorPort, anchorReplicas] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()]);
    for (const [port, replicas, flags] of [[ambassadorPort, ambassadorReplicas, []], [unheldPort, unheldReplicas, ['--hold=0']]] as const) {
      const ambassador = await startAmbassador(
        ['--layout=patroni', `--etcd=${etcd.endpoint}`, `--etcd-prefix=${cluster.prefix}`, '--master-only', `--port=${port}`, `--replica-port=${replicas}`, '--bind=127.0.0.1', ...flags],
        { binary: 'dist' },
      );
      stops.push(() => ambassador.cleanup());
    }
    writeFileSync(join(dir, 'anchor.cfg'), anchorConfig(cluster, anchorPort, anchorReplicas));
    const anchor = startProcess('haproxy', ['-db', '-f', join(dir, 'anchor.cfg')]);
    anchor.stdout!.resume();
    anchor.stderr!.resume();
    stops.push(() => stopPid(anchor.pid!));
    // Both in front and healthy before the clock runs: the anchor needs rise 2 × inter 3 s.
    const healthy = async (port: number) => {
      for (let tries = 0; tries < 200; tries++) {
        if ((await insert('127.0.0.1', port)).ok) return;
        await sleep(100);
      }
      throw new Error(`no write through port ${port}`);
    };
    await Promise.all([healthy(ambassadorPort), healthy(unheldPort), healthy(anchorPort)]);

    const paths = {
      nodes: writer(() => cluster.members.map((member) => ({ host: member.host, port: 5432 }))),
      ambassador: writer(() => [{ host: '127.0.0.1', port: ambassadorPort }]),
      unheld: writer(() => [{ host: '127.0.0.1', port: unheldPort }]),
      anchor: writer(() => [{ host: '127.0.0.1', port: anchorPort }]),
    };
    const benches = {
      nodes: pgbenchLoop(dir, 'nodes', { PGHOST: cluster.members.map((member) => member.host).join(','), PGPORT: '5432', PGTARGETSESSIONATTRS: 'read-write' }),
      ambassador: pgbenchLoop(dir, 'ambassador', { PGHOST: '127.0.0.1', PGPORT: String(ambassadorPort) }),
      unheld: pgbenchLoop(dir, 'unheld', { PGHOST: '127.0.0.1', PGPORT: String(unheldPort) }),
    };
    stops.push(...Object.values(paths).map((path) => path.stop), ...Object.values(benches).map((bench) => bench.stop));
    const windows: { kind: 'switchover' | 'crash'; from: number; to: number }[] = [];
    const gaps: { [kind: string]: { [path: string]: number[] } } = { switchover: {}, crash: {} };
    const stale: { [kind: string]: { [path: string]: number } } = { switchover: {}, crash: {} };
    const readOnly: { [kind: string]: { [path: string]: number } } = { switchover: {}, crash: {} };

    const event = async (kind: 'switchover' | 'crash', run: () => Promise<void>) => {
      // A session held to the primary through each front, to see whether it outlives the demotion.
      const held = { ambassador: await holdSession(ambassadorPort), anchor: await holdSession(anchorPort) };
      const from = performance.now();
      const fromEpoch = Date.now();
      const before = leader;
      await run();
      // The demotion, as etcd says it: the leader key no longer names the old primary.
      let demotedAt: number | undefined;
      for (let tries = 0; tries < 600 && demotedAt === undefined; tries++) {
        if ((await cluster.leader()) !== before) demotedAt = performance.now();
        else await sleep(50);
      }
      await sleep(1000);
      for (const [path, session] of Object.entries(held)) {
        stale[kind]![path] = (stale[kind]![path] ?? 0) + (session.isClosed() ? 0 : 1);
        await session.close();
      }
      leader = await cluster.healthy(120_000);
      // Past the anchor's rise of 2 checks 3 s apart, so each event starts from a settled state.
      await sleep(7000);
      const to = performance.now();
      windows.push({ kind, from: fromEpoch, to: fromEpoch + (to - from) });
      for (const [path, writes] of Object.entries(paths)) {
        (gaps[kind]![path] ??= []).push(writeGap(writes.outcomes, from, to));
        readOnly[kind]![path] = (readOnly[kind]![path] ?? 0) + writes.outcomes.filter((o) => o.readOnly && o.at >= from && o.at <= to).length;
      }
    };

    for (let i = 0; i < switchovers; i++) {
      process.stderr.write(`bench: patroni: switchover ${i + 1} of ${switchovers}\n`);
      const candidate = cluster.members.find((member) => member.name !== leader)!.name;
      const from = leader;
      await event('switchover', () => cluster.switchover(from, candidate));
    }
    for (let i = 0; i < crashes; i++) {
      process.stderr.write(`bench: patroni: crash ${i + 1} of ${crashes}\n`);
      const victim = leader;
      await event('crash', async () => {
        await cluster.crash(victim);
        // Patroni elects a new leader once the lease ends; the crashed member then comes back as a replica.
        for (let tries = 0; tries < 600 && (await cluster.leader()) === victim; tries++) await sleep(50);
        await cluster.restart(victim);
      });
    }
    for (const stop of stops.splice(3)) await stop();

    const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
    const labels: { [path: string]: string } = { nodes: 'on the nodes (the floor)', ambassador: 'through ambassador (hold on)', unheld: 'through ambassador (--hold=0)', anchor: "through Patroni's haproxy" };
    for (const [path, bench] of Object.entries(benches)) {
      const done = bench.done();
      for (const kind of ['switchover', 'crash'] as const) {
        const inKind = windows.filter((w) => w.kind === kind);
        const gapsOf = inKind.map(({ from, to }) => {
          const ends = done.filter((t) => t >= from - 1000 && t <= to);
          return ends.reduce((gap, t, i) => (i === 0 ? 0 : Math.max(gap, t - ends[i - 1]!)), 0);
        });
        record(`patroni ${kind}, pgbench -C ${labels[path]}: write gap, median (of ${inKind.length})`, median(gapsOf), 'ms', path === 'ambassador' && kind === 'switchover' ? '≤ floor + 100' : '');
        const aborted = bench.aborts().filter((at) => inKind.some(({ from, to }) => at >= from && at <= to)).length;
        record(`patroni ${kind}, pgbench -C ${labels[path]}: clients aborted (on any error: a failed connection, a write refused read-only; in ${inKind.length})`, aborted, '', path === 'ambassador' && kind === 'switchover' ? '0' : '');
      }
    }
    for (const kind of ['switchover', 'crash'] as const) {
      const count = kind === 'switchover' ? switchovers : crashes;
      for (const path of ['nodes', 'ambassador', 'unheld', 'anchor']) {
        const values = gaps[kind]![path] ?? [];
        const label = labels[path]!;
        record(`patroni ${kind} write gap ${label}, median (of ${count})`, median(values), 'ms');
        record(`patroni ${kind} write gap ${label}, max (of ${count})`, Math.max(...values), 'ms');
        record(`patroni ${kind}: writes refused as read-only ${label}`, readOnly[kind]![path] ?? 0, '');
      }
      for (const path of ['ambassador', 'anchor']) {
        record(`patroni ${kind}: sessions to the old primary open 1 s after its demotion, ${labels[path]}`, stale[kind]![path] ?? 0, `of ${count}`);
      }
    }
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => {});
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}
