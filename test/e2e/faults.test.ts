// Faults: real parts broken on purpose. After each, what clients get meanwhile, and that the live state
// converges to etcd's truth (checked through real connections). Recovery times are printed as they happen.

import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import * as assert from 'uvu/assert';
import { startAmbassador } from '../../harness/ambassador.ts';
import { startGrpcProxy } from '../../harness/cluster.ts';
import { startEtcd } from '../../harness/etcd.ts';
import { workerPids } from '../../harness/haproxy.ts';
import { answeredBy, answers, eventually, freePort, whoAnswers } from '../../harness/net.ts';
import { processOf, startProcess, stopPid } from '../../harness/processes.ts';
import { startH2Proxy } from '../../harness/h2-proxy.ts';
import { startRelay } from '../../harness/relay.ts';
import { makeCertificates } from '../../harness/tls.ts';
import { worldSuite, type World } from '../../harness/world.ts';

const { test, run } = worldSuite('faults');

const AUTHENTICATE = '/etcdserverpb.Auth/Authenticate';
const report = (what: string, ms: number) => console.log(`      ${what}: ${ms.toFixed(0)} ms`);

// Time from now until a new connection through `port` is answered by `name`.
async function convergence(world: World, port: number, name: string, timeoutMs = 20_000): Promise<number> {
  const began = performance.now();
  await world.routesTo(port, name, timeoutMs);
  return performance.now() - began;
}

// ---- etcd ----

test('etcd not running at start, started 10 s later: nothing served until then, then the registry', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  await world.etcd.kill();
  let port = 0;
  try {
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
    port = ambassador.port;
    await ambassador.waitForLog(/etcd: unreachable .*nothing is served until the first snapshot/);
    await sleep(10_000); // the outage this test is about, not a wait for an event
    assert.is(await whoAnswers(port), '', 'refused meanwhile');
    assert.not.ok(ambassador.haproxyPid(), 'no haproxy yet');
  } finally {
    await world.etcd.start();
  }
  report('etcd up → routed', await convergence(world, port, 'node-2'));
});

test('etcd SIGKILLed and restarted: the last state keeps serving, writes right after are followed', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  await world.etcd.kill();
  await ambassador.waitForLog(/etcd: .*keeping the last state/);
  assert.equal(await answers(ambassador.port, 3), Array(3).fill('node-2'), 'served meanwhile');
  await world.etcd.start();
  await world.etcd.put(`${prefix}/master`, '3');
  await world.etcd.put(`${prefix}/instances/3/port`, String(world.backendPort));
  report('etcd back, write → routed', await convergence(world, ambassador.port, 'node-3'));
});

