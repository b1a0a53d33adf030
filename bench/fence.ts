// The failover measurements, shared by bench.ts (on this machine's haproxy) and bench/versions.ts (inside a
// Debian root, on that release's haproxy): put → new master answers and → the old master's session cut, and
// the fence's order on the wire.

import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RunningAmbassador } from '../harness/ambassador.ts';
import { startCapture } from '../harness/capture.ts';
import type { TestEtcd } from '../harness/etcd.ts';
import { freePort, openSession, whoAnswers, type Session } from '../harness/net.ts';
import { fenceOverlaps, startRecordingBackends } from '../harness/recorder.ts';

const root = resolve(import.meta.dirname, '..');

// Polls until `probe` says yes; the time it took, or undefined after timeoutMs (a miss).
export async function timeUntil(since: number, probe: () => Promise<boolean>, timeoutMs: number): Promise<number | undefined> {
  const deadline = since + timeoutMs;
  while (performance.now() < deadline) {
    if (await probe()) return performance.now() - since;
    await sleep(1);
  }
  return undefined;
}

export const answeredBy = (port: number, name: string) => async () => (await whoAnswers(port, '127.0.0.1', 500)) === name;

// A load client in its own process: new connections as fast as it can make them, until stopped.
export function startLoad(port: number, concurrency = 24) {
  const load = spawn(process.execPath, [join(root, 'bench/load.ts'), String(port), '600000', String(concurrency)], { stdio: ['pipe', 'pipe', 'inherit'] });
  let output = '';
  load.stdout.on('data', (data) => (output += data));
  const done = new Promise((resolve) => load.on('exit', resolve));
  return {
    stop: async () => {
      load.stdin.end();
      await done;
      return JSON.parse(output) as { ok: number; failed: number; seconds: number };
    },
  };
}

// Failover: the client's put of master → the first new connection that reaches the new master; and how
// long a session to the old master lives after the put. Masters '2' and '3' answer as node-2 and node-3.
export async function failoverSamples(etcd: TestEtcd, port: number, prefix: string, count: number, first: string) {
  const latencies: (number | undefined)[] = [];
  const cuts: (number | undefined)[] = [];
  let master = first;
  for (let i = 0; i < count; i++) {
    const next = master === '2' ? '3' : '2';
    const session: Session = await openSession(port);
    let cutAt: number | undefined;
    void session.closed.then(() => (cutAt = performance.now()));
    const put = performance.now();
    await etcd.put(`${prefix}/master`, next);
    latencies.push(await timeUntil(put, answeredBy(port, `node-${next}`), 5_000));
    await timeUntil(put, async () => session.isClosed(), 1000);
    cuts.push(cutAt === undefined ? undefined : cutAt - put);
    session.close();
    master = next;
    await sleep(10);
  }
  return { latencies, cuts };
}

export interface FenceOrder {
  failovers: number;
  sessions: number;
  overlaps: number;
  longestMs: number;
  misses: number;
  // Fences whose sessions were still open at the bound (1 s), when ambassador opened the new master anyway.
  unconfirmed: number;
  // Fences whose shut streams froze (haproxy 2.7-3.1), ended by a reload before the new master opened.
  frozen: number;
}

// The fence as the wire shows it: two backends, two sessions held to the master, a load client opening new
// connections all along, `count` failovers, and a packet capture of haproxy's connections to the backends (the
// kernel's own order of events). An overlap: haproxy connected a client to one backend while a session that
// had carried a client's bytes to the other was not yet closed. Health checks carry no client byte.
export async function fenceOrder(etcd: TestEtcd, prefix: string, start: (flags: string[]) => Promise<RunningAmbassador & { port: number }>, count: number): Promise<FenceOrder> {
  const port = await freePort('127.0.0.21');
  const addresses = new Map([['node-a', '127.0.0.21'], ['node-b', '127.0.0.22']]);
  const backends = await startRecordingBackends([...addresses].map(([name, host]) => ({ name, host, port })));
  const capture = await startCapture(addresses, port);
  try {
    for (const [name, host] of [['a', '127.0.0.21'], ['b', '127.0.0.22']]) {
      await etcd.put(`${prefix}/instances/${name}/private_ip`, host!);
      await etcd.put(`${prefix}/instances/${name}/port`, String(port));
    }
    await etcd.put(`${prefix}/master`, 'a');
    const ambassador = await start([`--etcd-prefix=${prefix}`, '--master-only', '--log-level=info']);
    if ((await timeUntil(performance.now(), answeredBy(ambassador.port, 'node-a'), 10_000)) === undefined) throw new Error('fence order: ambassador did not route to the first master');
    const load = startLoad(ambassador.port, 2);
    let master = 'a';
    let misses = 0;
    for (let i = 0; i < count; i++) {
      const next = master === 'a' ? 'b' : 'a';
      const held = await Promise.all([openSession(ambassador.port), openSession(ambassador.port)]);
      await etcd.put(`${prefix}/master`, next);
      const put = performance.now();
      const switched = await timeUntil(put, answeredBy(ambassador.port, `node-${next}`), 5_000);
      const cut = await timeUntil(put, async () => held.every((s) => s.isClosed()), 2_000);
      if (switched === undefined || cut === undefined) misses++;
      for (const session of held) session.close();
      master = next;
    }
    const { ok } = await load.stop();
    if (ok === 0) throw new Error('fence order: the load client made no connection');
    await capture.stop();
    if (capture.dropped() !== 0) throw new Error(`fence order: the capture lost packets (${capture.dropped() ?? 'no count'}), so its order proves nothing`);
    const overlaps = fenceOverlaps(capture.events);
    return {
      failovers: count,
      sessions: capture.events.filter((event) => event.kind === 'session').length,
      overlaps: overlaps.length,
      longestMs: Number(overlaps.reduce((max, o) => (o.overlapNs > max ? o.overlapNs : max), 0n)) / 1e6,
      misses,
      unconfirmed: ambassador.logs.filter((line) => line.includes('still open')).length,
      frozen: ambassador.logs.filter((line) => line.includes('froze when their sessions were shut')).length,
    };
  } finally {
    await capture.stop();
    await backends.stop();
  }
}
