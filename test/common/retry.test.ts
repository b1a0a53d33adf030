import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Backoff, FailureStreak } from '../../lib/common/retry.ts';

test('backoff doubles up to its cap, with ±20 % jitter, and starts over when reset', () => {
  const middle = new Backoff(100, 1000, () => 0.5);
  assert.equal([1, 2, 3, 4, 5].map(() => middle.next()), [100, 200, 400, 800, 1000]);
  middle.reset();
  assert.is(middle.next(), 100);
  assert.is(new Backoff(100, 1000, () => 0).next(), 80);
  assert.is(Math.round(new Backoff(100, 1000, () => 1).next()), 120);
});

test('a streak of one failure is said once, then every 30 s with a count; another failure is said at once', () => {
  let now = 0;
  const streak = new FailureStreak(30_000, () => now);
  assert.equal(streak.failed('down'), { log: true, count: 1 });
  now = 10_000;
  assert.equal(streak.failed('down'), { log: false, count: 2 });
  now = 30_000;
  assert.equal(streak.failed('down'), { log: true, count: 3 });
  assert.equal(streak.failed('refused'), { log: true, count: 1 });
  assert.is(streak.failing, 'refused');
  assert.is(streak.ended(), 1);
  assert.is(streak.failing, undefined);
  assert.equal(streak.failed('refused'), { log: true, count: 1 });
});

test.run();
