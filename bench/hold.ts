// The hold's measurements, shared by bench.ts (this machine's haproxy) and bench/versions.ts (inside a Debian
// root, that release's haproxy): what new connections see while the master moves, from the clients' side.
// Clients: 8 of them, each opening a connection every ~33 ms (~240 a second in all), reading the instance's
// greeting and closing. A connection closed without a greeting is refused; one greeted by an instance etcd
// had not named master in the second before it opened, or since, is misrouted.

import { setTimeout as sleep } from 'node:timers/promises';
import type { TestEtcd } from '../harness/etcd.ts';
import { whoAnswers } from '../harness/net.ts';

const CLIENTS = 8;
const EVERY_MS = 33;
// A connection waits at most this long for its greeting (longer than any hold measured here).
const LIMIT_MS = 15_000;

interface Connection {
  opened: number;
  answered: number;
  answer: string;
}

// Clients that connect until stopped; every connection, as they saw it.
function startClients(port: number) {
  const connections: Connection[] = [];
  let running = true;
  const loops = Array.from({ length: CLIENTS }, async (_, i) => {
    await sleep((i * EVERY_MS) / CLIENTS);
    while (running) {
      const opened = performance.now();
      const answer = await whoAnswers(port, '127.0.0.1', LIMIT_MS);
      connections.push({ opened, answered: performance.now(), answer });
      await sleep(Math.max(0, EVERY_MS - (performance.now() - opened)));
    }
  });
  return {
    stop: async () => {
      running = false;
      await Promise.all(loops);
      return connections;
    },
  };
}

export interface HoldOutcome {
  connections: number;
  refused: number;
  misrouted: number;
  // Latency (open → greeting, ms) of the connections opened while the master was moving (from the write to
  // the first greeting by the new master), and the writes' own put → first greeting by the new master.
  held: number[];
  switches: number[];
}

// What etcd named master over time: the write's time and the master; a connection may be greeted by any
// master named from a second before it opened to its greeting (the fence's window), '' meaning none.
function judge(connections: Connection[], named: { at: number; master: string }[]): HoldOutcome {
  const masterAt = (t: number) => named.filter((n) => n.at <= t).at(-1)?.master ?? '';
  const allowed = (c: Connection) => new Set([masterAt(c.opened - 1000), ...named.filter((n) => n.at > c.opened - 1000 && n.at <= c.answered).map((n) => n.master)]);
  const outcome: HoldOutcome = { connections: connections.length, refused: 0, misrouted: 0, held: [], switches: [] };
  for (const c of connections) {
    if (c.answer === '') outcome.refused++;
    else if (!allowed(c).has(c.answer.replace(/^node-/, ''))) outcome.misrouted++;
  }
  for (let i = 1; i < named.length; i++) {
    const { at, master } = named[i]!;
    if (master === '') continue;
    const first = connections.filter((c) => c.answered >= at && c.answer === `node-${master}`).reduce((min, c) => Math.min(min, c.answered), Infinity);
    if (first === Infinity) continue;
    outcome.switches.push(first - at);
    // No master from the deletion before it (a gap), or from this write (a failover), to the first greeting.
    const from = named[i - 1]!.master === '' ? named[i - 1]!.at : at;
    for (const c of connections) if (c.opened >= from && c.opened < first && c.answer !== '') outcome.held.push(c.answered - c.opened);
  }
  return outcome;
}

// `count` master changes, one every `everyMs`, between instances 2 and 3, under the clients' load.
export async function holdFailovers(etcd: TestEtcd, port: number, prefix: string, count: number, everyMs: number): Promise<HoldOutcome> {
  const named = [{ at: 0, master: '2' }];
  const clients = startClients(port);
  await sleep(500);
  for (let i = 0; i < count; i++) {
    const master = i % 2 === 0 ? '3' : '2';
    const at = performance.now();
    await etcd.put(`${prefix}/master`, master);
    named.push({ at, master });
    await sleep(Math.max(0, everyMs - (performance.now() - at)));
  }
  await sleep(1_000);
  return judge(await clients.stop(), named);
}

// `count` gaps of `gapMs` with no master key, each ended by a write of the other master, under the load.
export async function holdGaps(etcd: TestEtcd, port: number, prefix: string, count: number, gapMs: number): Promise<HoldOutcome> {
  const named = [{ at: 0, master: '2' }];
  const clients = startClients(port);
  await sleep(500);
  let master = '2';
  for (let i = 0; i < count; i++) {
    const deleted = performance.now();
    await etcd.del(`${prefix}/master`);
    named.push({ at: deleted, master: '' });
    await sleep(gapMs);
    master = master === '2' ? '3' : '2';
    const at = performance.now();
    await etcd.put(`${prefix}/master`, master);
    named.push({ at, master });
    await sleep(700);
  }
  await sleep(1_000);
  return judge(await clients.stop(), named);
}

// One connection at a time to a settled master: the ordinary path's latency, ms.
export async function ordinaryPath(port: number, count: number): Promise<number[]> {
  const latencies: number[] = [];
  for (let i = 0; i < count; i++) {
    const opened = performance.now();
    if ((await whoAnswers(port, '127.0.0.1', 2_000)) !== '') latencies.push(performance.now() - opened);
  }
  return latencies;
}

export interface ManyHeld {
  held: number;
  refused: number;
  misrouted: number;
  // From the write of the new master to each held connection's greeting, ms.
  released: number[];
}

// `rounds` times: the master key deleted, `perRound` connections opened and held (haproxy says so), then a
// master written; each held connection must be greeted by it, at once. `heldNow` reads haproxy's count.
export async function manyHeld(etcd: TestEtcd, port: number, prefix: string, rounds: number, perRound: number, heldNow: () => Promise<number>): Promise<ManyHeld> {
  const outcome: ManyHeld = { held: 0, refused: 0, misrouted: 0, released: [] };
  let master = '2';
  for (let round = 0; round < rounds; round++) {
    await etcd.del(`${prefix}/master`);
    await sleep(300);
    const clients = Array.from({ length: perRound }, () => whoAnswers(port, '127.0.0.1', LIMIT_MS).then((answer) => ({ answer, at: performance.now() })));
    for (const deadline = performance.now() + 10_000; (await heldNow()) < perRound && performance.now() < deadline; ) await sleep(20);
    master = master === '2' ? '3' : '2';
    const at = performance.now();
    await etcd.put(`${prefix}/master`, master);
    for (const { answer, at: answered } of await Promise.all(clients)) {
      outcome.held++;
      if (answer === '') outcome.refused++;
      else if (answer !== `node-${master}`) outcome.misrouted++;
      else outcome.released.push(answered - at);
    }
  }
  return outcome;
}