test('a silent partition is noticed by the check within ~3 s (keepalive, with the check off), and healing it converges', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  // The check every 1 s ±20 %, its read 1 s, the question why 0.5 s: 2.7 s, and what a root's slower start adds.
  for (const [check, boundMs] of [['1s', 4_000], ['0', 20_000]] as const) {
    const relay = await startRelay(world.etcd.endpoint);
    try {
      const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--etcd=${relay.endpoint}`, `--etcd-check-interval=${check}`], { replaceEtcd: true });
      await world.etcd.put(`${prefix}/master`, '2');
      await world.routesTo(ambassador.port, 'node-2');
      const from = ambassador.logs.length;
      const cut = performance.now();
      relay.partition();
      await world.etcd.put(`${prefix}/master`, '3');
      await ambassador.waitForLog(/WARN .*etcd: (leaving member|disconnected|unreachable|watch)/, boundMs + 1_000, from);
      const noticed = performance.now() - cut;
      report(`partition → noticed, --etcd-check-interval=${check}`, noticed);
      assert.ok(noticed <= boundMs, `noticed in ${noticed.toFixed(0)} ms, bound ${boundMs}`);
      assert.is(await whoAnswers(ambassador.port), 'node-2', 'the last state serves meanwhile');
      relay.heal();
      report('healed → routed', await convergence(world, ambassador.port, 'node-3'));
    } finally {
      await relay.close();
      await world.afterEach();
    }
  }
});

test('a watch that stays open but stops delivering (a proxy that drops it) is caught by the check and resynced', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const proxy = await startH2Proxy(world.etcd.endpoint);
  try {
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--etcd=${proxy.endpoint}`], { replaceEtcd: true });
    await world.routesTo(ambassador.port, 'node-2');
    await world.etcd.put(`${prefix}/instances/1/port`, String(world.backendPort));
    await ambassador.waitForLog(/applied revision/, 5_000, ambassador.logs.length - 1);
    const from = ambassador.logs.length;
    proxy.muteWatches();
    await world.etcd.put(`${prefix}/master`, '3');
    const routed = await convergence(world, ambassador.port, 'node-3', 10_000);
    report('watch muted, write → routed', routed);
    assert.ok(routed <= 7_000, `routed in ${routed.toFixed(0)} ms: two checks (2 s apart ±20 %, each waiting 0.5 s for a progress reply) and a snapshot, bound 7 s`);
    assert.match(await ambassador.waitForLog(/the mirror cannot be trusted: etcd has a change of .*\/master .*not delivered for a whole check interval/, 1000, from), 'WARN');
    assert.ok(proxy.watchStreams() >= 2, 'a new watch was opened');
  } finally {
    await proxy.close();
  }
});

test('an auth token that expires between checks is renewed, with a read-only etcd user, and the watch converges, across a reconnect too', async ({ world }) => {
  const etcd = await startEtcd({ args: ['--auth-token-ttl', '2'] });
  const prefix = '/auth/services/mysql';
  const secrets = join(world.tempDir, 'etcd-password');
  writeFileSync(secrets, 'reader-secret-4417\n', { mode: 0o600 });
  const etcdctl = (...args: string[]) => execFileSync('etcdctl', [`--endpoints=${etcd.endpoint}`, ...args], { stdio: 'pipe' });
  // ambassador → relay (to drop its connections) → a gRPC-aware proxy (to see etcd refuse the token) → etcd.
  const proxy = await startH2Proxy(etcd.endpoint);
  const relay = await startRelay(proxy.endpoint);
  try {
    etcdctl('user', 'add', 'root:root-secret');
    etcdctl('auth', 'enable');
    const root = ['--user', 'root:root-secret'];
    etcdctl(...root, 'role', 'add', 'reader');
    etcdctl(...root, 'role', 'grant-permission', 'reader', '--prefix=true', 'read', `${prefix}/`);
    etcdctl(...root, 'user', 'add', 'ambassador:reader-secret-4417');
    etcdctl(...root, 'user', 'grant-role', 'ambassador', 'reader');
    etcd.authenticate('root', 'root-secret');
    for (const i of [1, 2, 3]) await etcd.put(`${prefix}/instances/${i}/private_ip`, `127.0.0.1${i}`);
    await etcd.put(`${prefix}/master`, '2');

    // Each request renews a simple token: checks 5 s apart leave the 2 s token to expire between them, on a
    // connection that stays up.
    const ambassador = await world.start(
      [`--etcd-prefix=${prefix}`, '--master-only', `--etcd=${relay.endpoint}`, '--etcd-user=ambassador', `--etcd-password-file=${secrets}`, '--etcd-check-interval=5s', '--log-level=debug'],
      { replaceEtcd: true },
    );
    await world.routesTo(ambassador.port, 'node-2');
    const authenticated = proxy.calls(AUTHENTICATE);
    assert.ok(authenticated >= 1, 'ambassador authenticated through the proxy');
    await eventually(() => proxy.errors('invalid auth token'), (refused) => refused > 0, 15_000, 'etcd refused the expired token');
    await eventually(() => proxy.calls(AUTHENTICATE), (calls) => calls > authenticated, 5000, 'ambassador authenticated again');
    await etcd.put(`${prefix}/master`, '3');
    report('token renewed → routed', await convergence(world, ambassador.port, 'node-3'));
    relay.heal(); // drops every connection: the watch reconnects, with whatever token it holds then
    await etcd.put(`${prefix}/master`, '1');
    report('reconnect → routed', await convergence(world, ambassador.port, 'node-1'));
    const cmdline = readFileSync(`/proc/${ambassador.child.pid}/cmdline`, 'utf8');
    assert.not.match(cmdline, 'reader-secret', 'the password is not on the command line');
    assert.not.ok(ambassador.logs.some((line) => line.includes('reader-secret')), 'the password is never logged');
  } finally {
    await relay.close();
    await proxy.close();
    await etcd.stop();
  }
});

