import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MAX_KEY_BYTES, serverName, uniqueServers, type Problem } from '../../lib/service/service.ts';
import { describeChange, describeProblem, problemChanges } from '../../lib/service/problems.ts';
import { createServiceSelector, MAX_VALUE_BYTES, readService, routingKeys, selectServers } from '../../lib/service/instances.ts';
import { textOf } from '../../lib/common/text.ts';

const P = '/services/mysql';
const settings = { prefix: P, public: false, backendPort: 5432, masterOnly: false, replicas: false };
const masterOnly = { ...settings, masterOnly: true };

function mirror(entries: Record<string, string>): Map<string, string> {
  return new Map(Object.entries(entries).map(([key, value]) => [`${P}/${key}`, value]));
}

const seed = mirror({
  master: '2',
  'instances/1/private_ip': '10.0.19.22',
  'instances/2/private_ip': '10.0.21.81',
});

test('reads the seed layout', () => {
  const service = readService(seed, settings);
  assert.equal(service.instances, [
    { name: '1', server: '1', address: '10.0.19.22', port: 5432 },
    { name: '2', server: '2', address: '10.0.21.81', port: 5432 },
  ]);
  assert.is(service.master, '2');
  assert.equal(service.problems, []);
});

// What the watch holds for these bytes (lib/etcd/connection.ts).
const held = (bytes: Buffer | string) => textOf(Buffer.from(bytes), MAX_VALUE_BYTES);
const heldKey = (key: string) => textOf(Buffer.from(key), Buffer.byteLength(P) + 1 + MAX_KEY_BYTES, Buffer.byteLength(P) + 49);

test('values and keys past their bounds, names past theirs and bytes that are not UTF-8 are problems, and route nothing', () => {
  const entries = mirror({
    master: '2',
    'instances/1/private_ip': held('1'.repeat(1 << 20)),
    'instances/2/private_ip': '10.0.0.2',
    'instances/2/port': held(Buffer.from([0x35, 0xff])),
    [`instances/${'n'.repeat(256)}/private_ip`]: '10.0.0.3',
    'instances/4/private_ip': held(Buffer.from([0x31, 0x30, 0x2e, 0xc0])),
    'instances/5/private_ip': '10.0.0.5',
  });
  entries.set(heldKey(`${P}/instances/${'k'.repeat(600)}/private_ip`), '10.0.0.6');
  entries.set(`${P}/instances/${held(Buffer.from([0x6e, 0xff]))}/private_ip`, '10.0.0.7');
  const service = readService(entries, settings);
  assert.equal(service.instances.map((instance) => instance.name), ['5']);
  const reasons = service.problems.map((problem) => problem.reason).sort();
  assert.equal(reasons, [
    `a key of ${600 + 'instances//private_ip'.length} bytes below the prefix: longer than the 512 allowed`,
    'a value of 1048576 bytes: longer than the 512 allowed',
    'an instance name of 256 bytes: longer than the 255 allowed',
    'not UTF-8',
    'not UTF-8',
    'the instance name is not UTF-8',
  ]);
  assert.ok(service.problems.every((problem) => describeProblem(problem).length < 800), 'each said in a short line');
});

test('a master that cannot name an instance (too long, not UTF-8) is a problem, and no key is read by its name', () => {
  for (const master of [held('m'.repeat(1_400_000)), 'm'.repeat(300), held(Buffer.from([0x6e, 0xff]))]) {
    const entries = mirror({ master, 'instances/2/private_ip': '10.0.0.2' });
    const selection = selectServers(readService(entries, masterOnly), masterOnly);
    assert.equal(selection.servers.filter((server) => server.enabled), []);
    assert.equal(routingKeys(entries, { prefix: P, public: false, masterOnly: true }), [`${P}/master`]);
  }
});

test('enables every instance, or only the master with masterOnly', () => {
  const service = readService(seed, settings);
  const enabled = (s: { enabled: boolean; name: string }) => `${s.name}:${s.enabled}`;
  assert.equal(selectServers(service, settings).servers.map(enabled), ['1:true', '2:true']);
  assert.equal(selectServers(service, masterOnly).servers.map(enabled), ['1:false', '2:true']);
});

