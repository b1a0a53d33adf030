// Time limits for tests: a hang is not a failure CI can report, so every await a test makes is bounded,
// by the limit of its own step where one is given, and by the whole test's limit in any case.

import { suite, type Callback } from 'uvu';

// The longest any one test may take; the slowest (10,000 instances, a 10 s outage) take ~30 s.
export const TEST_LIMIT_MS = 120_000;

// `promise`, or a failure naming `what` after `ms`.
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

export interface LimitedSuite<T> {
  (name: string, handler: Callback<T>): void;
  before: ReturnType<typeof suite<T>>['before'];
  after: ReturnType<typeof suite<T>>['after'];
  run(): void;
}

// A uvu suite whose every test fails once it has run for TEST_LIMIT_MS.
export function limitedSuite<T extends object = Record<string, never>>(name: string): LimitedSuite<T> {
  const test = suite<T>(name);
  const limited = (title: string, handler: Callback<T>) =>
    test(title, (context) => within(Promise.resolve().then(() => handler(context)), TEST_LIMIT_MS, `test "${title}"`));
  return Object.assign(limited, { before: test.before, after: test.after, run: () => test.run() });
}
