// The container for real: the repository's Dockerfile built by a real Docker engine (a private dockerd), for
// linux/amd64 and for linux/arm64 (under emulation: qemu-user-static through binfmt), each on base images stood
// in locally under the Dockerfile's own names, then run as the original README ran it, against the suite's
// etcd and backends on the host's loopback (--network host).

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as assert from 'uvu/assert';
import { startDocker, standInBuildBase, standInFinalBase, type TestDocker } from '../../harness/docker.ts';
import { within } from '../../harness/limits.ts';
import { eventually, freePort, whoAnswers } from '../../harness/net.ts';
import { useEmulation } from '../../harness/binfmt.ts';
import { debianRoot } from '../../harness/rootfs.ts';
import { nodeFor } from '../../build/node.ts';
import { worldSuite } from '../../harness/world.ts';

const IMAGE = 'ambassador:test';
const ARM64_IMAGE = 'ambassador:test-arm64';
const root = resolve(import.meta.dirname, '../..');
const dockerfile = readFileSync(join(root, 'Dockerfile'), 'utf8');

// Builds the image for one platform: the build stage on this machine's platform (it cross-builds), the final
// stage on a stand-in base of the platform built (see standInFinalBase); the classic builder sets no platform
// arguments itself.
async function buildImage(docker: TestDocker, platform: 'linux/amd64' | 'linux/arm64', rootfs: string, image: string) {
  const began = performance.now();
  await standInFinalBase(docker, rootfs, dockerfile, platform);
  const commit = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
  const arch = platform.slice('linux/'.length);
  // The classic builder (no BuildKit frontend to fetch) with the host's network, for npm's registry and apt.
  const platformArgs = ['--build-arg', 'BUILDPLATFORM=linux/amd64', '--build-arg', `TARGETARCH=${arch}`];
  await docker.docker(['build', '--network', 'host', ...platformArgs, '--build-arg', `AMBASSADOR_COMMIT=${commit}`, '-t', image, root], { timeoutMs: 2_400_000 });
  const bytes = Number((await docker.docker(['image', 'inspect', '-f', '{{.Size}}', image])).trim());
  console.log(`      ${platform} image built in ${((performance.now() - began) / 1000).toFixed(0)} s; ${(bytes / 1e6).toFixed(0)} MB (on the debootstrapped stand-in base)`);
}

const { test, run } = worldSuite<{ docker: TestDocker; rootfs: string; undoEmulation: () => void }>(
  'the image, built and run by a real Docker engine, for linux/amd64 and linux/arm64',
  async (context) => {
    const amd64Root = (context.rootfs = debianRoot('trixie-haproxy-3.4'));
    context.undoEmulation = useEmulation('qemu-aarch64');
    context.docker = await startDocker();
    const began = performance.now();
    await standInBuildBase(context.docker, amd64Root, dockerfile, nodeFor('x64'));
    console.log(`      the build stage's stand-in base made in ${((performance.now() - began) / 1000).toFixed(0)} s`);
    await buildImage(context.docker, 'linux/amd64', amd64Root, IMAGE);
    await buildImage(context.docker, 'linux/arm64', debianRoot('trixie-haproxy-3.4-arm64'), ARM64_IMAGE);
  },
  async ({ docker, undoEmulation }) => {
    const stopping = performance.now();
    await docker?.stop();
    console.log(`      dockerd stopped and its data root removed in ${((performance.now() - stopping) / 1000).toFixed(0)} s`);
    undoEmulation?.();
  },
);

test('the image runs /bin/ambassador as the unprivileged haproxy user and stops it with SIGTERM', async ({ docker }) => {
  const config = JSON.parse(await docker.docker(['image', 'inspect', '-f', '{{json .Config}}', IMAGE])) as { User: string; Entrypoint: string[]; StopSignal: string };
  assert.is(config.User, 'haproxy');
  assert.equal(config.Entrypoint, ['/bin/ambassador']);
  assert.is(config.StopSignal, 'SIGTERM');
  const version = await docker.docker(['run', '--rm', IMAGE, '--version']);
  assert.match(version, /^ambassador \d+\.\d+\.\d+ \(\w+\)\n$/);
});

// A process on the host (containers share its pid space, seen from here) whose command line names `text`.
function processesNaming(text: string): number[] {
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(text);
      } catch {
        return false;
      }
    })
    .map(Number);
}