test('through etcd grpc-proxy, restarted mid-run', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const proxy = await startGrpcProxy([world.etcd.endpoint]);
  try {
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--etcd=${proxy.endpoint}`], { replaceEtcd: true });
    await world.routesTo(ambassador.port, 'node-2');
    await world.etcd.put(`${prefix}/master`, '1');
    await world.routesTo(ambassador.port, 'node-1');
    await proxy.stop();
    await world.etcd.put(`${prefix}/master`, '3');
    assert.is(await whoAnswers(ambassador.port), 'node-1', 'the last state serves meanwhile');
    await proxy.start();
    report('proxy back → routed', await convergence(world, ambassador.port, 'node-3'));
  } finally {
    await proxy.stop();
  }
});

test('etcd over TLS with client certificates; without a client certificate it is never reached', async ({ world }) => {
  const dir = join(world.tempDir, 'tls');
  mkdirSync(dir);
  const certs = makeCertificates(dir);
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const endpoint = `https://127.0.0.1:${clientPort}`;
  const etcd = startProcess('etcd', [
    '--name', 'tls', '--data-dir', join(dir, 'data'),
    '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
    '--listen-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`,
    '--initial-cluster', `tls=http://127.0.0.1:${peerPort}`, '--log-level', 'error',
    '--cert-file', certs.serverCert, '--key-file', certs.serverKey, '--client-cert-auth', '--trusted-ca-file', certs.ca,
  ]);
  etcd.stdout?.resume();
  etcd.stderr?.resume();
  const client = new Etcd3({
    hosts: endpoint,
    credentials: { rootCertificate: readFileSync(certs.ca), certChain: readFileSync(certs.clientCert), privateKey: readFileSync(certs.clientKey) },
  });
  try {
    const prefix = '/tls/services/mysql';
    await eventually(() => client.put(`${prefix}/master`).value('2').then(() => true, () => false), (ok) => ok, 15_000, 'etcd over TLS');
    for (const i of [1, 2, 3]) await client.put(`${prefix}/instances/${i}/private_ip`).value(`127.0.0.1${i}`);
    const tlsFlags = [`--etcd=127.0.0.1:${clientPort}`, `--etcd-ca=${certs.ca}`];
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', ...tlsFlags, `--etcd-cert=${certs.clientCert}`, `--etcd-key=${certs.clientKey}`], { replaceEtcd: true });
    await world.routesTo(ambassador.port, 'node-2');
    await client.put(`${prefix}/master`).value('3');
    await world.routesTo(ambassador.port, 'node-3');
    // The CA file goes away while running: the next connection cannot be made, which is said once and retried.
    const from = ambassador.logs.length;
    renameSync(certs.ca, `${certs.ca}.away`);
    ambassador.child.kill('SIGHUP');
    await ambassador.waitForLog(new RegExp(`etcd: unreachable \\(--etcd-ca=${certs.ca}: no such file\\)`), 10_000, from);
    await client.put(`${prefix}/master`).value('1');
    assert.is(await whoAnswers(ambassador.port), 'node-3', 'the last state keeps serving');
    renameSync(`${certs.ca}.away`, certs.ca);
    await world.routesTo(ambassador.port, 'node-1');
    assert.is(ambassador.logs.slice(from).filter((line) => line.includes('no such file')).length, 1, 'said once');
    assert.ok(processOf(ambassador.child.pid!)(), 'no crash');
    const refused = await world.start([`--etcd-prefix=${prefix}`, '--master-only', ...tlsFlags], { replaceEtcd: true });
    await refused.waitForLog(/etcd: unreachable/);
    assert.is(await whoAnswers(refused.port), '', 'a CA alone is not let in');
  } finally {
    client.close();
    await stopPid(etcd.pid!);
  }
});

