import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { renderConfig, type RenderSettings } from '../../lib/render/render.ts';

const settings: RenderSettings = { prefix: '/services/mysql', bind: '0.0.0.0', port: 5432, replicaPort: undefined, masterOnly: false, hardStopAfter: '5m', adminSocket: '/run/a/admin.sock', holdMs: 0, holdScript: '/run/a/hold.lua', replicaSessions: 'cut' };
const servers = [
  { name: '1', server: '1', address: '10.0.19.22', port: 5432, enabled: true },
  { name: 'db 2', server: 'db_2:0123456789abcdef', address: 'fd00::2', port: 5433, enabled: true },
];

test('writes one server line per server, IPv6 in brackets', () => {
  const config = renderConfig(settings, { servers, replicas: undefined });
  const lines = config.split('\n').filter((line) => line.trim().startsWith('server '));
  assert.equal(lines, ['    server 1 10.0.19.22:5432', '    server db_2:0123456789abcdef [fd00::2]:5433']);
});

test('writes servers that are not enabled as disabled', () => {
  const config = renderConfig(settings, { servers: [servers[0]!, { ...servers[1]!, enabled: false }], replicas: undefined });
  assert.match(config, '\n    server 1 10.0.19.22:5432\n    server db_2:0123456789abcdef [fd00::2]:5433 disabled\n');
});

test('listens on the bind address and port, IPv6 in brackets', () => {
  assert.ok(renderConfig(settings, { servers: [], replicas: undefined }).includes('\n    bind 0.0.0.0:5432\n'));
  assert.ok(renderConfig({ ...settings, bind: '::1' }, { servers: [], replicas: undefined }).includes('\n    bind [::1]:5432\n'));
});

test('has an admin socket, bounded old workers and health checks', () => {
  const config = renderConfig(settings, { servers, replicas: undefined });
  assert.ok(config.includes('stats socket /run/a/admin.sock mode 600 level admin'));
  assert.ok(config.includes('hard-stop-after 5m'));
  assert.match(config, /default-server check inter \S+ fall \d rise \d on-marked-down shutdown-sessions/);
});

test('is deterministic: the same input gives the same bytes', () => {
  assert.is(renderConfig(settings, { servers, replicas: undefined }), renderConfig({ ...settings }, { servers: servers.map((s) => ({ ...s })), replicas: undefined }));
  assert.is.not(renderConfig(settings, { servers, replicas: undefined }), renderConfig(settings, { servers: servers.slice(0, 1), replicas: undefined }));
});

test('a replica port is a second listen section on the same bind address, its servers enabled or disabled', () => {
  const config = renderConfig({ ...settings, replicaPort: 5433 }, { servers, replicas: [{ ...servers[0]!, enabled: false }, servers[1]!] });
  assert.match(config, '\nlisten service\n    bind 0.0.0.0:5432\n');
  assert.match(config, '\nlisten replicas\n    bind 0.0.0.0:5433\n    balance leastconn\n');
  assert.match(config, /\nlisten replicas\n[\s\S]*\n    server 1 10\.0\.19\.22:5432 disabled\n    server db_2:0123456789abcdef \[fd00::2\]:5433\n$/);
  assert.not.match(renderConfig(settings, { servers, replicas: undefined }), 'listen replicas');
});

test('with --master-only the primary port does not retry a refused connection: there is no other server to try', () => {
  const single = renderConfig({ ...settings, masterOnly: true, replicaPort: 5433 }, { servers, replicas: servers });
  assert.match(single, /\nlisten service\n    bind 0\.0\.0\.0:5432\n    retries 0\n/);
  assert.not.match(single.slice(single.indexOf('listen replicas')), 'retries 0');
  assert.not.match(renderConfig(settings, { servers, replicas: undefined }), 'retries 0');
});

test.run();

test('with a hold, loads its script and has each port wait in its frontend for a usable server of its own, up to the bound', () => {
  const config = renderConfig({ ...settings, replicaPort: 5433, holdMs: 5000 }, { servers, replicas: servers });
  assert.match(config, '\n    .if version_atleast(3.1)\n        tune.lua.bool-sample-conversion normal\n    .endif\n    lua-load /run/a/hold.lua\n');
  assert.match(config, '\nlisten service\n    bind 0.0.0.0:5432\n    tcp-request inspect-delay 6000ms\n    tcp-request content lua.ambassador_hold service 5000\n');
  assert.match(config, '\nlisten replicas\n    bind 0.0.0.0:5433\n    tcp-request inspect-delay 6000ms\n    tcp-request content lua.ambassador_hold replicas 5000\n');
  const none = renderConfig(settings, { servers, replicas: undefined });
  assert.not.match(none, 'lua');
  assert.not.match(none, 'inspect-delay');
});

test('a replica port whose replay lag Patroni\'s REST API says: each replica checked there, the primary not at all; sessions kept if asked', () => {
  const rest = (address: string) => ({ address, port: 8008, path: '/replica?lag=16777216' });
  const replicas = [
    { name: 'pg1', server: 'pg1', address: '10.0.0.1', port: 5432, enabled: false, restCheck: 'off' as const },
    { name: 'pg2', server: 'pg2', address: '10.0.0.2', port: 5432, enabled: true, restCheck: rest('10.0.0.2') },
  ];
  const config = renderConfig({ ...settings, replicaPort: 5433 }, { servers, replicas });
  assert.match(config, '\nlisten replicas\n    bind 0.0.0.0:5433\n    balance leastconn\n    option httpchk GET /replica?lag=16777216\n    http-check expect status 200\n    default-server check inter 2s fall 3 rise 3 on-marked-down shutdown-sessions init-addr libc,none\n');
  assert.match(config, '\n    server pg1 10.0.0.1:5432 no-check disabled\n    server pg2 10.0.0.2:5432 check addr 10.0.0.2 port 8008\n');
  assert.not.match(config.slice(0, config.indexOf('listen replicas')), 'httpchk', 'the primary port checks its servers itself');
  const kept = renderConfig({ ...settings, replicaPort: 5433, replicaSessions: 'keep' }, { servers, replicas });
  assert.match(kept, '\n    default-server check inter 2s fall 3 rise 3 init-addr libc,none\n');
});
