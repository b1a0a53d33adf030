// The fuzzer in CI (npm run fuzz runs it as long as asked): every seed that ever failed
// (fuzz/regression-seeds.json) and a fresh seed each run, printed in the test's name so that a failure can be
// run again (npm run fuzz -- --seed N --rounds N). AMBASSADOR_FUZZ_SEED chooses the fresh one. Every violation
// fails the run.

import { randomInt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as assert from 'uvu/assert';
import { runFuzz } from '../../fuzz/run.ts';
import { ambassadorCommand } from '../../harness/ambassador.ts';
import { limitedSuite, within } from '../../harness/limits.ts';

const FRESH_ROUNDS = 60;
const fuzzDir = resolve(import.meta.dirname, '../../fuzz');
const regressions = JSON.parse(readFileSync(join(fuzzDir, 'regression-seeds.json'), 'utf8')) as { seed: number; rounds: number }[];
const fresh = Number(process.env.AMBASSADOR_FUZZ_SEED ?? randomInt(1, 2 ** 31));

const test = limitedSuite('the fuzzer');

function fuzzTest(title: string, seed: number, rounds: number, hint: string) {
  test(title, async () => {
    ambassadorCommand('dist');
    const dir = mkdtempSync(join(tmpdir(), 'ambassador-fuzz-'));
    console.log(`      ${title}`);
    const { violations, events } = await within(runFuzz({ seed, rounds, dir, log: () => {} }), 100_000, 'the fuzz run');
    const settled = events.filter((event) => event.type === 'settled').length;
    const probes = events.filter((event) => event.type === 'probe').length;
    console.log(`      ${settled} rounds settled, ${probes} client connections`);
    if (violations.length > 0) console.log(`      the run is kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
    assert.equal(violations.map((v) => `${v.property}: ${v.message}`).slice(0, 10), [], hint);
    assert.is(settled, rounds, 'every round settled');
  });
}

for (const { seed, rounds } of regressions) fuzzTest(`regression seed ${seed}, ${rounds} rounds: no violation`, seed, rounds, `seed ${seed} failed before (fuzz/regression-seeds.json)`);
fuzzTest(
  `fresh seed ${fresh}, ${FRESH_ROUNDS} rounds of hostile registries and write bursts: the process lives, memory within bound, the master routed iff valid, never a non-master, no snapshot loop, /healthz true`,
  fresh,
  FRESH_ROUNDS,
  `a fresh seed failed: add {"seed": ${fresh}, "rounds": ${FRESH_ROUNDS}} to fuzz/regression-seeds.json once its cause is fixed (npm run fuzz -- --seed ${fresh} --rounds ${FRESH_ROUNDS})`,
);

test.run();
