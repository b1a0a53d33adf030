// One fuzz run: a real etcd and the backends, dist/ambassador (master-only, under a file limit low enough for a
// round to pass the server bound), a client that connects all the time, and the rounds of the plan written
// one after another, each settled before the next; then the history checked. Everything it starts is stopped.

import { readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAmbassador, type RunningAmbassador } from '../harness/ambassador.ts';
import { startEtcd, type TestEtcd } from '../harness/etcd.ts';
import { freePort, startBackend, whoAnswers, type Backend } from '../harness/net.ts';
import { stopAll } from '../harness/processes.ts';
import { checkFuzz, type FuzzEvent, type FuzzViolation } from './checker.ts';
import { applyOp, BACKENDS, emptyModel, expectedAnswer, makePlan, PREFIX, routableCount, type Op, type Plan } from './generate.ts';

// haproxy's open-file limit in the run, and the most servers it allows (docs/operating.md, "Bounds"): a
// `count` round writes more than that, or well less.
const FILE_LIMIT = 4_000;
const serverBound = (limit: number) => limit - 200 - 32 - 3 * Math.min(availableParallelism(), 64);
const SETTLE_MS = 20_000;
const PROBE_EVERY_MS = 20;
const MEMORY_EVERY_MS = 50;

interface FuzzRun {
  seed: number;
  rounds: number;
  dir: string;
  log(line: string): void;
}

export async function runFuzz(run: FuzzRun): Promise<{ violations: FuzzViolation[]; events: FuzzEvent[] }> {
  const events: FuzzEvent[] = [];
  const began = performance.now();
  const clock = () => performance.now() - began;
  const etcd = await startEtcd();
  const port = await freePort('127.0.0.41');
  const backends: Backend[] = [];
  let ambassador: RunningAmbassador | undefined;
  try {
    for (const [name, host] of Object.entries(BACKENDS)) backends.push(await startBackend(name, host, port));
    // A DNS name the layout takes: whichever of its addresses haproxy resolves it to answers.
    backends.push(await startBackend('localhost', '127.0.0.1', port), await startBackend('localhost', '::1', port));
    const plan = makePlan(run.seed, run.rounds, port, serverBound(FILE_LIMIT));
    const listen = await freePort();
    const statusPort = await freePort();
    ambassador = await startAmbassador(
      [`--etcd=${etcd.endpoint}`, `--etcd-prefix=${PREFIX}`, '--master-only', `--port=${listen}`, '--bind=127.0.0.1', `--backend-port=${port}`, `--status=127.0.0.1:${statusPort}`, '--etcd-check-interval=500ms'],
      { binary: 'dist', limitFiles: FILE_LIMIT, runtimeDir: join(run.dir, 'run') },
    );
    const pid = ambassador.child.pid!;
    let running = true;
    void ambassador.exited.then((code) => running && events.push({ type: 'exit', t: clock(), code, signal: ambassador!.child.signalCode }));
    const sampling = (async () => {
      while (running) {
        const privateMb = privateMemoryMb(pid);
        if (privateMb !== undefined) events.push({ type: 'memory', t: clock(), privateMb });
        await sleep(MEMORY_EVERY_MS);
      }
    })();
    const probing = (async () => {
      while (running) {
        const sent = clock();
        const answer = await whoAnswers(listen, '127.0.0.1', 1000);
        events.push({ type: 'probe', sent, answered: clock(), answer });
        await sleep(PROBE_EVERY_MS);
      }
    })();
    try {
      await playRounds(plan, etcd, events, clock, { listen, statusPort, log: run.log, exited: () => ambassador!.child.exitCode !== null || ambassador!.child.signalCode !== null });
    } finally {
      running = false;
      await Promise.all([sampling, probing]);
    }
  } finally {
    if (ambassador) writeFileSync(join(run.dir, 'ambassador.log'), ambassador.logs.join('\n') + '\n');
    await ambassador?.cleanup();
    await Promise.all(backends.map((backend) => backend.close()));
    await etcd.stop();
    await stopAll().catch((err: Error) => run.log(err.message));
    writeFileSync(join(run.dir, 'history.json'), JSON.stringify(events) + '\n');
  }
  return { violations: checkFuzz(events), events };
}