// ---- haproxy ----

test('the current haproxy worker killed: exit 1 with the reason, no haproxy left', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  const master = ambassador.haproxyPid()!;
  const haproxy = processOf(master);
  const worker = workerPids(master)[0]!;
  process.kill(worker, 'SIGKILL');
  assert.is(await ambassador.exited, 1);
  await ambassador.waitForLog(/stopping: haproxy master exited with code/);
  assert.not.ok(haproxy(), 'no haproxy left');
});

async function failsToStart(world: World, flags: string[], message: RegExp, options: { port?: number } = {}) {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const began = performance.now();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, ...flags], options);
  const code = await ambassador.exited;
  assert.is(code, 1, ambassador.logs.join('\n'));
  assert.ok(performance.now() - began < 20_000, 'no hang');
  assert.ok(ambassador.logs.some((line) => message.test(line)), `a line matching ${message} in:\n${ambassador.logs.join('\n')}`);
  const pid = ambassador.haproxyPid();
  if (pid !== undefined) assert.not.ok(processOf(pid)(), 'no haproxy left');
}

test('the haproxy executable missing or not executable: exit 1, one clear line', async ({ world }) => {
  await failsToStart(world, ['--haproxy=/nonexistent/haproxy'], /ERROR haproxy executable not found: \/nonexistent\/haproxy \(install haproxy or pass --haproxy\)$/);
  const notExecutable = join(world.tempDir, 'haproxy');
  writeFileSync(notExecutable, '#!/bin/sh\n');
  chmodSync(notExecutable, 0o644);
  await failsToStart(world, [`--haproxy=${notExecutable}`], /ERROR haproxy executable is not executable: /);
});

test('a config directory that is not writable: exit 1, one clear line', async ({ world }) => {
  const readOnly = join(world.tempDir, 'read-only');
  mkdirSync(readOnly);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', readOnly]);
  try {
    await failsToStart(world, [`--haproxy-config=${readOnly}/haproxy.cfg`], /cannot write the haproxy config: directory .*read-only is missing or not writable/);
  } finally {
    execFileSync('umount', [readOnly]);
  }
});

test('a port already in use at start: exit 1 naming the address that holds it and the process, no hang, no haproxy left', async ({ world }) => {
  const port = await freePort();
  const squatter = createServer().listen(port, '127.0.0.1');
  await new Promise((resolve) => squatter.once('listening', resolve));
  try {
    await failsToStart(world, ['--master-only'], new RegExp(`port ${port} is taken: 127\\.0\\.0\\.1:${port} \\(pid ${process.pid}, [^)]+\\) listens on it`), { port });
  } finally {
    squatter.close();
  }
});

test('a --bind address that does not exist on this host: exit 1 with the reason', async ({ world }) => {
  // 192.0.2.1 (TEST-NET-1) is on no interface: binding to it fails; nothing is ever sent to it.
  await failsToStart(world, ['--master-only', '--bind=192.0.2.1'], /cannot listen on 192\.0\.2\.1:\d+: .*EADDRNOTAVAIL/);
});

// ---- ambassador ----

