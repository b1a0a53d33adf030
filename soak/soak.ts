// npm run soak -- [--seed N] [--duration 5m|1h] [--out DIR]   a seeded run of the nemesis against
//                                                                dist/ambassador and a 3-member etcd cluster
// npm run soak -- --schedule FILE [--out DIR]                    a run of a kept schedule (a regression's)
// npm run soak -- --root trixie|sid|trixie-haproxy-3.4 ...       the same inside a Debian root: its haproxy and etcd
// npm run soak -- --check DIR                                    the checker, again, on a stored run
//
// A run draws its schedule from the seed and writes it (schedule.json) before it starts; then history.jsonl,
// ambassador.log and results.json (seed, duration, commit, counts per fault kind, violations). It runs in a
// private network, pid and mount namespace of its own, like the cluster tests. Exit 1 on any violation.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { check, DEFAULT_CHECK, type Verdict } from './checker.ts';
import { readHistory } from './history.ts';
import { runSoak } from './run.ts';
import { inRoot, type RootName } from '../harness/rootfs.ts';
import { scheduledKinds, type Schedule } from './schedule.ts';

const root = resolve(import.meta.dirname, '..');
const args = process.argv.slice(2);
const flag = (name: string) => {
  const at = args.indexOf(`--${name}`);
  return at < 0 ? undefined : args[at + 1];
};

function durationMs(text: string): number {
  const match = /^(\d+)(s|m|h)$/.exec(text);
  if (!match) throw new Error(`--duration ${text}: give e.g. 300s, 5m or 1h`);
  return Number(match[1]) * { s: 1000, m: 60_000, h: 3_600_000 }[match[2] as 's' | 'm' | 'h'];
}

function report(verdict: Verdict): void {
  console.log(`counts: ${JSON.stringify(verdict.counts)}`);
  console.log(`faults: ${JSON.stringify(verdict.faultKinds)}`);
  for (const violation of verdict.violations.slice(0, 20)) {
    console.log(`\nVIOLATION ${violation.invariant}: ${violation.message}\n  faults on: ${violation.faults.join(', ') || 'none'}\n  ${violation.around.join('\n  ')}`);
  }
  console.log(`\n${verdict.violations.length} violation(s)`);
}

const checkDir = flag('check');
if (checkDir !== undefined) {
  const schedule = JSON.parse(readFileSync(join(checkDir, 'schedule.json'), 'utf8')) as Schedule;
  const history = ['history.jsonl', 'history.jsonl.gz'].map((name) => join(checkDir, name)).find((file) => existsSync(file));
  if (history === undefined) throw new Error(`${checkDir} holds no history.jsonl or history.jsonl.gz`);
  const verdict = check(readHistory(history), DEFAULT_CHECK, scheduledKinds(schedule));
  report(verdict);
  process.exit(verdict.violations.length === 0 ? 0 : 1);
}

const kept = flag('schedule') === undefined ? undefined : (JSON.parse(readFileSync(flag('schedule')!, 'utf8')) as Schedule);
const seed = kept?.seed ?? Number(flag('seed') ?? 1);
const duration = kept?.durationMs ?? durationMs(flag('duration') ?? '5m');
// Inside a root there is no git: the commit comes along.
const commit = process.env.AMBASSADOR_SOAK_COMMIT ?? execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
const rootName = flag('root') as RootName | undefined;
const out = resolve(flag('out') ?? join(root, 'soak/results', `${new Date().toISOString().slice(0, 10)}-seed${seed}-${flag('duration') ?? '5m'}`));

if (process.env.AMBASSADOR_TEST_NETNS !== '1') {
  // Into a private network, pid and mount namespace (inside the root named, if one is), then this same
  // script again.
  mkdirSync(out, { recursive: true });
  const again = [process.execPath, ...process.execArgv, import.meta.filename, ...args.filter((arg, i) => arg !== '--root' && args[i - 1] !== '--root'), '--out', out];
  const command = rootName !== undefined ? inRoot(rootName, root, again, true) : ['unshare', '--net', '--pid', '--fork', '--mount-proc', '--kill-child', '--', 'sh', '-c', 'ip link set lo up && "$@"', 'sh', ...again];
  try {
    execFileSync(command[0]!, command.slice(1), { stdio: 'inherit', env: { ...process.env, AMBASSADOR_TEST_NETNS: '1', AMBASSADOR_SOAK_COMMIT: commit } });
    process.exit(0);
  } catch {
    process.exit(1);
  }
}

const { verdict, schedule } = await runSoak({ seed, durationMs: duration, ...(kept ? { schedule: kept } : {}), dir: out, log: (line) => console.log(line) });
const haproxy = (() => {
  try {
    return execFileSync('haproxy', ['-v'], { encoding: 'utf8' }).split('\n')[0];
  } catch {
    return 'unknown';
  }
})();
writeFileSync(
  join(out, 'results.json'),
  JSON.stringify(
    {
      seed,
      durationMs: duration,
      commit,
      date: new Date().toISOString(),
      haproxy,
      etcd: readFileSync(join(out, 'etcd-version'), 'utf8').trim(),
      cycles: schedule.cycles.length,
      counts: verdict.counts,
      faultKinds: verdict.faultKinds,
      violations: verdict.violations,
    },
    (_, v) => (typeof v === 'bigint' ? String(v) : v),
    2,
  ) + '\n',
);
report(verdict);
console.log(`written to ${out}`);
process.exit(verdict.violations.length === 0 ? 0 : 1);