interface Observers {
  listen: number;
  statusPort: number;
  log(line: string): void;
  exited(): boolean;
}

async function playRounds(plan: Plan, etcd: TestEtcd, events: FuzzEvent[], clock: () => number, observers: Observers): Promise<void> {
  const model = emptyModel();
  let revision = 0;
  const write = async (op: Op) => {
    if (op.kind === 'put') revision = Number((await etcd.client.put(op.key).value(op.value).exec()).header.revision);
    else if (op.kind === 'delete') revision = Number((await etcd.client.delete().key(op.key).exec()).header.revision);
    else revision = Number((await etcd.client.delete().prefix(`${PREFIX}/`).exec()).header.revision);
  };
  for (const round of plan.rounds) {
    if (observers.exited()) return;
    const writes = round.steps.reduce((sum, step) => sum + step.ops.length, 0);
    observers.log(`round ${round.n}: ${round.kind}, ${writes} write(s)`);
    for (const step of round.steps) {
      const sent = clock();
      if (step.together) {
        for (let at = 0; at < step.ops.length; at += 64) await Promise.all(step.ops.slice(at, at + 64).map(write));
        for (const op of step.ops) applyOp(model, op, plan.meanings, plan.ports);
        events.push({ type: 'write', sent, answered: clock(), expected: expectedAnswer(model) });
        continue;
      }
      for (const op of step.ops) {
        const opSent = clock();
        await write(op);
        applyOp(model, op, plan.meanings, plan.ports);
        events.push({ type: 'write', sent: opSent, answered: clock(), expected: expectedAnswer(model) });
      }
    }
    events.push(await settle(round, model, revision, clock, observers));
  }
}

// Waits until the master port routes as the state says and /healthz has caught up with the round's last write
// (or says it refused it), within SETTLE_MS; then what was seen.
async function settle(round: Plan['rounds'][number], model: ReturnType<typeof emptyModel>, revision: number, clock: () => number, observers: Observers): Promise<FuzzEvent> {
  const expected = expectedAnswer(model);
  const overBound = routableCount(model) > serverBound(FILE_LIMIT);
  const deadline = performance.now() + SETTLE_MS;
  for (;;) {
    const observed = await whoAnswers(observers.listen, '127.0.0.1', 1000);
    const health = await get(observers.statusPort, '/healthz');
    const shown = Number(/^ok: revision (\d+)/.exec(health.body)?.[1] ?? -1);
    const healthy = overBound ? health.status === 503 && /refused/.test(health.body) : health.status === 200 && shown >= revision;
    if ((observed === expected && healthy) || performance.now() > deadline || observers.exited()) {
      const state = JSON.parse((await get(observers.statusPort, '/state')).body || '{}') as { etcd?: { snapshots: number; resyncs: Record<string, number> } };
      const resyncs = Object.values(state.etcd?.resyncs ?? {}).reduce((sum, count) => sum + count, 0);
      return { type: 'settled', t: clock(), round: round.n, kind: round.kind, expected, observed, overBound, revision, health, snapshots: state.etcd?.snapshots ?? -1, resyncs };
    }
    await sleep(50);
  }
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(2_000) });
    return { status: response.status, body: await response.text() };
  } catch (err) {
    return { status: 0, body: (err as Error).message };
  }
}

// Private memory (Anonymous in smaps_rollup), as the bench measures it; undefined once the process is gone.
function privateMemoryMb(pid: number): number | undefined {
  try {
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    return Number(/^Anonymous:\s+(\d+) kB/m.exec(rollup)![1]) / 1024;
  } catch {
    return undefined;
  }
}
