import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { afterFence, MAX_RUNTIME_COMMANDS, planChange, routingStep, serverTable, type Plan, type ServerTable } from '../../lib/render/plan.ts';
import type { Server } from '../../lib/service/service.ts';
import { SERVER_CHECKS } from '../../lib/render/render.ts';

// A server as haproxy has it: ready, in maintenance (a master-only standby), or draining (removed from etcd).
interface Entry {
  address: string;
  port: number;
  state: 'ready' | 'maint' | 'drain';
}
const ready = (address: string, port = 5432): Entry => ({ address, port, state: 'ready' });
const maint = (address: string, port = 5432): Entry => ({ address, port, state: 'maint' });
const drain = (address: string, port = 5432): Entry => ({ address, port, state: 'drain' });

// A table from entries by id (`<proxy>/<name>`, or a bare name for the primary port's proxy, service).
function table(entries: Record<string, Entry>): ServerTable {
  const proxies = new Map<string, Server[]>();
  const draining = new Map<string, { address: string; port: number }>();
  for (const [key, { address, port, state }] of Object.entries(entries)) {
    const id = key.includes('/') ? key : `service/${key}`;
    const [proxy, name] = id.split('/') as [string, string];
    if (state === 'drain') draining.set(id, { address, port });
    else proxies.set(proxy, [...(proxies.get(proxy) ?? []), { name, server: name, address, port, enabled: state === 'ready' }]);
  }
  for (const servers of proxies.values()) servers.sort((a, b) => (a.server < b.server ? -1 : 1));
  return { proxies, draining };
}
const empty = table({});

