// npm run fuzz -- [--seed N] [--rounds N] [--out DIR]   hostile registries and write bursts, drawn from a seed,
//                                                       against dist/ambassador, a real etcd and haproxy
// npm run fuzz -- --check DIR                           the checker, again, on a stored run
//
// Prints its seed first, so that any run can be made again. Writes history.json and ambassador.log to the out
// dir (kept only when a property is violated); exit 1 on any violation (fuzz/README.md).

import { randomInt } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkFuzz, type FuzzEvent, type FuzzViolation } from './checker.ts';
import { runFuzz } from './run.ts';

const args = process.argv.slice(2);
const flag = (name: string) => {
  const at = args.indexOf(`--${name}`);
  return at < 0 ? undefined : args[at + 1];
};

function report(violations: readonly FuzzViolation[]): void {
  for (const violation of violations.slice(0, 20)) console.log(`VIOLATION ${violation.property} at ${violation.t.toFixed(0)} ms: ${violation.message}`);
  console.log(`${violations.length} violation(s)`);
}

const checkDir = flag('check');
if (checkDir !== undefined) {
  const violations = checkFuzz(JSON.parse(readFileSync(join(checkDir, 'history.json'), 'utf8')) as FuzzEvent[]);
  report(violations);
  process.exit(violations.length === 0 ? 0 : 1);
}

const seed = Number(flag('seed') ?? randomInt(1, 2 ** 31));
const rounds = Number(flag('rounds') ?? 40);
const out = flag('out') ?? mkdtempSync(join(tmpdir(), `ambassador-fuzz-${seed}-`));
mkdirSync(out, { recursive: true });
console.log(`fuzz: seed ${seed}, ${rounds} rounds (npm run fuzz -- --seed ${seed} --rounds ${rounds})`);
const { violations } = await runFuzz({ seed, rounds, dir: out, log: (line) => console.log(line) });
report(violations);
if (violations.length > 0) {
  console.log(`the run is kept in ${out}; once its cause is fixed, add {"seed": ${seed}, "rounds": ${rounds}} to fuzz/regression-seeds.json`);
  process.exit(1);
}
if (flag('out') === undefined) rmSync(out, { recursive: true, force: true });
