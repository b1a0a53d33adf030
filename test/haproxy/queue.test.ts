// The apply queue's decisions, with a fake haproxy at its boundary: outcomes, retries, refusals, resyncs.

import * as assert from 'uvu/assert';
import { createApplyQueue, type Attempt, type Wanted } from '../../lib/haproxy/queue.ts';
import { createLogger } from '../../lib/common/log.ts';
import { limitedSuite, within } from '../../harness/limits.ts';

const test = limitedSuite('apply queue');

const wanted = (config: string): Wanted => ({ config, servers: { proxies: new Map(), draining: new Map() }, configOf: () => config });

// A fake haproxy: each attempt waits for the test to answer it.
function fakeHaproxy() {
  const calls: { config: string; answer(attempt: Attempt): void }[] = [];
  const listeners: (() => void)[] = [];
  const logs: string[] = [];
  const queue = createApplyQueue({
    attempt: (next) =>
      new Promise<Attempt>((answer) => {
        calls.push({ config: next.config, answer });
        for (const listener of listeners.splice(0)) listener();
      }),
    sweep: async () => false,
    log: createLogger({ format: 'text', level: 'debug', write: (line) => logs.push(line) }),
    retryFirstMs: 10,
    retryMaxMs: 40,
  });
  // The nth attempt (0-based), once it has been made.
  const attempt = (n: number) =>
    within(
      new Promise<(typeof calls)[number]>((resolve) => {
        const check = () => (calls[n] ? resolve(calls[n]!) : listeners.push(check));
        check();
      }),
      2000,
      `attempt ${n}`,
    );
  return { queue, calls, attempt, logs };
}

test('applies a change and says how', async () => {
  const { queue, attempt } = fakeHaproxy();
  const result = queue.apply(wanted('a'));
  (await attempt(0)).answer({ kind: 'applied', path: 'start' });
  assert.equal({ ...(await within(result, 1000, 'result')), ms: 0 }, { outcome: 'applied', path: 'start', ms: 0 });
  assert.ok(queue.stats().current);
  assert.is(queue.stats().applied.start, 1);
});

test('a change that comes while one is in flight supersedes the ones waiting, and is applied next', async () => {
  const { queue, attempt, calls } = fakeHaproxy();
  const first = queue.apply(wanted('a'));
  const inFlight = await attempt(0);
  const second = queue.apply(wanted('b'));
  const third = queue.apply(wanted('c'));
  inFlight.answer({ kind: 'applied', path: 'start' });
  assert.is((await within(first, 1000, 'first')).outcome, 'applied');
  assert.is((await within(second, 1000, 'second')).outcome, 'superseded');
  (await attempt(1)).answer({ kind: 'applied', path: 'runtime' });
  assert.is((await within(third, 1000, 'third')).outcome, 'applied');
  assert.equal(calls.map((call) => call.config), ['a', 'c']);
});

test('the same config again is unchanged, with no attempt', async () => {
  const { queue, attempt, calls } = fakeHaproxy();
  const first = queue.apply(wanted('a'));
  (await attempt(0)).answer({ kind: 'applied', path: 'start' });
  await within(first, 1000, 'first');
  assert.is((await within(queue.apply(wanted('a')), 1000, 'again')).outcome, 'unchanged');
  assert.is(calls.length, 1);
});

test('a refused config is rejected, never tried again, and unhealthy until a resync tries it again', async () => {
  const { queue, attempt, calls, logs } = fakeHaproxy();
  const first = queue.apply(wanted('a'));
  (await attempt(0)).answer({ kind: 'applied', path: 'start' });
  await within(first, 1000, 'first');
  const bad = queue.apply(wanted('bad'));
  (await attempt(1)).answer({ kind: 'refused', reason: 'parse error' });
  assert.is((await within(bad, 1000, 'bad')).outcome, 'rejected');
  assert.is((await within(queue.apply(wanted('bad')), 1000, 'bad again')).outcome, 'rejected');
  assert.is(calls.length, 2, 'not tried again');
  assert.ok(queue.stats().refusedNewest);
  assert.ok(logs.some((line) => line.includes('refused the config') && line.includes('parse error')));
  queue.retryNow();
  (await attempt(2)).answer({ kind: 'applied', path: 'reload' });
  assert.equal(calls.map((call) => call.config), ['a', 'bad', 'bad']);
});

test('a transient failure is tried again with backoff, logged once per streak, until it is applied', async () => {
  const { queue, attempt, logs } = fakeHaproxy();
  const result = queue.apply(wanted('a'));
  const times: number[] = [];
  for (let n = 0; n < 4; n++) {
    const call = await attempt(n);
    times.push(performance.now());
    call.answer({ kind: 'failed', reason: 'haproxy -c did not finish within 10 s' });
  }
  assert.is(queue.stats().failing, 'haproxy -c did not finish within 10 s');
  assert.ok(queue.stats().notLiveSince !== undefined);
  (await attempt(4)).answer({ kind: 'applied', path: 'start' });
  assert.is((await within(result, 1000, 'result')).outcome, 'applied');
  assert.is(logs.filter((line) => line.includes('could not apply the newest state')).length, 1, logs.join('\n'));
  assert.ok(logs.some((line) => line.includes('applied after 4 failed attempt(s)')));
  assert.ok(times[3]! - times[2]! >= 20 * 0.8, 'the wait grows');
  assert.is(queue.stats().failing, undefined);
  assert.is(queue.stats().notLiveSince, undefined);
});

test('an attempt that throws is a failure to retry, not a crash', async () => {
  const logs: string[] = [];
  let tries = 0;
  const queue = createApplyQueue({
    attempt: async () => {
      if (++tries === 1) throw new Error('ENOSPC: no space left on device');
      return { kind: 'applied', path: 'start' };
    },
    sweep: async () => false,
    log: createLogger({ format: 'text', level: 'debug', write: (line) => logs.push(line) }),
    retryFirstMs: 10,
  });
  assert.is((await within(queue.apply(wanted('a')), 2000, 'result')).outcome, 'applied');
  assert.is(tries, 2);
  assert.ok(logs.some((line) => line.includes('ENOSPC')));
});

test.run();