// Back to entries, primary port's servers by bare name.
function entries(table: ServerTable): Record<string, Entry> {
  const result: Record<string, Entry> = {};
  const name = (id: string) => id.replace(/^service\//, '');
  for (const [proxy, servers] of table.proxies) {
    for (const server of servers) result[name(`${proxy}/${server.server}`)] = { address: server.address, port: server.port, state: server.enabled ? 'ready' : 'maint' };
  }
  for (const [id, server] of table.draining) result[name(id)] = { ...server, state: 'drain' };
  return result;
}

const masterOnly = { fence: true };
const allInstances = { fence: false };

function runtime(plan: Plan): { commands: string[]; next: Record<string, Entry> } {
  if (plan.kind !== 'runtime') throw new Error(`expected runtime commands, got ${JSON.stringify(plan)}`);
  return { commands: [...plan.fence, ...plan.changes, ...plan.enables], next: entries(plan.next) };
}

function steps(plan: Plan): { fence: string[]; fenced: string[]; then: string[] } {
  if (plan.kind !== 'runtime') throw new Error(`expected runtime commands, got ${JSON.stringify(plan)}`);
  return { fence: plan.fence, fenced: plan.fenced.map(({ id, address, port }) => `${id} ${address}:${port}`), then: [...plan.changes, ...plan.enables] };
}

test('does nothing when nothing changed', () => {
  const live = table({ a: ready('10.0.0.1'), b: maint('10.0.0.2') });
  assert.equal(planChange(live, table({ a: ready('10.0.0.1'), b: maint('10.0.0.2') }), masterOnly), { kind: 'none' });
  assert.equal(planChange(live, live, masterOnly), { kind: 'none' });
});

test('fails over by fencing the old master before enabling the new one', () => {
  const live = table({ '1': ready('10.0.0.1'), '2': maint('10.0.0.2') });
  const wanted = table({ '1': maint('10.0.0.1'), '2': ready('10.0.0.2') });
  assert.equal(runtime(planChange(live, wanted, masterOnly)), {
    commands: ['set server service/1 state maint', 'shutdown sessions server service/1', 'set server service/2 state ready'],
    next: { '1': maint('10.0.0.1'), '2': ready('10.0.0.2') },
  });
});

test('a failover is two steps: the fence and the servers it must empty, then the new master', () => {
  const live = table({ '1': ready('10.0.0.1'), '2': maint('10.0.0.2') });
  const wanted = table({ '1': maint('10.0.0.1'), '2': ready('10.0.0.2') });
  assert.equal(steps(planChange(live, wanted, masterOnly)), {
    fence: ['set server service/1 state maint', 'shutdown sessions server service/1'],
    fenced: ['service/1 10.0.0.1:5432'],
    then: ['set server service/2 state ready'],
  });
});

test('nothing waits on a fence when no master is fenced', () => {
  const live = table({ a: ready('10.0.0.1'), b: ready('10.0.0.2') });
  assert.equal(steps(planChange(live, table({ a: ready('10.0.0.1') }), allInstances)), { fence: [], fenced: [], then: ['set server service/b state drain'] });
});

test('a master that moves is fenced at the address it leaves, and enabled only once its new one is confirmed', () => {
  const live = table({ '1': ready('10.0.0.1') });
  const plan = planChange(live, table({ '1': ready('10.0.0.9', 6000) }), masterOnly);
  assert.equal(steps(plan).fenced, ['service/1 10.0.0.1:5432']);
  if (plan.kind !== 'runtime') throw new Error(plan.kind);
  assert.equal([plan.changes, plan.moved, plan.enables], [
    ['set server service/1 addr 10.0.0.9 port 6000'],
    [{ id: 'service/1', address: '10.0.0.9', port: 6000 }],
    ['set server service/1 state ready'],
  ]);
});

test('fences the master when no master is wanted', () => {
  const live = table({ '1': ready('10.0.0.1') });
  assert.equal(runtime(planChange(live, table({ '1': maint('10.0.0.1') }), masterOnly)).commands, [
    'set server service/1 state maint',
    'shutdown sessions server service/1',
  ]);
});

test('fences a master that moves, then enables it at its new address', () => {
  const live = table({ '1': ready('10.0.0.1') });
  assert.equal(runtime(planChange(live, table({ '1': ready('10.0.0.9', 6000) }), masterOnly)).commands, [
    'set server service/1 state maint',
    'shutdown sessions server service/1',
    'set server service/1 addr 10.0.0.9 port 6000',
    'set server service/1 state ready',
  ]);
});

test('moves a server without cutting its sessions when not master-only', () => {
  const live = table({ a: ready('10.0.0.1') });
  assert.equal(runtime(planChange(live, table({ a: ready('fd00::1', 6000) }), allInstances)), {
    commands: ['set server service/a addr fd00::1 port 6000'],
    next: { a: ready('fd00::1', 6000) },
  });
});

test('adds a server with its checks spelled out, enabled only if wanted so', () => {
  const plan = runtime(planChange(empty, table({ a: ready('10.0.0.1'), b: maint('fd00::2', 6000) }), masterOnly));
  assert.equal(plan.commands, [
    `add server service/a 10.0.0.1:5432 ${SERVER_CHECKS}`,
    'enable health service/a',
    `add server service/b [fd00::2]:6000 ${SERVER_CHECKS}`,
    'enable health service/b',
    'set server service/a state ready',
  ]);
  assert.equal(plan.next, { a: ready('10.0.0.1'), b: maint('fd00::2', 6000) });
});

test('drains a removed server when not master-only, keeping it until the sweep deletes it', () => {
  const live = table({ a: ready('10.0.0.1'), b: ready('10.0.0.2') });
  assert.equal(runtime(planChange(live, table({ a: ready('10.0.0.1') }), allInstances)), {
    commands: ['set server service/b state drain'],
    next: { a: ready('10.0.0.1'), b: drain('10.0.0.2') },
  });
});

test('fences a removed master, and marks a removed standby for deletion without a command', () => {
  const live = table({ a: ready('10.0.0.1'), b: maint('10.0.0.2') });
  assert.equal(runtime(planChange(live, empty, masterOnly)), {
    commands: ['set server service/a state maint', 'shutdown sessions server service/a'],
    next: { a: drain('10.0.0.1'), b: drain('10.0.0.2') },
  });
});

test('leaves a draining server alone, and takes it back if it returns', () => {
  const live = table({ a: drain('10.0.0.1') });
  assert.equal(planChange(live, empty, allInstances), { kind: 'none' });
  assert.equal(runtime(planChange(live, table({ a: ready('10.0.0.1') }), allInstances)).commands, ['set server service/a state ready']);
});

test('reloads for a server added or moved by DNS name, which resolves only at load', () => {
  const byName = planChange(empty, table({ a: ready('db.example') }), allInstances);
  assert.equal(byName, { kind: 'reload', reason: 'server service/a has a DNS name (db.example)', fence: [], fenced: [] });
  const moved = planChange(table({ a: ready('db.example') }), table({ a: ready('10.0.0.1') }), allInstances);
  assert.is(moved.kind, 'reload');
});

test('a failover that needs a reload still fences the old master at run time first', () => {
  const live = table({ '1': ready('10.0.0.1'), '2': maint('10.0.0.2') });
  const plan = planChange(live, table({ '1': maint('10.0.0.1'), '2': maint('10.0.0.2'), named: ready('db.example') }), masterOnly);
  if (plan.kind !== 'reload') throw new Error(plan.kind);
  assert.equal(plan.fence, ['set server service/1 state maint', 'shutdown sessions server service/1']);
  assert.equal(entries(afterFence(live, plan.fenced)), { '1': maint('10.0.0.1'), '2': maint('10.0.0.2') });
});

test('reloads rather than send more than MAX_RUNTIME_COMMANDS commands', () => {
  const wanted = table(Object.fromEntries(Array.from({ length: MAX_RUNTIME_COMMANDS }, (_, i) => [`s${i}`, ready(`10.0.${i >> 8}.${i & 255}`)])));
  assert.is(planChange(empty, wanted, allInstances).kind, 'reload');
});

test('builds the wanted table from the selected servers', () => {
  const servers = [
    { name: '1', server: '1', address: '10.0.0.1', port: 5432, enabled: true },
    { name: 'a b', server: 'a_b:00', address: '10.0.0.2', port: 5433, enabled: false },
  ];
  assert.equal(entries(serverTable({ servers, replicas: undefined })), { '1': ready('10.0.0.1'), 'a_b:00': maint('10.0.0.2', 5433) });
  const replicas = servers.map((server) => ({ ...server, enabled: !server.enabled }));
  assert.equal(entries(serverTable({ servers, replicas })), {
    '1': ready('10.0.0.1'),
    'a_b:00': maint('10.0.0.2', 5433),
    'replicas/1': maint('10.0.0.1'),
    'replicas/a_b:00': ready('10.0.0.2', 5433),
  });
});

test('a failover moves both ports in one step: the primary fenced first, the replica port never fenced', () => {
  const live = table({ '1': ready('10.0.0.1'), '2': maint('10.0.0.2'), 'replicas/1': maint('10.0.0.1'), 'replicas/2': ready('10.0.0.2') });
  const wanted = table({ '1': maint('10.0.0.1'), '2': ready('10.0.0.2'), 'replicas/1': ready('10.0.0.1'), 'replicas/2': maint('10.0.0.2') });
  assert.equal(steps(planChange(live, wanted, masterOnly)), {
    fence: ['set server service/1 state maint', 'shutdown sessions server service/1'],
    fenced: ['service/1 10.0.0.1:5432'],
    then: ['set server replicas/2 state maint', 'set server service/2 state ready', 'set server replicas/1 state ready'],
  });
});

test('passes over the servers a change did not touch, and says only what it changed', () => {
  const servers: Server[] = Array.from({ length: 10_000 }, (_, i) => ({ name: `i${i}`, server: `i${String(i).padStart(5, '0')}`, address: '10.0.0.1', port: 5432, enabled: i === 0 }));
  const live = serverTable({ servers, replicas: undefined });
  const failedOver = servers.map((server, i) => (i < 2 ? { ...server, enabled: i === 1 } : server));
  failedOver.splice(5000, 1);
  assert.equal(runtime(planChange(live, serverTable({ servers: failedOver, replicas: undefined }), masterOnly)).commands, [
    'set server service/i00000 state maint',
    'shutdown sessions server service/i00000',
    'set server service/i00001 state ready',
  ]);
});

test('the routing part of a change that needs a reload: only the master moves, at run time, whatever else changes', () => {
  const live = table({ a: ready('10.0.0.1'), b: maint('10.0.0.2'), 'replicas/a': maint('10.0.0.1'), 'replicas/b': ready('10.0.0.2') });
  const many: Record<string, Entry> = { a: maint('10.0.0.1'), b: maint('10.0.0.2'), c: ready('10.0.0.3') };
  for (let i = 0; i < MAX_RUNTIME_COMMANDS; i++) many[`n${i}`] = maint(`10.1.${i >> 8}.${i & 255}`);
  const wanted = table(many);
  assert.is(planChange(live, wanted, { fence: true }).kind, 'reload', 'the whole change needs a reload');
  const step = routingStep(live, wanted);
  assert.equal(entries(step), { a: maint('10.0.0.1'), b: maint('10.0.0.2'), c: ready('10.0.0.3'), 'replicas/a': maint('10.0.0.1'), 'replicas/b': ready('10.0.0.2') });
  const plan = planChange(live, step, { fence: true });
  assert.is(plan.kind, 'runtime');
  if (plan.kind !== 'runtime') return;
  assert.equal(plan.fence, ['set server service/a state maint', 'shutdown sessions server service/a']);
  assert.equal(plan.enables, ['set server service/c state ready']);
  // A master already live at another address is moved; one live and enabled is left as it is.
  const moved = routingStep(live, table({ a: maint('10.0.0.1'), b: ready('10.0.0.9') }));
  assert.equal(entries(moved).b, ready('10.0.0.9'));
  assert.is(planChange(live, routingStep(live, table({ a: ready('10.0.0.1') })), { fence: true }).kind, 'none');
});

test.run();

test('a replica that leaves Patroni\'s replica port has its sessions shut down when asked; a check that moves is a reload', () => {
  const live = table({ a: ready('10.0.0.1'), 'replicas/b': ready('10.0.0.2'), 'replicas/c': ready('10.0.0.3') });
  const wanted = table({ a: ready('10.0.0.1'), 'replicas/b': maint('10.0.0.2'), 'replicas/c': ready('10.0.0.3') });
  const cut = planChange(live, wanted, { fence: true, cutReplicas: true });
  assert.equal(cut.kind === 'runtime' && cut.changes, ['set server replicas/b state maint', 'shutdown sessions server replicas/b']);
  const kept = planChange(live, wanted, { fence: true });
  assert.equal(kept.kind === 'runtime' && kept.changes, ['set server replicas/b state maint']);
  const checked = (address: string) => {
    const next = table({ a: ready('10.0.0.1'), 'replicas/b': ready('10.0.0.2') });
    return { ...next, proxies: new Map([...next.proxies].map(([proxy, servers]) => [proxy, proxy === 'replicas' ? servers.map((server) => ({ ...server, restCheck: { address, port: 8008, path: '/replica?lag=1' } })) : servers])) };
  };
  const moved = planChange(checked('10.0.0.2'), checked('10.0.0.9'), { fence: true });
  assert.is(moved.kind, 'reload');
  assert.is(planChange(checked('10.0.0.2'), checked('10.0.0.2'), { fence: true }).kind, 'none');
});