test('uses public_ip with public, and an instance port over the backend port', () => {
  const entries = mirror({ 'instances/a/private_ip': '10.0.0.1', 'instances/a/public_ip': '203.0.113.7', 'instances/a/port': '3306' });
  const [instance] = readService(entries, { ...settings, public: true }).instances;
  assert.equal(instance, { name: 'a', server: 'a', address: '203.0.113.7', port: 3306 });
});

test('ignores a partly written instance without calling it a problem', () => {
  const service = readService(mirror({ 'instances/1/port': '5433', 'instances/2/private_ip': '10.0.0.2' }), settings);
  assert.equal(service.instances.map((i) => i.name), ['2']);
  assert.equal(service.problems, []);
});

test('ignores keys outside the layout and outside the prefix', () => {
  const entries = mirror({ 'instances/1/private_ip': '10.0.0.1', 'instances/1/weight': '3', 'instances/a/b/private_ip': '10.0.0.9', other: 'x' });
  entries.set('/services/mysql2/instances/9/private_ip', '10.0.0.9');
  const service = readService(entries, settings);
  assert.equal(service.instances.map((i) => i.address), ['10.0.0.1']);
  assert.equal(service.problems, []);
});

test('trims surrounding whitespace from values', () => {
  const service = readService(mirror({ master: ' 1\n', 'instances/1/private_ip': ' 10.0.0.1\n', 'instances/1/port': '\t5433 ' }), settings);
  assert.equal(service.instances[0], { name: '1', server: '1', address: '10.0.0.1', port: 5433 });
  assert.is(service.master, '1');
});

test('accepts IPv4, IPv6 with or without brackets, and DNS names', () => {
  const service = readService(
    mirror({ 'instances/a/private_ip': '::1', 'instances/b/private_ip': '[fd00::2]', 'instances/c/private_ip': 'db-3.internal.example', 'instances/d/private_ip': '10.1.2.3' }),
    settings,
  );
  assert.equal(service.instances.map((i) => i.address), ['::1', 'fd00::2', 'db-3.internal.example', '10.1.2.3']);
  assert.equal(service.problems, []);
});

const badAddresses: [string, string][] = [
  ['127.0.0.2\n    server evil 127.0.0.9\n#', 'newline and a second server line'],
  ['127.0.0.2 check', 'a second token'],
  ['127.0.0.2#', 'a #'],
  ['10.0.0.1:5432', 'a port in the address'],
  ['256.1.1.1', 'an octet out of range'],
  ['010.0.0.1', 'a leading zero'],
  ['1.2.3', 'a short IPv4'],
  ['fe80::1%eth0', 'an IPv6 zone'],
  ['[::1', 'an unclosed bracket'],
  ['db\u2024example', 'a unicode look-alike of a dot'],
  ['ex"ample', 'a quote'],
  ['a\\b', 'a backslash'],
  ['host\u0000', 'a NUL'],
  ['', 'nothing'],
  ['x'.repeat(1 << 20), 'a megabyte'],
  ['-leading.example', 'a label starting with -'],
];

for (const [value, what] of badAddresses) {
  test(`refuses an address with ${what}, routing nobody to it`, () => {
    const service = readService(mirror({ 'instances/1/private_ip': value, 'instances/2/private_ip': '10.0.0.2' }), settings);
    assert.equal(service.instances.map((i) => i.name), ['2']);
    assert.is(service.problems.length, 1);
    assert.is(service.problems[0]!.key, `${P}/instances/1/private_ip`);
    assert.is(service.problems[0]!.value, value);
    assert.is(service.problems[0]!.instance, '1', 'the instance it keeps out, for the rejected count');
  });
}

