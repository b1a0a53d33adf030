// The hold, against a real etcd and haproxy: a new connection that comes while no master is routable waits in
// haproxy and goes to the master etcd names next, the moment it is open, never to the fenced one; past --hold
// it is closed and counted; the operator sees it in /metrics and /state.

import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import * as assert from 'uvu/assert';
import { within } from '../../harness/limits.ts';
import { eventually, freePort, whoAnswers } from '../../harness/net.ts';
import { worldSuite, type World } from '../../harness/world.ts';

const { test, run } = worldSuite('the hold');

async function get(port: number, path: string): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}${path}`)).text();
}

function metric(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line === undefined ? undefined : Number(line.split(' ').at(-1));
}

interface HoldState {
  now: number;
  total: number;
  released: number;
  timeouts: number;
  abandoned: number;
}

// The primary port's hold as /state says it, once it says `accept` of it.
async function holdOnceItSays(statusPort: number, accept: (hold: HoldState) => boolean, what: string): Promise<HoldState> {
  const hold = await eventually(async () => (JSON.parse(await get(statusPort, '/state')) as { hold: Record<string, HoldState> | null }).hold, (h) => h?.service !== undefined && accept(h.service), 15_000, what);
  return hold!.service!;
}

// New connections opened now, each resolving to who greeted it ('' for closed without a greeting) and how long it took.
function clients(port: number, count: number, limitMs = 30_000): Promise<{ answer: string; ms: number }[]> {
  return Promise.all(
    Array.from({ length: count }, async () => {
      const began = performance.now();
      const answer = await whoAnswers(port, '127.0.0.1', limitMs);
      return { answer, ms: performance.now() - began };
    }),
  );
}

async function startHolding(world: World, flags: string[] = []) {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const statusPort = await freePort();
  const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--status=127.0.0.1:${statusPort}`, ...flags]);
  await world.routesTo(ambassador.port, 'node-2');
  return { prefix, statusPort, ambassador };
}

test('connections that come while no master is named wait, and go to the master etcd names next, never to the old one', async ({ world }) => {
  const { prefix, statusPort, ambassador } = await startHolding(world);
  await world.etcd.del(`${prefix}/master`);
  await ambassador.waitForLog(/master 2 -> none/);
  const oldMaster = world.backends[1]!;
  const acceptedByOld = oldMaster.accepted();
  const held = clients(ambassador.port, 20);
  await holdOnceItSays(statusPort, (hold) => hold.now === 20, '20 connections held');
  await world.etcd.put(`${prefix}/master`, '3');
  const answers = await within(held, 15_000, 'the held connections answered');
  assert.equal(answers.map((a) => a.answer), Array(20).fill('node-3'));
  assert.is(oldMaster.accepted(), acceptedByOld, 'none reached the old master');
  const hold = await holdOnceItSays(statusPort, (h) => h.released === 20, 'the 20 released');
  assert.equal({ ...hold }, { ...hold, now: 0, total: 20, released: 20, timeouts: 0, abandoned: 0 });
  const metrics = await get(statusPort, '/metrics');
  assert.is(metric(metrics, 'ambassador_held_connections_total{port="primary"}'), 20);
  assert.is(metric(metrics, 'ambassador_held_connections{port="primary"}'), 0);
  assert.is(metric(metrics, 'ambassador_hold_seconds_count{port="primary"}'), 20);
  assert.is(metric(metrics, 'ambassador_hold_seconds_bucket{port="primary",le="+Inf"}'), 20);
  assert.is(metric(metrics, 'ambassador_hold_timeouts_total{port="primary"}'), 0);
  console.log(`      held 20, master named → answered: ${answers.map((a) => a.ms).sort((a, b) => a - b).at(-1)!.toFixed(0)} ms at most (from their connect)`);
});

test('a master that names an instance that cannot be routed holds too, until the instance comes', async ({ world }) => {
  const { prefix, statusPort, ambassador } = await startHolding(world);
  await world.etcd.put(`${prefix}/master`, '9');
  await ambassador.waitForLog(/names no routable instance/);
  await ambassador.waitForLog(/master 2 -> none/);
  const held = clients(ambassador.port, 5);
  await holdOnceItSays(statusPort, (hold) => hold.now === 5, '5 connections held');
  await world.etcd.put(`${prefix}/instances/9/private_ip`, '127.0.0.11');
  assert.equal((await within(held, 15_000, 'the held connections answered')).map((a) => a.answer), Array(5).fill('node-1'));
});

test('past --hold a held connection is closed as without the hold, counted, and the alert\'s series moves', async ({ world }) => {
  const { prefix, statusPort, ambassador } = await startHolding(world, ['--hold=1s']);
  await world.etcd.del(`${prefix}/master`);
  await ambassador.waitForLog(/master 2 -> none/);
  const closed = await clients(ambassador.port, 5);
  assert.equal(closed.map((c) => c.answer), Array(5).fill(''));
  assert.ok(closed.every((c) => c.ms >= 950), `held up to the bound first: ${closed.map((c) => c.ms.toFixed(0)).join(', ')} ms`);
  const hold = await holdOnceItSays(statusPort, (h) => h.timeouts === 5, 'the 5 counted as closed at the bound');
  assert.is(hold.released, 0);
  const metrics = await get(statusPort, '/metrics');
  assert.is(metric(metrics, 'ambassador_hold_timeouts_total{port="primary"}'), 5);
  assert.is(metric(metrics, 'ambassador_hold_seconds_bucket{port="primary",le="0.5"}'), 0);
  assert.is(metric(metrics, 'ambassador_hold_seconds_bucket{port="primary",le="2.5"}'), 5);
});

test('a client that leaves while held is counted as abandoned, not as released or closed at the bound', async ({ world }) => {
  const { prefix, statusPort, ambassador } = await startHolding(world, ['--hold=1s']);
  await world.etcd.del(`${prefix}/master`);
  await ambassador.waitForLog(/master 2 -> none/);
  assert.is(await whoAnswers(ambassador.port, '127.0.0.1', 200), '');
  const hold = await holdOnceItSays(statusPort, (h) => h.abandoned + h.timeouts === 1, 'the one that left counted');
  assert.is(hold.released, 0);
  assert.is(hold.now, 0);
});

test('--hold=0 closes a new connection at once while no master is routable, and loads no script', async ({ world }) => {
  const { prefix, statusPort, ambassador } = await startHolding(world, ['--hold=0']);
  await world.etcd.del(`${prefix}/master`);
  await ambassador.waitForLog(/master 2 -> none/);
  assert.is(await whoAnswers(ambassador.port, '127.0.0.1', 5_000), '');
  const config = readFileSync(ambassador.configPath, 'utf8');
  assert.not.match(config, 'lua');
  assert.not.match(config, 'inspect-delay');
  assert.is((JSON.parse(await get(statusPort, '/state')) as { hold: unknown }).hold, null);
});

test('an haproxy built without Lua is refused at start, naming --hold=0; with it, ambassador starts', async ({ world }) => {
  const prefix = world.prefix();
  await world.writeSeed(prefix);
  const lualess = resolve(import.meta.dirname, '../fixtures/lualess-haproxy');
  const refused = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--haproxy=${lualess}`]);
  assert.is(await within(refused.exited, 10_000, 'ambassador to exit'), 1);
  assert.match(refused.logs.join('\n'), /built without Lua, which holding new connections needs: .*--hold=0/);
  const started = await world.start([`--etcd-prefix=${prefix}`, '--master-only', `--haproxy=${lualess}`, '--hold=0']);
  await world.routesTo(started.port, 'node-2');
});

run();
