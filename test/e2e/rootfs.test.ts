// dist/ambassador in the world of the container image: a minimal bookworm root with only haproxy,
// run as the haproxy user, against an etcd on the host's loopback. Proves it needs nothing else.

import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as assert from 'uvu/assert';
import { DIST_BINARY } from '../../harness/ambassador.ts';
import { answers, freePort, whoAnswers } from '../../harness/net.ts';
import { processOf, startProcess, stopPid } from '../../harness/processes.ts';
import { docBlock } from '../../harness/docs.ts';
import { bookwormWithHaproxy } from '../../harness/rootfs.ts';
import { worldSuite } from '../../harness/world.ts';

const { test, run } = worldSuite<{ root: string }>('dist/ambassador in a minimal bookworm root', (context) => {
  context.root = bookwormWithHaproxy();
  if (!existsSync(DIST_BINARY)) throw new Error(`${DIST_BINARY} is missing: run npm run build first`);
  copyFileSync(DIST_BINARY, join(context.root, 'bin/ambassador'));
});

test('has nothing but the essential packages and haproxy: no Node', ({ root }) => {
  for (const path of ['usr/bin/node', 'usr/bin/nodejs', 'usr/local/bin/node']) assert.not.ok(existsSync(join(root, path)), path);
  assert.ok(existsSync(join(root, 'usr/sbin/haproxy')));
});

test('starts, routes to the master, follows a failover and stops on SIGTERM, as the haproxy user', async ({ world, root }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const env = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' };
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only'], { chroot: { root, user: 'haproxy' }, env });
  await world.routesTo(ambassador.port, 'node-2');
  await world.etcd.put(`${prefix}/master`, '3');
  await world.routesTo(ambassador.port, 'node-3');
  assert.equal(await answers(ambassador.port, 3), Array(3).fill('node-3'));
  await ambassador.waitForLog(/master 2 -> 3 \(runtime/);
  assert.not.ok(ambassador.logs.some((line) => line.includes('setpriv (util-linux) not found')), 'setpriv is there');
  const haproxy = processOf(ambassador.haproxyPid()!);
  assert.is(await ambassador.stop(), 0);
  assert.not.ok(haproxy());
  assert.is(await whoAnswers(ambassador.port), '');
});

test('runs as PID 1 of its own PID namespace, as in a container: serves, stops on SIGTERM with 0, leaves nothing', async ({ world, root }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const port = await freePort();
  const script = 'mount -t proc proc "$0/proc" && exec chroot --userspec=haproxy:haproxy "$0" /bin/ambassador "$@"';
  const flags = [`--etcd=${world.etcd.endpoint}`, `--etcd-prefix=${prefix}`, '--master-only', `--port=${port}`, '--bind=127.0.0.1', `--backend-port=${world.backendPort}`];
  const unshare = startProcess('unshare', ['--pid', '--fork', '--mount', 'sh', '-c', script, root, ...flags], { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
  unshare.stdout!.resume();
  let logs = '';
  unshare.stderr!.on('data', (data) => (logs += data));
  const exited = new Promise<number | null>((resolve) => unshare.on('exit', (code) => resolve(code)));
  try {
    await world.routesTo(port, 'node-2');
    // unshare --fork waits for its child, which is PID 1 in the new namespace: ambassador.
    const ambassadorPid = Number(readFileSync(`/proc/${unshare.pid}/task/${unshare.pid}/children`, 'utf8').trim().split(/\s+/)[0]);
    assert.match(readFileSync(`/proc/${ambassadorPid}/status`, 'utf8'), /\nNSpid:\s+\d+\s+1\n/, 'ambassador is PID 1 there');
    await world.etcd.put(`${prefix}/master`, '3');
    await world.routesTo(port, 'node-3');
    const inside = readFileSync(`/proc/${ambassadorPid}/task/${ambassadorPid}/children`, 'utf8').trim().split(/\s+/).map(Number);
    const haproxy = processOf(inside[0]!);
    process.kill(ambassadorPid, 'SIGTERM');
    assert.is(await exited, 0, logs);
    assert.not.ok(haproxy(), 'haproxy is gone');
    assert.match(logs, /stopped exit_code=0/);
  } finally {
    await stopPid(unshare.pid!);
  }
});

// The README's two quick-start commands, unchanged, in the minimal root: as root, which has no sudo there, and
// as a user with sudo. apt-get, npm and sudo are stubs that write down how they were called.
const quickStart = [docBlock('README.md', '## Quick start', 'sh'), docBlock('README.md', 'runs as it is; as another user', 'sh')].map((block) => block.trim());

function runQuickStart(root: string, user: 'root' | 'haproxy'): string[] {
  assert.is(quickStart.length, 2, 'install + demo, and test');
  assert.not.ok(existsSync(join(root, 'usr/bin/sudo')), 'no sudo in the root');
  const dir = mkdtempSync(join(root, 'tmp/quickstart-'));
  const inside = dir.slice(root.length);
  try {
    const record = `#!/bin/sh\necho "$(basename "$0") $*" >> ${inside}/calls\n`;
    mkdirSync(join(dir, 'bin'));
    for (const stub of ['apt-get', 'npm']) writeFileSync(join(dir, 'bin', stub), record, { mode: 0o755 });
    if (user !== 'root') writeFileSync(join(dir, 'bin', 'sudo'), `${record}exec "$@"\n`, { mode: 0o755 });
    writeFileSync(join(dir, 'calls'), '');
    chmodSync(join(dir, 'calls'), 0o666);
    chmodSync(dir, 0o777);
    for (const command of quickStart) {
      const script = `cd ${inside} && PATH=${inside}/bin:/usr/sbin:/usr/bin:/sbin:/bin; ${command}`;
      const result = spawnSync('chroot', [`--userspec=${user}:${user}`, root, '/bin/sh', '-c', script], { encoding: 'utf8', timeout: 30_000 });
      assert.is(result.status, 0, `${command}\n${result.stdout}${result.stderr}`);
      assert.not.match(result.stderr, 'not found');
    }
    return readFileSync(join(dir, 'calls'), 'utf8').split('\n').filter(Boolean);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("the README's quick start runs as root, where there is no sudo", ({ root }) => {
  const calls = runQuickStart(root, 'root');
  assert.equal(calls.filter((call) => !call.startsWith('apt-get install -y docker.io') && !call.startsWith('apt-get install -y npm')), [
    'apt-get update',
    'apt-get install -y haproxy etcd-server etcd-client binutils binutils-aarch64-linux-gnu qemu-user-static debootstrap openssl systemd tcpdump iptables iproute2 prometheus patroni postgresql-15 postgresql-client-15',
    'npm ci',
    'npm run demo',
    'npm test',
  ]);
});

test("the README's quick start runs as a user through sudo", ({ root }) => {
  const calls = runQuickStart(root, 'haproxy');
  assert.ok(calls.includes('sudo apt-get update'), calls.join('\n'));
  assert.ok(calls.includes('sudo apt-get install -y haproxy etcd-server etcd-client binutils binutils-aarch64-linux-gnu qemu-user-static debootstrap openssl systemd tcpdump iptables iproute2 prometheus patroni postgresql-15 postgresql-client-15'));
  assert.ok(calls.includes('npm ci') && !calls.includes('sudo npm ci'), 'npm ci as the user');
  assert.ok(calls.includes('sudo npm test'));
});

run();
