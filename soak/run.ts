// One soak run: the schedule written out, the world started, each cycle's faults injected, held and healed,
// then a quiet period; the world stopped, the history checked. Must run in a private network namespace.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stopAll } from '../harness/processes.ts';
import { check, DEFAULT_CHECK, type Verdict } from './checker.ts';
import { createHistory, now } from './history.ts';
import { inject, type Injected } from './nemesis.ts';
import { makeSchedule, random, scheduledKinds, type Schedule } from './schedule.ts';
import { startSoakWorld } from './world.ts';

interface SoakRun {
  seed: number;
  durationMs: number;
  // A schedule kept from an earlier run (a regression's), instead of one drawn from the seed.
  schedule?: Schedule;
  dir: string;
  log(line: string): void;
}

export async function runSoak(run: SoakRun): Promise<{ verdict: Verdict; schedule: Schedule }> {
  mkdirSync(run.dir, { recursive: true });
  const schedule = run.schedule ?? makeSchedule(run.seed, run.durationMs);
  writeFileSync(join(run.dir, 'schedule.json'), JSON.stringify(schedule, null, 2) + '\n');
  const history = createHistory(join(run.dir, 'history.jsonl'));
  const world = await startSoakWorld(history, run.dir, run.seed);
  writeFileSync(join(run.dir, 'etcd-version'), world.cluster.version() + '\n');
  const next = random(run.seed + 2);
  const began = performance.now();
  try {
    // Let the first state settle before the first fault.
    await sleep(3000);
    for (const [n, cycle] of schedule.cycles.entries()) {
      const wait = began + 3000 + cycle.at - performance.now();
      if (wait > 0) await sleep(wait);
      run.log(`cycle ${n + 1}/${schedule.cycles.length} at ${((performance.now() - began) / 1000).toFixed(0)} s: ${cycle.faults.map((f) => f.kind).join(' + ')} for ${cycle.holdMs} ms`);
      const injected: { id: number; healing: Injected }[] = [];
      for (const fault of cycle.faults) injected.push({ id: fault.id, healing: await inject(world, fault, history, next) });
      await sleep(cycle.holdMs);
      for (const { id, healing } of injected.reverse()) {
        await healing.heal();
        history.add({ type: 'fault-end', t: now(), id });
      }
      // Quiet: no fault, the master stays where a linearizable read finds it.
      await world.pauseWriter();
      await world.readMaster();
      history.add({ type: 'quiet-start', t: now() });
      await sleep(cycle.quietMs);
      history.add({ type: 'quiet-end', t: now() });
      world.resumeWriter();
    }
  } finally {
    await world.stop();
    await history.close();
    await stopAll().catch((err: Error) => run.log(err.message));
  }
  return { verdict: check(history.events, DEFAULT_CHECK, scheduledKinds(schedule)), schedule };
}
