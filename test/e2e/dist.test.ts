// The built executable itself, as users run it: dist/ambassador with no Node on PATH.

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as assert from 'uvu/assert';
import { DIST_BINARY, ambassadorCommand } from '../../harness/ambassador.ts';
import { processOf } from '../../harness/processes.ts';
import { answeredBy, answers, freePort, whoAnswers } from '../../harness/net.ts';
import { TIME_SCALE } from '../../harness/limits.ts';
import { makeCertificates } from '../../harness/tls.ts';
import { worldSuite } from '../../harness/world.ts';
import packageJson from '../../package.json' with { type: 'json' };

// Fails here, not later, when the build is missing.
const { test, run } = worldSuite('dist/ambassador', () => void ambassadorCommand('dist'));

test('prints its help with an empty environment', () => {
  const help = execFileSync('env', ['-i', DIST_BINARY, '--help'], { encoding: 'utf8' });
  assert.match(help, 'Usage: ambassador --etcd-prefix=PREFIX --port=PORT');
});

test('prints the package version and the commit', () => {
  const version = execFileSync('env', ['-i', DIST_BINARY, '--version'], { encoding: 'utf8' });
  assert.match(version, new RegExp(`^ambassador ${packageJson.version.replaceAll('.', '\\.')} \\((\\w+(-dirty)?|unknown)\\)\\n$`));
});

test('exits 2 on a usage error with a one-line reason and a hint', () => {
  const result = spawnSync(DIST_BINARY, ['--etcd=10.0.0.5', '--etcd-prefix=/services/mysql', '--master-ony', '--port=5432'], { encoding: 'utf8' });
  assert.is(result.status, 2);
  assert.is(result.stderr.split('\n')[0], 'ambassador: unknown flag --master-ony (did you mean --master-only?)');
  const missing = spawnSync(DIST_BINARY, ['--etcd-prefix=/services/mysql'], { encoding: 'utf8', env: {} });
  assert.is(missing.status, 2);
  assert.match(missing.stderr, '--port is required');
  const range = spawnSync(DIST_BINARY, ['--etcd-prefix=/s', '--port=70000'], { encoding: 'utf8', env: {} });
  assert.is(range.status, 2);
  assert.match(range.stderr, '--port="70000" is not a port');
});

test('a bad file flag exits 2 by itself in a line or two, with no stack trace, and leaves no runtime dir', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ambassador-files-'));
  try {
    const certs = makeCertificates(dir);
    mkdirSync(join(dir, 'a-dir'));
    writeFileSync(join(dir, 'garbage.pem'), 'not a certificate\n');
    writeFileSync(join(dir, 'empty'), '');
    const missing = join(dir, 'missing.pem');
    const cases: [string[], string][] = [
      [[`--etcd-ca=${missing}`], `--etcd-ca=${missing}: no such file`],
      [[`--etcd-ca=${join(dir, 'a-dir')}`], 'is a directory'],
      [[`--etcd-ca=${join(dir, 'garbage.pem')}`], 'no PEM certificate'],
      [[`--etcd-cert=${join(dir, 'garbage.pem')}`, `--etcd-key=${certs.clientKey}`], '--etcd-cert='],
      [[`--etcd-cert=${certs.clientCert}`, `--etcd-key=${join(dir, 'garbage.pem')}`], 'not a PEM private key'],
      [[`--etcd-cert=${certs.clientCert}`, `--etcd-key=${missing}`], 'no such file'],
      [['--etcd-user=reader', `--etcd-password-file=${missing}`], 'no such file'],
      [['--etcd-user=reader', `--etcd-password-file=${join(dir, 'a-dir')}`], 'is a directory'],
      [['--etcd-user=reader', `--etcd-password-file=${join(dir, 'empty')}`], 'the file is empty'],
    ];
    for (const [flags, message] of cases) {
      const runtimeDir = join(dir, 'run');
      // The bound only catches a process that never exits: each run takes 0.3-0.8 s here, and went past 10 s
      // under CI's full load (the image builds, arm64 emulation and four suites beside it).
      const result = spawnSync(DIST_BINARY, ['--etcd-prefix=/services/mysql', '--port=5432', `--runtime-dir=${runtimeDir}`, ...flags], { encoding: 'utf8', env: {}, timeout: 30_000 * TIME_SCALE });
      const lines = result.stderr.split('\n').filter(Boolean);
      assert.is(result.status, 2, `${flags.join(' ')}: ${result.stderr}`);
      assert.ok(lines.length <= 2, result.stderr);
      assert.match(lines[0]!, /^ambassador: --etcd-/);
      assert.match(lines[0]!, message);
      assert.not.ok(lines.some((line) => /^\s+at /.test(line)), 'no stack trace');
      assert.not.ok(existsSync(runtimeDir), 'no runtime dir');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('routes to the master, fails over, and stops cleanly', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only'], { binary: 'dist' });
  await world.routesTo(ambassador.port, 'node-2');
  await world.etcd.put(`${prefix}/master`, '1');
  await world.routesTo(ambassador.port, 'node-1');
  assert.equal(await answers(ambassador.port, 4), Array(4).fill('node-1'));
  const haproxy = processOf(ambassador.haproxyPid()!);
  assert.is(await ambassador.stop(), 0);
  assert.not.ok(haproxy());
  assert.is(await whoAnswers(ambassador.port), '');
});

test('bounds its heap by itself; --node-options can raise the bound, NODE_OPTIONS cannot touch it', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const limit = async (nodeOptions: string[], env: Record<string, string>) => {
    const statusPort = await freePort();
    const ambassador = await world.start([...nodeOptions, `--etcd-prefix=${prefix}`, `--status=127.0.0.1:${statusPort}`], { binary: 'dist', env });
    await ambassador.waitForLog(/status: serving/);
    const text = await (await fetch(`http://127.0.0.1:${statusPort}/metrics`)).text();
    await ambassador.cleanup();
    return Number(/^ambassador_heap_limit_bytes (\S+)$/m.exec(text)![1]) / (1 << 20);
  };
  const baked = await limit([], {});
  assert.ok(baked > 90 && baked < 110, `${baked} MB: --max-old-space-size=96 and a 1 MB semi-space are baked in`);
  assert.is(await limit([], { NODE_OPTIONS: '--max-old-space-size=256' }), baked, 'NODE_OPTIONS is not read');
  const raised = await limit(['--node-options=--max-old-space-size=256'], {});
  assert.ok(raised > 250 && raised < 270, `${raised} MB with --node-options=--max-old-space-size=256`);
});

test('balances over all instances from the environment alone', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const ambassador = await world.start([], { binary: 'dist', env: { AMBASSADOR_ETCD_PREFIX: prefix } });
  await world.routesTo(ambassador.port, 'node-3');
  assert.equal(await answeredBy(ambassador.port, 9), ['node-1', 'node-2', 'node-3']);
});

run();
