// The soak in CI: a short run of the nemesis with a fixed seed (npm run soak runs it as long as asked),
// in the private network namespace test/run.ts gives this suite. Every violation fails it.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { runSoak } from '../../soak/run.ts';
import { ambassadorCommand } from '../helpers/ambassador.ts';
import { within } from '../helpers/limits.ts';
import { requirePrivateNetwork } from '../helpers/netns.ts';

const SEED = 20261128;
const DURATION_MS = 6 * 60_000;

const test = suite('the soak, a short run');

test(`seed ${SEED}, ${DURATION_MS / 60_000} minutes: every fault kind, no violation of the fence, convergence or liveness`, async () => {
  requirePrivateNetwork();
  ambassadorCommand('dist');
  const dir = mkdtempSync(join(tmpdir(), 'ambassador-soak-'));
  try {
    const { verdict } = await within(runSoak({ seed: SEED, durationMs: DURATION_MS, dir, log: (line) => console.log(`      ${line}`) }), DURATION_MS + 180_000, 'the soak');
    console.log(`      ${JSON.stringify(verdict.counts)}`);
    const described = verdict.violations.slice(0, 5).map((v) => `${v.invariant}: ${v.message}\n  faults on: ${v.faults.join(', ')}\n  ${v.around.join('\n  ')}`);
    assert.equal(verdict.violations.length, 0, described.join('\n\n'));
  } catch (err) {
    // Its history and ambassador's log, to look into.
    console.log(`      the run is kept in ${dir}`);
    throw err;
  }
  rmSync(dir, { recursive: true, force: true });
});

test.run();
