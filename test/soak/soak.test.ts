// The soak in CI: short runs of the nemesis (npm run soak runs it as long as asked), in the private network
// namespace test/run.ts gives this suite. Every seed that ever failed (soak/regression-seeds.json) at the
// duration it failed at, and a fresh seed each run, printed in the test's name so that a failure can be run
// again (npm run soak -- --seed N; a regression's kept schedule with --schedule). AMBASSADOR_SOAK=fresh runs the fresh one alone; AMBASSADOR_SOAK_SEED
// chooses it. Every violation fails the run.

import { randomInt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { runSoak } from '../../soak/run.ts';
import type { Schedule } from '../../soak/schedule.ts';
import { ambassadorCommand } from '../../harness/ambassador.ts';
import { within } from '../../harness/limits.ts';
import { requirePrivateNetwork } from '../../harness/netns.ts';

const FRESH_MS = 6 * 60_000;
const soakDir = resolve(import.meta.dirname, '../../soak');
const regressions = JSON.parse(readFileSync(join(soakDir, 'regression-seeds.json'), 'utf8')) as { seed: number; duration: string; schedule: string }[];
const fresh = Number(process.env.AMBASSADOR_SOAK_SEED ?? randomInt(1, 2 ** 31));
// A fresh seed's schedule deals every fault kind once (about 20 cycles) before any repeats.
const minutes = (duration: string) => Number(/^(\d+)m$/.exec(duration)?.[1] ?? NaN);

const test = suite('the soak, short runs');

function soakTest(title: string, seed: number, durationMs: number, hint: string, schedule?: Schedule) {
  test(title, async () => {
    requirePrivateNetwork();
    ambassadorCommand('dist');
    const dir = mkdtempSync(join(tmpdir(), 'ambassador-soak-'));
    console.log(`      ${title}`);
    try {
      const { verdict } = await within(runSoak({ seed, durationMs, ...(schedule ? { schedule } : {}), dir, log: (line) => console.log(`      ${line}`) }), durationMs + 180_000, 'the soak');
      console.log(`      ${JSON.stringify(verdict.counts)}`);
      const described = verdict.violations.slice(0, 5).map((v) => `${v.invariant}: ${v.message}\n  faults on: ${v.faults.join(', ')}\n  ${v.around.join('\n  ')}`);
      assert.equal(verdict.violations.length, 0, `${hint}\n${described.join('\n\n')}`);
    } catch (err) {
      // Its history and ambassador's log, to look into.
      console.log(`      the run is kept in ${dir}`);
      throw err;
    }
    rmSync(dir, { recursive: true, force: true });
  });
}

if (process.env.AMBASSADOR_SOAK !== 'fresh') {
  for (const { seed, duration, schedule } of regressions) {
    const kept = JSON.parse(readFileSync(join(soakDir, schedule), 'utf8')) as Schedule;
    soakTest(`regression seed ${seed}, ${duration}, its schedule as kept: no violation of the fence, convergence or liveness`, seed, minutes(duration) * 60_000, `seed ${seed} failed before (soak/regression-seeds.json)`, kept);
  }
}
soakTest(
  `fresh seed ${fresh}, ${FRESH_MS / 60_000} minutes: every fault kind, no violation of the fence, convergence or liveness`,
  fresh,
  FRESH_MS,
  `a fresh seed failed: add {"seed": ${fresh}, "duration": "${FRESH_MS / 60_000}m"} to soak/regression-seeds.json once its cause is fixed (npm run soak -- --seed ${fresh} --duration ${FRESH_MS / 60_000}m)`,
);

test.run();
