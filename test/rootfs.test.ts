// dist/ambassador in the world of the container image: a minimal bookworm root with only haproxy,
// run as the haproxy user, against an etcd on the host's loopback. Proves it needs nothing else.

import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as assert from 'uvu/assert';
import { DIST_BINARY } from './helpers/ambassador.ts';
import { answers, freePort, whoAnswers } from './helpers/net.ts';
import { processOf, startProcess, stopPid } from './helpers/processes.ts';
import { bookwormWithHaproxy } from './helpers/rootfs.ts';
import { worldSuite } from './helpers/world.ts';

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

run();
