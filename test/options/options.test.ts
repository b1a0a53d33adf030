import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { parseCommandLine, usage } from '../../lib/options/parse.ts';

const seed = ['--etcd=10.0.0.5', '--etcd-prefix=/services/mysql', '--master-only', '--port=5432'];

function run(argv: string[], env: Record<string, string> = {}) {
  const parsed = parseCommandLine(argv, env);
  if (parsed.kind !== 'run') throw new Error(`expected options, got ${JSON.stringify(parsed)}`);
  return parsed.options;
}

function usageError(argv: string[], env: Record<string, string> = {}): string {
  const parsed = parseCommandLine(argv, env);
  if (parsed.kind !== 'usage-error') throw new Error(`expected a usage error, got ${parsed.kind}`);
  return parsed.message;
}

test('reads the seed command line, a bare etcd host meaning port 2379', () => {
  const options = run(seed);
  assert.equal(options.etcd, ['http://10.0.0.5:2379']);
  assert.is(options.etcdPrefix, '/services/mysql');
  assert.is(options.masterOnly, true);
  assert.is(options.public, false);
  assert.is(options.port, 5432);
  assert.is(options.backendPort, 5432);
  assert.is(options.bind, '0.0.0.0');
  assert.is(options.haproxy, 'haproxy');
  assert.is(options.hardStopAfter, '5m');
  assert.ok(Object.isFrozen(options));
});

test('defaults etcd to 127.0.0.1:2379', () => {
  assert.equal(run(['--etcd-prefix=/p', '--port=1']).etcd, ['http://127.0.0.1:2379']);
});

test('takes several endpoints in each form', () => {
  const options = run(['--etcd=a.example:2380, 10.0.0.1,https://[::1]:2379,http://h', '--etcd-prefix=/p', '--port=80']);
  assert.equal(options.etcd, ['http://a.example:2380', 'http://10.0.0.1:2379', 'https://[::1]:2379', 'http://h:2379']);
});

test('uses https for bare endpoints when a CA is given', () => {
  assert.equal(run([...seed, '--etcd-ca=/ca.pem']).etcd, ['https://10.0.0.5:2379']);
});

test('accepts space-separated values and strips a trailing slash from the prefix', () => {
  const options = run(['--etcd-prefix', '/services/mysql/', '--port', '5432', '--backend-port', '3306']);
  assert.is(options.etcdPrefix, '/services/mysql');
  assert.is(options.backendPort, 3306);
});

test('suggests the nearest flag for a typo', () => {
  assert.is(usageError(['--etcd-prefix=/p', '--port=1', '--master-ony']), 'unknown flag --master-ony (did you mean --master-only?)');
  assert.match(usageError(['--prot=1']), 'did you mean --port?');
  assert.match(usageError(['--completely-unrelated']), 'unknown flag --completely-unrelated (see --help)');
});

test('names a missing required flag', () => {
  assert.match(usageError(['--port=1']), '--etcd-prefix is required');
  assert.match(usageError(['--etcd-prefix=/p']), '--port is required');
});

test('refuses ports out of range or not numbers', () => {
  for (const port of ['0', '65536', '-1', '80 check', 'abc', '1e3', '']) {
    assert.match(usageError(['--etcd-prefix=/p', `--port=${port}`]), '--port', `port ${JSON.stringify(port)}`);
  }
  assert.match(usageError(['--etcd-prefix=/p', '--port=1', '--backend-port=70000']), '--backend-port="70000" is not a port');
});

test('refuses a bind that is not an IP address', () => {
  assert.match(usageError([...seed, '--bind=localhost']), '--bind="localhost" is not an IPv4 or IPv6 address');
  assert.is(run([...seed, '--bind=::1']).bind, '::1');
});

test('refuses bad endpoints, durations, log settings and control characters', () => {
  const prefixAndPort = ['--etcd-prefix=/p', '--port=1'];
  assert.match(usageError([...prefixAndPort, '--etcd=http://a b']), 'is not an etcd endpoint');
  assert.match(usageError([...prefixAndPort, '--etcd=host:99999']), 'is not an etcd endpoint');
  assert.match(usageError([...seed, '--hard-stop-after=soon']), '--hard-stop-after="soon" is not a duration');
  assert.match(usageError([...seed, '--log-format=xml']), 'is not one of text, json');
  assert.match(usageError([...seed, '--log-level=loud']), 'is not one of debug, info, warn, error');
  assert.match(usageError(['--etcd-prefix=/p\n', '--port=1']), 'control character');
  assert.match(usageError([...seed, 'stray']), 'unexpected argument "stray"');
  assert.match(usageError([...seed, '--port=2']), '--port is given more than once');
});