test('SIGHUP makes ambassador resync from etcd and re-apply, serving throughout', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  const from = ambassador.logs.length;
  ambassador.child.kill('SIGHUP');
  await ambassador.waitForLog(/SIGHUP: resyncing from etcd/, 5000, from);
  await ambassador.waitForLog(/etcd: snapshot taken/, 5000, from);
  assert.is(await whoAnswers(ambassador.port), 'node-2');
  await world.etcd.put(`${prefix}/master`, '1');
  await world.routesTo(ambassador.port, 'node-1');
});

// ---- load ----

test('no failed connection under sustained load while 200 changes are applied', async ({ world }) => {
  const prefix = world.prefix();
  for (const [name, i] of [['a', 1], ['b', 2], ['c', 3]] as const) await world.etcd.put(`${prefix}/instances/${name}/private_ip`, `127.0.0.1${i}`);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`]);
  await world.routesTo(ambassador.port, 'node-1');
  const load = spawn(process.execPath, [join(import.meta.dirname, '../../bench/load.ts'), String(ambassador.port), '30000', '16'], { stdio: ['pipe', 'pipe', 'inherit'] });
  let output = '';
  load.stdout.on('data', (data) => (output += data));
  const done = new Promise((resolve) => load.on('exit', resolve));
  // The load is known to run before, between and after the changes by the connections the backends take.
  const served = () => world.backends.reduce((sum, backend) => sum + backend.accepted(), 0);
  const moreConnections = (count: number, what: string) => {
    const target = served() + count;
    return eventually(served, (total) => total >= target, 10_000, `${count} connections ${what}`);
  };
  await moreConnections(100, 'before the changes');
  const names = ['d', 'e', 'f', 'g'];
  for (let i = 0; i < 200; i++) {
    const key = `${prefix}/instances/${names[i % 4]}/private_ip`;
    if (i % 5 === 0) await world.etcd.put(`${prefix}/master`, names[(i / 5) % 4]!); // master changes (not used without --master-only)
    else if (i % 5 === 1) await world.etcd.del(key); // removals
    else await world.etcd.put(key, `127.0.0.1${1 + (i % 3)}`); // additions and moves
    await moreConnections(10, `after change ${i + 1}`);
  }
  // A last change: once it is applied, every change before it was.
  const from = ambassador.logs.length;
  await world.etcd.put(`${prefix}/instances/z/private_ip`, '127.0.0.11');
  await ambassador.waitForLog(/applied revision \d+: .*added [^ ]*\bz\b/, 10_000, from);
  await moreConnections(100, 'after the last change was applied');
  load.stdin.end();
  await done;
  const { ok, failed, seconds } = JSON.parse(output) as { ok: number; failed: number; seconds: number };
  console.log(`      ${ok} connections in ${seconds.toFixed(1)} s (${(ok / seconds).toFixed(0)}/s), ${failed} failed`);
  assert.ok(ok > 1000, 'the load ran');
  assert.is(failed, 0);
});

// ---- hostile input ----

const hostileValues: [string, string][] = [
  ['newline and a server line', '127.0.0.12\n    server evil 127.0.0.13:PORT\n#'],
  ['carriage return', '127.0.0.12\r    server evil 127.0.0.13:PORT'],
  ['NUL', '127.0.0.12\u0000server evil'],
  ['tab', '127.0.0.12\tbackup'],
  ['spaces', '127.0.0.12 backup'],
  ['#', '127.0.0.12#'],
  ['double quote', '"127.0.0.12"'],
  ["single quote", "'127.0.0.12'"],
  ['backslash', '127.0.0.12\\nserver'],
  ['1 MB', `127.0.0.12${' '.repeat(1 << 20)}x`],
  ['unicode look-alike dot', '127\u2024000\u20240\u202412'],
  ['fullwidth digits', '\uff11\uff12\uff17.0.0.12'],
  ['IPv6 with a zone', 'fe80::1%lo'],
  ['address with a port', '127.0.0.12:PORT'],
  ['a key path', '/services/mysql/instances/2/private_ip'],
];

const hostilePorts = ['0', '65536', '80 check', 'PORT\n    server evil 127.0.0.13:PORT', '-1', ''];

function assertCleanConfig(config: string) {
  const allowed = /^(#.*|global|defaults|listen service|    (stats socket \S+ mode 600 level admin|noreuseport|hard-stop-after \w+|mworker-max-reloads \d+|mode tcp|timeout \w+ \w+|retries \d|option \w+|bind \S+|balance leastconn|default-server [a-z0-9 ,-]+|lua-load \S+\/hold\.lua|\.if version_atleast\(3\.1\)|    tune\.lua\.bool-sample-conversion normal|\.endif|tcp-request inspect-delay \d+ms|tcp-request content lua\.ambassador_hold service \d+)|    server [A-Za-z0-9_.:-]+ (\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]|[a-z0-9.-]+):\d+( disabled)?|)$/;
  for (const line of config.split('\n')) assert.ok(allowed.test(line), `unexpected config line ${JSON.stringify(line.slice(0, 100))}`);
}

test('hostile values through real etcd never reach the config or route a connection, and are logged once', async ({ world }) => {
  const prefix = world.prefix();
  await world.etcd.put(`${prefix}/instances/ok/private_ip`, '127.0.0.11');
  const ambassador = await world.start([`--etcd-prefix=${prefix}`]);
  await world.routesTo(ambassador.port, 'node-1');
  const port = String(world.backendPort);
  const cases: [string, string][] = [
    ...hostileValues.map(([, value], i): [string, string] => [`${prefix}/instances/v${i}/private_ip`, value.replaceAll('PORT', port)]),
    ...hostilePorts.map((value, i): [string, string] => [`${prefix}/instances/p${i}/port`, value.replaceAll('PORT', port)]),
  ];
  for (const [key, value] of cases) {
    await world.etcd.put(key, value);
    // A bad port arrives first, so its instance is never complete and valid, not even for a moment.
    if (key.endsWith('/port')) await world.etcd.put(key.replace(/port$/, 'private_ip'), '127.0.0.12');
    await ambassador.waitForLog(new RegExp(`rejected ${key.replaceAll('/', '\\/')}=`));
    assertCleanConfig(readFileSync(ambassador.configPath, 'utf8'));
    assert.equal(await answeredBy(ambassador.port, 4), ['node-1'], `only the valid instance answers after ${key}`);
  }
  // Keys outside the layout are ignored; names that are odd but valid are routed under safe server names.
  await world.etcd.put(`${prefix}/instances/a/b/private_ip`, '127.0.0.13');
  await world.etcd.put(`${prefix}/elsewhere`, '127.0.0.13');
  await world.etcd.put(`${prefix}/instances/${'x'.repeat(1000)}/public_ip`, '127.0.0.13');
  await world.etcd.put(`${prefix}/instances/with space.and.dots/private_ip`, '127.0.0.11');
  await ambassador.waitForLog(/added with space\.and\.dots/);
  assertCleanConfig(readFileSync(ambassador.configPath, 'utf8'));
  assert.match(readFileSync(ambassador.configPath, 'utf8'), /\n    server with_space\.and\.dots:[0-9a-f]{16} 127\.0\.0\.11:\d+\n/);
  assert.equal(await answeredBy(ambassador.port, 6), ['node-1']);
  // Every problem was logged exactly once, across all those changes.
  for (const [key] of cases) assert.is(ambassador.logs.filter((line) => line.includes(`rejected ${key}=`)).length, 1, key);
  assert.ok(processOf(ambassador.child.pid!)(), 'ambassador is up');
});

test('a master that names a key path, and 10,000 instances, with --master-only', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
  await world.routesTo(ambassador.port, 'node-2');
  await world.etcd.put(`${prefix}/master`, `${prefix}/instances/3/private_ip`);
  await ambassador.waitForLog(/rejected .*\/master=.*names no routable instance/);
  await ambassador.waitForLog(/applied revision \d+: master 2 -> none/);
  assert.is(await whoAnswers(ambassador.port), '', 'nobody, rather than a wrong node');
  let next = 0;
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (next < 10_000) {
        const i = next++;
        await world.etcd.put(`${prefix}/instances/n${i}/private_ip`, `127.1.${i >> 8}.${i & 255}`);
      }
    }),
  );
  await world.etcd.put(`${prefix}/master`, '3');
  const { header } = await world.etcd.client.get(`${prefix}/master`).exec();
  await ambassador.waitForLog(new RegExp(`applied revision ${header.revision}: `), 60_000);
  await world.routesTo(ambassador.port, 'node-3', 30_000);
  const config = readFileSync(ambassador.configPath, 'utf8');
  const servers = config.split('\n').filter((line) => line.startsWith('    server ')).length;
  assert.is(servers, 10_003, `the config file has ${servers} servers; log:\n${ambassador.logs.filter((line) => !line.includes('DEBUG')).slice(-25).join('\n')}`);
  assertCleanConfig(config);
});

// ---- secrets and files ----

test('a password given as a flag is warned about; files are private and links planted in the runtime dir are not followed', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const runtimeDir = join(world.tempDir, 'planted');
  mkdirSync(runtimeDir, { mode: 0o700 });
  const victim = join(world.tempDir, 'victim');
  writeFileSync(victim, 'untouched\n');
  for (const name of ['haproxy.cfg.new', 'haproxy.cfg', 'haproxy.pid', 'hold.lua']) symlinkSync(victim, join(runtimeDir, name));
  const ambassador = await startAmbassador(
    [`--etcd=${world.etcd.endpoint}`, `--etcd-prefix=${prefix}`, '--master-only', `--port=${await freePort()}`, '--bind=127.0.0.1', `--backend-port=${world.backendPort}`, '--etcd-user=nobody', '--etcd-password=flag-secret-8812'],
    { runtimeDir },
  );
  try {
    await ambassador.waitForLog(/--etcd-password is visible to every user in ps/);
    assert.not.ok(ambassador.logs.some((line) => line.includes('flag-secret-8812')), 'never logged');
  } finally {
    await ambassador.cleanup();
  }
  // A plain start in the same dir, links still in place.
  for (const name of ['haproxy.cfg.new', 'haproxy.cfg', 'haproxy.pid', 'hold.lua']) {
    rmSync(join(runtimeDir, name), { force: true });
    symlinkSync(victim, join(runtimeDir, name));
  }
  const second = await world.start([`--etcd-prefix=${prefix}`, '--master-only'], { runtimeDir });
  await world.routesTo(second.port, 'node-2');
  await world.etcd.put(`${prefix}/master`, '3');
  await world.routesTo(second.port, 'node-3');
  assert.is(readFileSync(victim, 'utf8'), 'untouched\n', 'no write through a planted link');
  assert.is(statSync(runtimeDir).mode & 0o777, 0o700);
  for (const name of ['haproxy.cfg', 'haproxy.pid', 'ambassador.pid', 'hold.lua']) {
    assert.not.ok(lstatSync(join(runtimeDir, name)).isSymbolicLink(), `${name} is a file of ours`);
    assert.is(statSync(join(runtimeDir, name)).mode & 0o777, 0o600, name);
  }
  assert.is(statSync(join(runtimeDir, 'admin.sock')).mode & 0o777, 0o600, 'admin socket');
  assert.is(statSync(join(runtimeDir, 'master.sock')).mode & 0o777, 0o600, 'master socket');
  assert.equal(readdirSync(runtimeDir).sort(), ['admin.sock', 'ambassador.pid', 'haproxy.cfg', 'haproxy.pid', 'hold.lua', 'master.sock']);
});

run();
