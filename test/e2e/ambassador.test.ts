// End to end, from source: a real etcd, a real haproxy started by ambassador, real TCP backends on loopback.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as assert from 'uvu/assert';
import { startAmbassador } from '../../harness/ambassador.ts';
import { processOf } from '../../harness/processes.ts';
import { answeredBy, answers, eventually, freePort, openSession, whoAnswers } from '../../harness/net.ts';
import { worldSuite } from '../../harness/world.ts';

const { test, run } = worldSuite('ambassador');

test('routes to the master', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  assert.equal(await answers(ambassador.port, 5), Array(5).fill('node-2'));
});

test('fails over when master changes, cutting sessions to the old master', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  await world.etcd.put(`${prefix}/master`, '3');
  await world.routesTo(ambassador.port, 'node-3');
  await ambassador.waitForLog(/applied revision \d+: master 2 -> 3/);
  assert.equal(await answers(ambassador.port, 5), Array(5).fill('node-3'));
});

test('spreads over every instance and follows additions and removals', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`]);
  await world.servedBy(ambassador.port, ['node-1', 'node-2', 'node-3']);
  await world.etcd.del(`${prefix}/instances/2/private_ip`);
  await world.servedBy(ambassador.port, ['node-1', 'node-3']);
  await world.etcd.put(`${prefix}/instances/2/private_ip`, '127.0.0.12');
  await world.servedBy(ambassador.port, ['node-1', 'node-2', 'node-3']);
});

test('uses public_ip with --public', async ({ world }) => {
  const prefix = world.prefix();
  await world.etcd.put(`${prefix}/instances/a/private_ip`, '127.0.0.11');
  await world.etcd.put(`${prefix}/instances/a/public_ip`, '127.0.0.13');
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--public']);
  await world.routesTo(ambassador.port, 'node-3');
});

test('ignores a partly written instance until its address arrives', async ({ world }) => {
  const prefix = world.prefix();
  await world.etcd.put(`${prefix}/instances/1/private_ip`, '127.0.0.11');
  await world.etcd.put(`${prefix}/instances/2/port`, String(world.backendPort));
  const ambassador = await world.start([`--etcd-prefix=${prefix}`]);
  await world.routesTo(ambassador.port, 'node-1');
  assert.equal(await answeredBy(ambassador.port, 6), ['node-1']);
  assert.not.match(readFileSync(ambassador.configPath, 'utf8'), /server 2 /);
  assert.not.ok(ambassador.logs.some((line) => line.includes('instances/2')), 'a partial instance is not a problem');
});

test('serves nobody when the master is missing or unknown, and says so once (--hold=0: closed at once)', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  await world.etcd.del(`${prefix}/master`);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', '--hold=0']);
  await ambassador.waitForLog(/applied revision/);
  assert.is(await whoAnswers(ambassador.port), '');
  await ambassador.waitForLog(/rejected \/t\d+\/services\/mysql\/master: no master is set/);
  await world.etcd.put(`${prefix}/master`, '9');
  await ambassador.waitForLog(/names no routable instance/);
  await world.etcd.put(`${prefix}/instances/4/private_ip`, '127.0.0.11'); // another change, same problem
  await ambassador.waitForLog(/applied revision \d+: added 4/);
  assert.is(await whoAnswers(ambassador.port), '');
  assert.is(ambassador.logs.filter((line) => line.includes('names no routable instance')).length, 1, 'logged once');
  await world.etcd.put(`${prefix}/master`, '1');
  await world.routesTo(ambassador.port, 'node-1');
});

for (const [field, value] of [
  ['private_ip', '127.0.0.12\n    server evil 127.0.0.13:PORT\n#'],
  ['port', 'PORT\n    server evil 127.0.0.13:PORT\n#'],
  ['private_ip', '127.0.0.12 backup'],
] as const) {
  test(`keeps an injection through ${field} = ${JSON.stringify(value)} out of the config and the routing`, async ({ world }) => {
    const prefix = world.prefix();
    await world.writeSeed(prefix, '1');
    const ambassador = await world.start([`--etcd-prefix=${prefix}`]);
    await world.servedBy(ambassador.port, ['node-1', 'node-2', 'node-3']);
    await world.etcd.del(`${prefix}/instances/3/private_ip`);
    await world.etcd.put(`${prefix}/instances/2/${field}`, value.replaceAll('PORT', String(world.backendPort)));
    await ambassador.waitForLog(new RegExp(`rejected ${prefix}/instances/2/${field}=`));
    // The config file is written once the change is live, before it is said applied.
    await ambassador.waitForLog(/applied revision \d+: [^(]*removed [^(]*\b2\b/);
    await world.servedBy(ambassador.port, ['node-1']);
    const config = readFileSync(ambassador.configPath, 'utf8');
    assert.not.match(config, 'evil');
    assert.not.match(config, '127.0.0.13');
    assert.not.match(config, '127.0.0.12');
    assert.equal(await answeredBy(ambassador.port, 12), ['node-1']);
  });
}

test('resyncs after a compaction past its revision while it was away', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  ambassador.child.kill('SIGSTOP');
  try {
    await world.etcd.kill();
    await world.etcd.start();
    for (let i = 0; i < 50; i++) await world.etcd.put(`${prefix}/instances/9/port`, String(1000 + i));
    await world.etcd.put(`${prefix}/master`, '3');
    const { header } = await world.etcd.client.get(`${prefix}/master`).exec();
    await world.etcd.client.kv.compact({ revision: header.revision, physical: true });
    await world.etcd.client.maintenance.defragment();
  } finally {
    ambassador.child.kill('SIGCONT');
  }
  await world.routesTo(ambassador.port, 'node-3', 15_000);
});

test('ends on the final state after a burst of 300 writes', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`]);
  await world.routesTo(ambassador.port, 'node-2');
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 299; i++) writes.push(world.etcd.put(`${prefix}/master`, String((i % 3) + 1)));
  await Promise.all(writes);
  await world.etcd.put(`${prefix}/master`, '3');
  const { header } = await world.etcd.client.get(`${prefix}/master`).exec();
  // Done: the newest revision is known and haproxy runs it, with nothing left in flight.
  const live = async () => JSON.parse(await (await fetch(`http://127.0.0.1:${statusPort}/state`)).text()) as { revision: string; haproxy: { current: boolean } };
  await eventually(live, (state) => state.revision === header.revision && state.haproxy.current, 10_000, 'the final revision live');
  assert.equal(await answers(ambassador.port, 5), Array(5).fill('node-3'), 'still the final state');
  assert.match(readFileSync(ambassador.configPath, 'utf8'), /\n    server 3 127\.0\.0\.13:\d+\n$/);
});