function uidOf(pid: number): number {
  return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

// The original README's two forms: flags straight after the image, and /bin/ambassador first (its unit).
for (const [form, entry] of [['flags after the image', []], ['/bin/ambassador first', ['/bin/ambassador']]] as const) {
  test(`docker run --rm --network host (${form}): serves the master, fails over, refuses a bad value, logs, and stops with exit 0 leaving nothing`, async ({ world, docker, rootfs }) => {
    const prefix = world.prefix();
    await world.writeSeed(prefix);
    const port = await freePort();
    const name = `ambassador-test-${port}`;
    const flags = [`--etcd=${world.etcd.endpoint}`, `--etcd-prefix=${prefix}`, '--master-only', `--port=${port}`, '--bind=127.0.0.1', `--backend-port=${world.backendPort}`];
    const started = performance.now();
    const client = docker.spawnDocker(['run', '--rm', '--network', 'host', '--name', name, IMAGE, ...entry, ...flags]);
    let output = '';
    client.stdout!.on('data', (data) => (output += data));
    client.stderr!.on('data', (data) => (output += data));
    const exited = new Promise<number | null>((done) => client.on('exit', (code) => done(code)));
    try {
      await world.routesTo(port, 'node-2', 60_000);
      console.log(`      docker run → first connection served: ${(performance.now() - started).toFixed(0)} ms`);
      await world.etcd.put(`${prefix}/master`, '3');
      await world.routesTo(port, 'node-3');
      await world.etcd.put(`${prefix}/instances/1/private_ip`, '127.0.0.11\n    server evil 127.0.0.12:1');
      await eventually(() => docker.docker(['logs', name], { stderr: true }), (logs) => logs.includes(`rejected ${prefix}/instances/1/private_ip=`), 10_000, 'the bad value refused in docker logs');
      const logs = await docker.docker(['logs', name], { stderr: true });
      assert.match(logs, /INFO  applied revision \d+: master 2 -> 3 \(runtime, \d+ ms\)/);
      assert.is(await whoAnswers(port), 'node-3');
      const pid = Number((await docker.docker(['inspect', '-f', '{{.State.Pid}}', name])).trim());
      const haproxyUid = Number(/^haproxy:[^:]*:(\d+):/m.exec(readFileSync(join(rootfs, 'etc/passwd'), 'utf8'))![1]);
      assert.is(uidOf(pid), haproxyUid, 'ambassador runs as the image\'s haproxy user');
      const runtimeDir = `/tmp/ambassador-127.0.0.1-${port}/`;
      assert.ok(processesNaming(runtimeDir).length > 0, 'its haproxy runs');
      const stopping = performance.now();
      await docker.docker(['stop', name], { timeoutMs: 30_000 });
      const code = await within(exited, 15_000, 'docker run to end');
      console.log(`      docker stop: ${(performance.now() - stopping).toFixed(0)} ms, exit ${code}`);
      // Exit 0, not 137: it stopped on the SIGTERM, within docker stop's 10 s, before any SIGKILL.
      assert.is(code, 0, output);
      assert.equal(processesNaming(runtimeDir), [], 'no process left');
      assert.is(await whoAnswers(port), '', 'nothing listening');
    } finally {
      await docker.docker(['rm', '-f', name]).catch(() => {});
    }
  });

  test(`docker kill (${form}) leaves nothing listening and no haproxy`, async ({ world, docker }) => {
    const prefix = world.prefix();
    await world.writeSeed(prefix);
    const port = await freePort();
    const name = `ambassador-test-${port}`;
    const flags = [`--etcd=${world.etcd.endpoint}`, `--etcd-prefix=${prefix}`, '--master-only', `--port=${port}`, '--bind=127.0.0.1', `--backend-port=${world.backendPort}`];
    const client = docker.spawnDocker(['run', '--rm', '--network', 'host', '--name', name, IMAGE, ...entry, ...flags]);
    client.stdout!.resume();
    client.stderr!.resume();
    const exited = new Promise<number | null>((done) => client.on('exit', (code) => done(code)));
    try {
      await world.routesTo(port, 'node-2', 60_000);
      await docker.docker(['kill', name], { timeoutMs: 30_000 });
      assert.is(await within(exited, 15_000, 'docker run to end'), 137);
      await eventually(() => processesNaming(`/tmp/ambassador-127.0.0.1-${port}/`), (left) => left.length === 0, 5000, 'no haproxy left');
      assert.is(await whoAnswers(port), '', 'nothing listening');
    } finally {
      await docker.docker(['rm', '-f', name]).catch(() => {});
    }
  });
}

test('the arm64 image runs the arm64 executable: serves the master, fails over, and stops with exit 0', async ({ world, docker }) => {
  assert.is((await docker.docker(['run', '--rm', '--entrypoint', '/usr/bin/uname', ARM64_IMAGE, '-m'])).trim(), 'aarch64', "the image's userland is arm64");
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const port = await freePort();
  const name = `ambassador-test-arm64-${port}`;
  const flags = [`--etcd=${world.etcd.endpoint}`, `--etcd-prefix=${prefix}`, '--master-only', `--port=${port}`, '--bind=127.0.0.1', `--backend-port=${world.backendPort}`];
  const client = docker.spawnDocker(['run', '--rm', '--network', 'host', '--name', name, ARM64_IMAGE, ...flags]);
  let output = '';
  client.stdout!.on('data', (data) => (output += data));
  client.stderr!.on('data', (data) => (output += data));
  const exited = new Promise<number | null>((done) => client.on('exit', (code) => done(code)));
  try {
    const started = performance.now();
    await world.routesTo(port, 'node-2', 120_000);
    console.log(`      arm64 image (emulated): docker run → first connection served: ${(performance.now() - started).toFixed(0)} ms`);
    const pid = Number((await docker.docker(['inspect', '-f', '{{.State.Pid}}', name])).trim());
    const runs = `${readlinkSync(`/proc/${pid}/exe`)} ${readFileSync(`/proc/${pid}/cmdline`, 'utf8')}`;
    assert.match(runs, 'qemu-aarch64', 'the arm64 executable runs under emulation');
    await world.etcd.put(`${prefix}/master`, '3');
    await world.routesTo(port, 'node-3', 30_000);
    await docker.docker(['stop', name], { timeoutMs: 60_000 });
    assert.is(await within(exited, 30_000, 'docker run to end'), 0, output);
  } finally {
    await docker.docker(['rm', '-f', name]).catch(() => {});
  }
});

// The engine's data root holds every layer of both images (each a full copy where the kernel has no overlay).
run(600_000);