for (const port of ['0', '65536', '80 check', '5432\n    server evil 127.0.0.9:1', '-1', '1.5', '0x50', '']) {
  test(`refuses the port ${JSON.stringify(port)}`, () => {
    const service = readService(mirror({ 'instances/1/private_ip': '10.0.0.1', 'instances/1/port': port }), settings);
    assert.equal(service.instances, []);
    assert.equal(service.problems, [{ key: `${P}/instances/1/port`, value: port, reason: 'not a port (1-65535)', instance: '1' }]);
  });
}

test('reports both problems of an instance with a bad address and a bad port', () => {
  const service = readService(mirror({ 'instances/1/private_ip': 'bad value', 'instances/1/port': 'x' }), settings);
  assert.equal(service.problems.map((p) => p.key), [`${P}/instances/1/port`, `${P}/instances/1/private_ip`]);
});

test('routes nobody when the master is missing, unknown, unroutable or a key path', () => {
  const instances = { 'instances/1/private_ip': '10.0.0.1', 'instances/2/private_ip': 'not valid' };
  for (const master of [undefined, '3', '2', 'instances/1', '']) {
    const entries = mirror(master === undefined ? instances : { ...instances, master });
    const selection = selectServers(readService(entries, masterOnly), masterOnly);
    assert.equal(selection.servers.filter((s) => s.enabled), [], `master ${master}`);
    assert.ok(selection.problems.some((p) => p.key === `${P}/master`), `master ${master} is reported`);
  }
});

test('maps instance names to safe, stable and distinct server names', () => {
  assert.is(serverName('db-1.example'), 'db-1.example');
  const odd = ['a b', 'a_b', 'a/b', 'ä', 'x'.repeat(1000), 'x'.repeat(1001), 'a\nserver evil', 'a:b'];
  const names = odd.map(serverName);
  for (const name of names) assert.match(name, /^[A-Za-z0-9_.:-]{1,64}$/);
  assert.is(new Set(names).size, odd.length);
  assert.equal(odd.map(serverName), names);
  assert.is.not(serverName('a b'), 'a_b');
});

test('sorts instances by server name, so the same registry gives the same order', () => {
  const forward = readService(mirror({ 'instances/b/private_ip': '10.0.0.2', 'instances/a/private_ip': '10.0.0.1' }), settings);
  assert.equal(forward.instances.map((i) => i.name), ['a', 'b']);
});

test('describes a change in a few words', () => {
  const before = selectServers(readService(seed, settings), masterOnly);
  const failedOver = selectServers(readService(new Map([...seed, [`${P}/master`, '1']]), settings), masterOnly);
  assert.is(describeChange(undefined, before, true), '2 server(s), master 2');
  assert.is(describeChange(before, failedOver, true), 'master 2 -> 1');
  const moved = new Map([...seed, [`${P}/instances/1/private_ip`, '10.0.0.9'], [`${P}/instances/3/private_ip`, '10.0.0.3']]);
  moved.delete(`${P}/instances/2/private_ip`);
  assert.is(describeChange(before, selectServers(readService(moved, settings), settings), false), 'added 3, removed 2, moved 1');
  assert.is(describeChange(before, before, false), 'servers unchanged');
});

test('describes a problem on one line, the value quoted, escaped and cut short', () => {
  assert.is(describeProblem({ key: '/p/master', reason: 'no master is set' }), 'rejected /p/master: no master is set');
  assert.is(describeProblem({ key: '/p/instances/1/port', value: '80\nx', reason: 'bad' }), 'rejected /p/instances/1/port="80\\nx": bad');
  const long = describeProblem({ key: 'k', value: 'x'.repeat(1000), reason: 'r' });
  assert.match(long, /^rejected k="x{80}… \(1000 bytes\)": r$/);
});

test('problem changes: each problem is new once, and resolved once when it is gone', () => {
  const bad = { key: `${P}/instances/7/private_ip`, value: '10.0.0.1 x', reason: 'not an address', instance: '7' };
  const missing = { key: `${P}/master`, reason: 'no master is set' };
  const first = problemChanges(new Map(), [bad]);
  assert.equal(first.appeared, [describeProblem(bad)]);
  assert.equal(first.resolved, []);
  const again = problemChanges(first.current, [bad, missing]);
  assert.equal(again.appeared, [describeProblem(missing)]);
  const gone = problemChanges(again.current, [missing]);
  assert.equal(gone.appeared, []);
  assert.equal(gone.resolved, [`resolved: ${bad.key} (not an address)`]);
});