test('reads every flag from AMBASSADOR_* and lets the flag win', () => {
  const env = { AMBASSADOR_ETCD_PREFIX: '/services/pg', AMBASSADOR_PORT: '6432', AMBASSADOR_MASTER_ONLY: 'true', AMBASSADOR_PUBLIC: '1' };
  const options = run([], env);
  assert.is(options.etcdPrefix, '/services/pg');
  assert.is(options.port, 6432);
  assert.is(options.masterOnly, true);
  assert.is(options.public, true);
  assert.is(run(['--port=7000'], env).port, 7000);
  assert.is(run(['--no-master-only'], env).masterOnly, false);
  assert.match(usageError([], { ...env, AMBASSADOR_PORT: 'x' }), 'AMBASSADOR_PORT="x" is not a port');
  assert.match(usageError([], { ...env, AMBASSADOR_PUBLIC: 'maybe' }), 'AMBASSADOR_PUBLIC="maybe" is not a boolean');
});

test('keeps etcd credentials consistent and warns about a password on the command line', () => {
  assert.match(usageError([...seed, '--etcd-cert=/c.pem']), '--etcd-cert and --etcd-key go together');
  assert.match(usageError([...seed, '--etcd-user=u']), '--etcd-user needs a password');
  assert.match(usageError([...seed, '--etcd-password=p']), 'needs --etcd-user');
  const parsed = parseCommandLine([...seed, '--etcd-user=u', '--etcd-password=p'], {});
  assert.is(parsed.kind === 'run' && parsed.warnings.length, 1);
  const quiet = parseCommandLine([...seed, '--etcd-user=u'], { AMBASSADOR_ETCD_PASSWORD: 'p' });
  assert.is(quiet.kind === 'run' && quiet.warnings.length, 0);
});

test('gives each listener its own runtime dir and config by default', () => {
  assert.is(run(seed, {}).runtimeDir, '/tmp/ambassador-5432');
  assert.is(run([...seed, '--bind=127.0.0.1'], { XDG_RUNTIME_DIR: '/run/user/7' }).runtimeDir, '/run/user/7/ambassador-127.0.0.1-5432');
  assert.is(run(seed, { RUNTIME_DIRECTORY: '/run/ambassador', XDG_RUNTIME_DIR: '/x' }).haproxyConfig, '/run/ambassador/ambassador-5432/haproxy.cfg');
  assert.is(run([...seed, '--haproxy-config=/etc/haproxy/haproxy.cfg']).haproxyConfig, '/etc/haproxy/haproxy.cfg');
});

test('ignores its own path as the first argument, as docker run passes it', () => {
  assert.is(run(['/bin/ambassador', ...seed]).port, 5432);
});

test('answers --help and --version before checking anything else', () => {
  assert.is(parseCommandLine(['--help'], {}).kind, 'help');
  assert.is(parseCommandLine(['-h'], {}).kind, 'help');
  assert.is(parseCommandLine(['--version'], {}).kind, 'version');
  for (const flag of ['--etcd-prefix', '--master-only', '--public', '--haproxy-config', '--dry-run', '--log-format']) {
    assert.ok(usage().includes(flag), flag);
  }
});

test('--layout=patroni with a replica port and a lag bound; the instances layout stays the default', () => {
  assert.is(run(seed).layout, 'instances');
  assert.is(run(seed).replicaPort, undefined);
  const patroni = run(['--etcd-prefix=/service/demo', '--layout=patroni', '--master-only', '--port=5000', '--replica-port=5001', '--max-replica-lag=16MB']);
  assert.is(patroni.layout, 'patroni');
  assert.is(patroni.replicaPort, 5001);
  assert.is(patroni.maxReplicaLag, 16 << 20);
  assert.is(run(['--etcd-prefix=/service/demo', '--layout=patroni', '--port=5000', '--replica-port=5001', '--max-replica-lag=1048576']).maxReplicaLag, 1 << 20);
  assert.is(run([...seed, '--replica-port=5433']).replicaPort, 5433);
});

test('a layout, replica port or lag that cannot work is a usage error', () => {
  assert.match(usageError([...seed, '--layout=consul']), '--layout="consul" is not one of instances, patroni');
  assert.match(usageError([...seed, '--replica-port=5432']), '--replica-port and --port are both 5432');
  assert.match(usageError([...seed, '--replica-port=5433', '--max-replica-lag=16MB']), '--max-replica-lag needs --layout=patroni');
  assert.match(usageError(['--etcd-prefix=/service/demo', '--layout=patroni', '--port=5000', '--max-replica-lag=16MB']), '--max-replica-lag needs --replica-port');
  assert.match(usageError(['--etcd-prefix=/service/demo', '--layout=patroni', '--port=5000', '--replica-port=5001', '--max-replica-lag=lots']), 'is not a size');
  assert.match(usageError(['--etcd-prefix=/service/demo', '--layout=patroni', '--port=5000', '--public']), '--public means nothing with --layout=patroni');
  assert.match(usageError(['--etcd-prefix=/service/demo', '--layout=patroni', '--port=5000', '--backend-port=5433']), '--backend-port means nothing with --layout=patroni');
  assert.match(usageError(['--etcd-prefix=/service/demo', '--layout=patroni', '--port=5000', '--replika-port=5001']), 'did you mean --replica-port?');
});

test.run();
