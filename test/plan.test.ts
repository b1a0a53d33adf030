import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MAX_RUNTIME_COMMANDS, planChange, serverTable, type LiveServer, type Plan, type ServerTable } from '../lib/plan.ts';
import { SERVER_CHECKS } from '../lib/render.ts';

const ready = (address: string, port = 5432): LiveServer => ({ address, port, state: 'ready' });
const maint = (address: string, port = 5432): LiveServer => ({ address, port, state: 'maint' });
const drain = (address: string, port = 5432): LiveServer => ({ address, port, state: 'drain' });
// Tables of the primary port's proxy, by server name: ids are service/<name>.
const table = (entries: Record<string, LiveServer>): ServerTable => new Map(Object.entries(entries).map(([name, server]) => [`service/${name}`, server]));
const masterOnly = { fence: true };
const allInstances = { fence: false };

function runtime(plan: Plan): { commands: string[]; next: Record<string, LiveServer> } {
  if (plan.kind !== 'runtime') throw new Error(`expected runtime commands, got ${JSON.stringify(plan)}`);
  return { commands: plan.commands, next: Object.fromEntries([...plan.next].map(([id, server]) => [id.replace(/^service\//, ''), server])) };
}

test('does nothing when nothing changed', () => {
  const live = table({ a: ready('10.0.0.1'), b: maint('10.0.0.2') });
  assert.equal(planChange(live, new Map(live), masterOnly), { kind: 'none' });
});

test('fails over by fencing the old master before enabling the new one', () => {
  const live = table({ '1': ready('10.0.0.1'), '2': maint('10.0.0.2') });
  const wanted = table({ '1': maint('10.0.0.1'), '2': ready('10.0.0.2') });
  assert.equal(runtime(planChange(live, wanted, masterOnly)), {
    commands: ['set server service/1 state maint', 'shutdown sessions server service/1', 'set server service/2 state ready'],
    next: { '1': maint('10.0.0.1'), '2': ready('10.0.0.2') },
  });
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
  const plan = runtime(planChange(new Map(), table({ a: ready('10.0.0.1'), b: maint('fd00::2', 6000) }), masterOnly));
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
  assert.equal(runtime(planChange(live, new Map(), masterOnly)), {
    commands: ['set server service/a state maint', 'shutdown sessions server service/a'],
    next: { a: drain('10.0.0.1'), b: drain('10.0.0.2') },
  });
});

test('leaves a draining server alone, and takes it back if it returns', () => {
  const live = table({ a: drain('10.0.0.1') });
  assert.equal(planChange(live, new Map(), allInstances), { kind: 'none' });
  assert.equal(runtime(planChange(live, table({ a: ready('10.0.0.1') }), allInstances)).commands, ['set server service/a state ready']);
});

test('reloads for a server added or moved by DNS name, which resolves only at load', () => {
  const byName = planChange(new Map(), table({ a: ready('db.example') }), allInstances);
  assert.equal(byName, { kind: 'reload', reason: 'server service/a has a DNS name (db.example)' });
  const moved = planChange(table({ a: ready('db.example') }), table({ a: ready('10.0.0.1') }), allInstances);
  assert.is(moved.kind, 'reload');
});

test('reloads rather than send more than MAX_RUNTIME_COMMANDS commands', () => {
  const wanted = new Map(Array.from({ length: MAX_RUNTIME_COMMANDS }, (_, i) => [`s${i}`, ready(`10.0.${i >> 8}.${i & 255}`)] as const));
  assert.is(planChange(new Map(), wanted, allInstances).kind, 'reload');
});

test('builds the wanted table from the selected servers', () => {
  const servers = [
    { name: '1', server: '1', address: '10.0.0.1', port: 5432, enabled: true },
    { name: 'a b', server: 'a_b:00', address: '10.0.0.2', port: 5433, enabled: false },
  ];
  assert.equal(Object.fromEntries(serverTable({ servers, replicas: undefined })), { 'service/1': ready('10.0.0.1'), 'service/a_b:00': maint('10.0.0.2', 5433) });
  const replicas = servers.map((server) => ({ ...server, enabled: !server.enabled }));
  assert.equal(Object.fromEntries(serverTable({ servers, replicas })), {
    'service/1': ready('10.0.0.1'),
    'service/a_b:00': maint('10.0.0.2', 5433),
    'replicas/1': maint('10.0.0.1'),
    'replicas/a_b:00': ready('10.0.0.2', 5433),
  });
});

test('a failover moves both ports in one step: the primary fenced first, the replica port never fenced', () => {
  const live = new Map([
    ['service/1', ready('10.0.0.1')],
    ['service/2', maint('10.0.0.2')],
    ['replicas/1', maint('10.0.0.1')],
    ['replicas/2', ready('10.0.0.2')],
  ]);
  const wanted = new Map([
    ['service/1', maint('10.0.0.1')],
    ['service/2', ready('10.0.0.2')],
    ['replicas/1', ready('10.0.0.1')],
    ['replicas/2', maint('10.0.0.2')],
  ]);
  const plan = planChange(live, wanted, masterOnly);
  if (plan.kind !== 'runtime') throw new Error(plan.kind);
  assert.equal(plan.commands, [
    'set server service/1 state maint',
    'shutdown sessions server service/1',
    'set server replicas/2 state maint',
    'set server service/2 state ready',
    'set server replicas/1 state ready',
  ]);
});

test.run();
