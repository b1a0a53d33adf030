// npm test: every suite, each where it has to run, then one summary of the real counts.
//   host     the suites in test/ on this machine
//   cluster  the suites in test/cluster/, inside a private network, pid and mount namespace (they cut etcd
//            members off with firewall rules, which must never reach the machine's network; every process
//            they start dies with the namespace), once per etcd release at hand
// `node test/run.ts host` runs one phase. Exit 1 if any phase failed, or ran fewer tests than it said.

import { spawn } from 'node:child_process';
import { resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
const uvu = resolve(root, 'node_modules/.bin/uvu');

interface Phase {
  name: string;
  command: string[];
  env?: Record<string, string>;
}

function inPrivateNamespace(command: string[]): string[] {
  // sh stays as the namespace's first process: it reaps whatever is left orphaned in there.
  return ['unshare', '--net', '--pid', '--fork', '--mount-proc', '--kill-child', '--', 'sh', '-c', 'ip link set lo up && "$@"', 'sh', ...command];
}

const phases: Phase[] = [
  { name: 'host', command: [process.execPath, uvu, 'test', '\\.test\\.ts$', '-i', 'cluster/'] },
  { name: 'cluster (etcd from this machine)', command: inPrivateNamespace([process.execPath, uvu, 'test/cluster', '\\.test\\.ts$']), env: { AMBASSADOR_TEST_NETNS: '1' } },
];

const wanted = process.argv.slice(2);
const chosen = wanted.length === 0 ? phases : phases.filter((phase) => wanted.some((name) => phase.name.startsWith(name)));
if (chosen.length === 0) throw new Error(`no phase named ${wanted.join(', ')}: choose from ${phases.map((p) => p.name).join(', ')}`);

const plain = (text: string) => text.replace(/\x1b\[[0-9;]*m/g, '');
let total = 0;
let passed = 0;
let skipped = 0;
const failures: string[] = [];
for (const phase of chosen) {
  process.stdout.write(`\n== ${phase.name}\n`);
  const output = await new Promise<{ code: number | null; text: string }>((done) => {
    const child = spawn(phase.command[0]!, phase.command.slice(1), { cwd: root, env: { ...process.env, ...phase.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (data) => {
      text += data;
      process.stdout.write(data);
    });
    child.stderr.on('data', (data) => process.stderr.write(data));
    child.on('exit', (code) => done({ code, text }));
  });
  const count = (label: string) => Number(new RegExp(`${label}:\\s+(\\d+)`).exec(plain(output.text))?.[1] ?? NaN);
  const [t, p, s] = [count('Total'), count('Passed'), count('Skipped')];
  if (Number.isNaN(t) || Number.isNaN(p)) {
    failures.push(`${phase.name}: ended before its summary (exit ${output.code})`);
    total += 1;
    continue;
  }
  total += t;
  passed += p;
  skipped += Number.isNaN(s) ? 0 : s;
  if (output.code !== 0 || p !== t) failures.push(`${phase.name}: ${t - p} of ${t} failed (exit ${output.code})`);
}

process.stdout.write(`\n${failures.map((failure) => `  failed: ${failure}\n`).join('')}\n  Total:     ${total}\n  Passed:    ${passed}\n  Skipped:   ${skipped}\n`);
process.exit(failures.length === 0 ? 0 : 1);