test('keeps two instances off one server name: the later name is a problem', () => {
  const problems: Problem[] = [];
  const a = { name: 'a', server: 'x', address: '10.0.0.1', port: 1 };
  const b = { name: 'b', server: 'x', address: '10.0.0.2', port: 1 };
  assert.equal(uniqueServers([b, a], (name) => `${P}/instances/${name}`, problems), [a]);
  assert.equal(problems, [{ key: `${P}/instances/b`, reason: 'server name x is taken by another instance', instance: 'b' }]);
});

// A small seeded generator, so a failure names a sequence that can be run again.
function random(seed: number) {
  return (below: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return Math.floor((seed / 2 ** 31) * below);
  };
}

const selectorSettings = [
  { ...settings },
  { ...masterOnly, replicas: true },
  { ...masterOnly, public: true },
];

for (const [n, options] of selectorSettings.entries()) {
  test(`the selector, fed only the changed keys, gives what a full read gives (settings ${n})`, () => {
    const next = random(n + 1);
    const names = ['1', '2', 'a b', 'db-3', 'x'];
    const fields = ['private_ip', 'public_ip', 'port'];
    const values: Record<string, string[]> = {
      private_ip: ['10.0.0.1', '10.0.0.2', 'fd00::1', 'db.example', 'not valid', ' 10.0.0.3 '],
      public_ip: ['203.0.113.1', '203.0.113.2', 'bad value'],
      port: ['5432', '6000', '0', 'x'],
    };
    const entries = new Map<string, string>();
    const selector = createServiceSelector(options);
    selector.select(entries, undefined);
    for (let step = 0; step < 2000; step++) {
      const changed = new Set<string>();
      // A burst: one to three writes before the selector looks.
      for (let write = 1 + next(3); write > 0; write--) {
        const key = next(8) === 0 ? `${P}/master` : `${P}/instances/${names[next(names.length)]}/${fields[next(fields.length)]}`;
        const field = key.slice(key.lastIndexOf('/') + 1);
        if (next(4) === 0) entries.delete(key);
        else entries.set(key, field === 'master' ? names[next(names.length)]! : values[field]![next(values[field]!.length)]!);
        changed.add(key);
      }
      if (next(50) === 0) changed.add(`${P}/other`);
      const incremental = selector.select(entries, next(100) === 0 ? undefined : changed);
      const full = selectServers(readService(entries, options), options);
      assert.equal(incremental, full, `step ${step}: ${JSON.stringify([...entries])}`);
    }
  });
}

test('the selector keeps the objects of servers a change did not touch', () => {
  const entries = new Map<string, string>([[`${P}/master`, 'i0']]);
  for (let i = 0; i < 1000; i++) entries.set(`${P}/instances/i${i}/private_ip`, `10.0.${i >> 8}.${i & 255}`);
  const selector = createServiceSelector({ ...masterOnly, replicas: true });
  const before = selector.select(entries, undefined);
  entries.set(`${P}/instances/i500/private_ip`, '10.9.9.9');
  entries.set(`${P}/master`, 'i1');
  const after = selector.select(entries, new Set([`${P}/instances/i500/private_ip`, `${P}/master`]));
  const changed = (list: typeof before.servers, other: typeof before.servers) => list.filter((server, i) => server !== other[i]).map((server) => server.name);
  assert.equal(changed(after.servers, before.servers), ['i0', 'i1', 'i500']);
  assert.equal(changed(after.replicas!, before.replicas!), ['i0', 'i1', 'i500']);
  assert.equal(after.servers.find((server) => server.name === 'i500')!.address, '10.9.9.9');
  // A fresh snapshot with the same values changes no object either.
  const again = selector.select(new Map(entries), undefined);
  assert.equal(changed(again.servers, after.servers), []);
});

test.run();
