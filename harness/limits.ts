// Time limits for tests: a hang is not a failure CI can report, so every await a test makes is bounded,
// by the limit of its own step where one is given, and by the whole test's limit in any case.

import { suite, type Callback } from 'uvu';

// How much slower than this machine the tests run: AMBASSADOR_TEST_TIME_SCALE=3 under emulation (test/run.ts's
// arm64 phase). It stretches the waits that only keep a hang from hanging, never a bound a test asserts.
export const TIME_SCALE = Number(process.env.AMBASSADOR_TEST_TIME_SCALE ?? 1);

// The longest any one test may take; the slowest (10,000 instances, a 10 s outage) take ~30 s.
export const TEST_LIMIT_MS = 120_000 * TIME_SCALE;

// `promise`, or a failure naming `what` after `ms`.
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

export interface LimitedSuite<T> {
  // `limitMs` for a test that is slow by its nature (a teardown that deletes gigabytes, say).
  (name: string, handler: Callback<T>, limitMs?: number): void;
  before: ReturnType<typeof suite<T>>['before'];
  after: ReturnType<typeof suite<T>>['after'];
  run(): void;
}

// A uvu suite whose every test fails once it has run for TEST_LIMIT_MS.
export function limitedSuite<T extends object = Record<string, never>>(name: string): LimitedSuite<T> {
  const test = suite<T>(name);
  const limited = (title: string, handler: Callback<T>, limitMs = TEST_LIMIT_MS) =>
    test(title, (context) => within(Promise.resolve().then(() => handler(context)), limitMs, `test "${title}"`));
  return Object.assign(limited, { before: test.before, after: test.after, run: () => test.run() });
}