// With the runtime API, only a change that needs a reload is checked by haproxy: an instance by DNS name.
for (const [mode, refusedAddress] of [['reload', '127.0.0.66'], ['runtime', 'refused.invalid']] as const) {
  test(`keeps the last good config serving when haproxy rejects a new one, and never checks that one again (--apply=${mode})`, async ({ world }) => {
    const prefix = world.prefix();
    await world.writeSeed(prefix);
    const picky = resolve(import.meta.dirname, '../fixtures/picky-haproxy');
    const checks = join(world.tempDir, `picky-${mode}.log`);
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--haproxy=${picky}`, `--apply=${mode}`], { env: { PICKY_LOG: checks } });
    await world.routesTo(ambassador.port, 'node-2');
    const before = readFileSync(ambassador.configPath, 'utf8');
    await world.etcd.put(`${prefix}/instances/6/private_ip`, refusedAddress);
    await ambassador.waitForLog(/haproxy: refused the config for the newest state; the last good one keeps serving.*refused by the test/);
    assert.is(await whoAnswers(ambassador.port), 'node-2');
    assert.is(readFileSync(ambassador.configPath, 'utf8'), before);
    assert.is(readFileSync(checks, 'utf8').split('\n').filter(Boolean).length, 1);
    ambassador.child.kill('SIGHUP');
    await ambassador.waitForLog(/SIGHUP: resyncing/);
    // The resync tries the refused config once more, and it is refused once more.
    await eventually(() => readFileSync(checks, 'utf8').split('\n').filter(Boolean).length, (n) => n === 2, 5000, 'a second check after SIGHUP');
    // Said once more, once haproxy's answer is in (a moment after the check that the fixture counts).
    await eventually(() => ambassador.logs.filter((line) => line.includes('refused the config for the newest state')).length, (n) => n === 2, 5000, 'the second refusal said');
    await world.etcd.del(`${prefix}/instances/6/private_ip`);
    await world.etcd.put(`${prefix}/master`, '1');
    await world.routesTo(ambassador.port, 'node-1');
    assert.is(readFileSync(checks, 'utf8').split('\n').filter(Boolean).length, 2, 'the refused config was checked twice in all: once, and once after SIGHUP');
  });
}

test('stops on SIGTERM with exit 0, leaving no haproxy behind', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  const haproxy = processOf(ambassador.haproxyPid()!);
  assert.ok(haproxy());
  const session = await openSession(ambassador.port);
  assert.is(session.greeting, 'node-2');
  assert.is(await ambassador.stop('SIGTERM'), 0);
  assert.not.ok(haproxy(), 'haproxy is gone');
  assert.is(await whoAnswers(ambassador.port), '');
  session.close();
});

test('exits 1 when the haproxy master dies', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  process.kill(ambassador.haproxyPid()!, 'SIGKILL');
  assert.is(await ambassador.exited, 1);
  await ambassador.waitForLog(/stopping: haproxy master was killed by SIGKILL/);
});

test('takes its haproxy down with it when killed, and serves again once restarted', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const first = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(first.port, 'node-2');
  const haproxy = processOf(first.haproxyPid()!);
  await first.kill();
  await eventually(haproxy, (alive) => !alive, 5000, 'haproxy to stop after ambassador was killed');
  const second = await world.start([`--etcd-prefix=${prefix}`, '--master-only'], { runtimeDir: first.runtimeDir, port: first.port });
  await world.routesTo(second.port, 'node-2');
});

test('without setpriv, a restarted ambassador stops the haproxy its killed predecessor left', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  // A PATH with haproxy on it and nothing else, setpriv included.
  const bin = mkdtempSync(join(tmpdir(), 'ambassador-path-'));
  symlinkSync(execFileSync('sh', ['-c', 'command -v haproxy || echo /usr/sbin/haproxy'], { encoding: 'utf8' }).trim(), join(bin, 'haproxy'));
  const env = { PATH: bin };
  try {
    const first = await world.start([`--etcd-prefix=${prefix}`, '--master-only'], { env });
    await first.waitForLog(/setpriv \(util-linux\) not found/);
    await world.routesTo(first.port, 'node-2');
    const orphanPid = first.haproxyPid()!;
    const orphan = processOf(orphanPid);
    await first.kill();
    await world.routesTo(first.port, 'node-2');
    assert.ok(orphan(), 'SIGKILL leaves haproxy running, and serving');
    const second = await world.start([`--etcd-prefix=${prefix}`, '--master-only'], { runtimeDir: first.runtimeDir, port: first.port, env });
    await second.waitForLog(/stopping an haproxy left behind/);
    await second.waitForLog(/haproxy: started/);
    assert.not.ok(orphan(), 'the old haproxy is gone before the new one starts');
    await world.routesTo(first.port, 'node-2');
    assert.is.not(second.haproxyPid(), orphanPid);
  } finally {
    rmSync(bin, { recursive: true, force: true });
  }
});

test('refuses a second ambassador on the same runtime dir', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const first = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(first.port, 'node-2');
  const second = await world.start([`--etcd-prefix=${prefix}`, '--master-only'], { runtimeDir: first.runtimeDir, port: first.port });
  assert.is(await second.exited, 1);
  await second.waitForLog(/another ambassador \(pid \d+\) is running/);
  assert.is(await whoAnswers(first.port), 'node-2');
});

test('prints the config and its problems with --dry-run, and exits 1 when etcd is unreachable', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  await world.etcd.put(`${prefix}/instances/4/private_ip`, '10.0.0.4 oops');
  const dry = await world.start([`--etcd-prefix=${prefix}`, '--dry-run']);
  assert.is(await dry.exited, 0);
  const output = dry.logs.join('\n');
  assert.match(output, /\n    server 1 127\.0\.0\.11:\d+\n    server 2 127\.0\.0\.12:\d+\n    server 3 127\.0\.0\.13:\d+/);
  assert.match(output, `rejected ${prefix}/instances/4/private_ip="10.0.0.4 oops"`);
  assert.not.ok(dry.haproxyPid(), 'no haproxy started');
  const unreachable = await startAmbassador([`--etcd-prefix=${prefix}`, '--dry-run', '--etcd=127.0.0.1:9', '--port=9']);
  try {
    assert.is(await unreachable.exited, 1);
    assert.match(unreachable.logs.join('\n'), 'etcd unreachable');
  } finally {
    await unreachable.cleanup();
  }
});

run();
