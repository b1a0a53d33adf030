// The apply queue: the newest wanted state against the live one, one change in flight, always ending on the
// newest. It is the one place that decides what a failed change leads to: a config haproxy refused is not
// tried again (until a resync), a failure that may pass (a timeout, a spawn error, a full disk) is tried again
// with backoff and logged once per streak. Between changes it runs the drain sweep. It never talks to haproxy.

import type { Logger } from '../common/log.ts';
import type { ServerTable } from '../render/plan.ts';
import { Backoff, FailureStreak } from '../common/retry.ts';

// How an applied change reached haproxy.
export type ApplyPath = 'start' | 'runtime' | 'reload';

// What haproxy should run: the config text, and the servers it describes.
export interface Wanted {
  config: string;
  servers: ServerTable;
  // The config for another table of servers, with everything else as in `config`: for a reload that must not
  // open the new master yet (lib/haproxy/fence.ts), and for the file when only part of a change is live.
  configOf(servers: ServerTable): string;
}

// One try at making `next` live.
export type Attempt = { kind: 'applied'; path: ApplyPath } | { kind: 'refused'; reason: string } | { kind: 'failed'; reason: string };

type ApplyOutcome = 'applied' | 'unchanged' | 'rejected' | 'superseded';

export interface ApplyResult {
  outcome: ApplyOutcome;
  path?: ApplyPath;
  ms: number;
}

interface QueueSettings {
  // `newer`: whether a newer state is already waiting (work that only the last state needs can wait for it).
  attempt(next: Wanted, newer: () => boolean): Promise<Attempt>;
  // Deletes drained servers that have no session left; true while some are still draining.
  sweep(): Promise<boolean>;
  log: Logger;
  retryFirstMs?: number;
  retryMaxMs?: number;
  sweepEveryMs?: number;
}

export interface QueueStats {
  // The newest wanted config is live.
  current: boolean;
  // A change is being made now.
  busy: boolean;
  refusedNewest: boolean;
  // The failure being retried, if any.
  failing: string | undefined;
  // Since when (epoch ms) the newest wanted state has not been live; undefined while it is.
  notLiveSince: number | undefined;
  applied: Record<ApplyPath, number>;
  refused: number;
  failures: number;
}

interface ApplyQueue {
  apply(next: Wanted): Promise<ApplyResult>;
  // Resolves when no change is being made (at once if none is).
  idle(): Promise<void>;
  // A drain sweep soon (a runtime change left a server draining).
  sweepSoon(): void;
  // Forget the refused config and the failure streak, and try the newest state again now (a resync).
  retryNow(): void;
  stats(): QueueStats;
  stop(): void;
}

interface Waiter {
  config: string;
  resolve(result: ApplyResult): void;
}

export function createApplyQueue(settings: QueueSettings): ApplyQueue {
  const { log } = settings;
  const sweepEveryMs = settings.sweepEveryMs ?? 1_000;
  const backoff = new Backoff(settings.retryFirstMs ?? 250, settings.retryMaxMs ?? 5_000);
  const streak = new FailureStreak();
  const counts = { applied: { start: 0, runtime: 0, reload: 0 }, refused: 0, failures: 0 };
  let wanted: Wanted | undefined;
  let liveConfig: string | undefined;
  let refusedConfig: string | undefined;
  let notLiveSince: number | undefined;
  let waiters: Waiter[] = [];
  let busy = false;
  let stopped = false;
  let sweepDue = false;
  let retryTimer: NodeJS.Timeout | undefined;
  let sweepTimer: NodeJS.Timeout | undefined;
  const idleWaiters: (() => void)[] = [];

  const due = () => wanted !== undefined && wanted.config !== liveConfig && wanted.config !== refusedConfig && retryTimer === undefined;

  const attemptOnce = async (next: Wanted): Promise<Attempt> => {
    try {
      return await settings.attempt(next, () => wanted !== next);
    } catch (err) {
      return { kind: 'failed', reason: (err as Error).message };
    }
  };

  const settle = (next: Wanted, attempt: Attempt, ms: number) => {
    if (attempt.kind === 'applied') {
      liveConfig = next.config;
      counts.applied[attempt.path]++;
      backoff.reset();
      const failed = streak.ended();
      if (failed > 0) log.info(`haproxy: applied after ${failed} failed attempt(s)`);
    } else if (attempt.kind === 'refused') {
      refusedConfig = next.config;
      counts.refused++;
      backoff.reset();
      streak.ended();
      log.error('haproxy: refused the config for the newest state; the last good one keeps serving', { reason: attempt.reason });
    } else {
      counts.failures++;
      const { log: say, count } = streak.failed(attempt.reason);
      if (say) log.error(`haproxy: could not apply the newest state (${attempt.reason}); retrying`, { attempts: count });
      retryTimer = setTimeout(() => {
        retryTimer = undefined;
        void run();
      }, backoff.next());
    }
    const batch = waiters;
    waiters = [];
    for (const waiter of batch) {
      if (waiter.config !== next.config && waiter.config === wanted?.config) waiters.push(waiter); // applied next
      else if (waiter.config !== next.config) waiter.resolve({ outcome: 'superseded', ms });
      else if (attempt.kind === 'applied') waiter.resolve({ outcome: 'applied', path: attempt.path, ms });
      else if (attempt.kind === 'refused') waiter.resolve({ outcome: 'rejected', ms });
      else waiters.push(waiter); // tried again
    }
  };

  const run = async () => {
    if (busy || stopped) return;
    busy = true;
    try {
      while (!stopped) {
        if (due()) {
          const next = wanted!;
          const began = performance.now();
          const attempt = await attemptOnce(next);
          settle(next, attempt, Math.round(performance.now() - began));
        } else if (sweepDue && retryTimer === undefined) {
          sweepDue = false;
          // A sweep that failed is tried again soon, as one that left servers draining.
          if (await settings.sweep().catch(() => true)) sweepSoon();
        } else {
          break;
        }
      }
      const waiting = waiters;
      waiters = [];
      for (const waiter of waiting) {
        if (waiter.config === liveConfig) waiter.resolve({ outcome: 'unchanged', ms: 0 });
        else if (waiter.config === refusedConfig) waiter.resolve({ outcome: 'rejected', ms: 0 });
        else if (waiter.config !== wanted?.config) waiter.resolve({ outcome: 'superseded', ms: 0 });
        else waiters.push(waiter);
      }
    } finally {
      busy = false;
      if (wanted?.config === liveConfig) notLiveSince = undefined;
      for (const resolve of idleWaiters.splice(0)) resolve();
    }
  };

  const sweepSoon = () => {
    if (sweepTimer || stopped) return;
    sweepTimer = setTimeout(() => {
      sweepTimer = undefined;
      sweepDue = true;
      void run();
    }, sweepEveryMs);
    sweepTimer.unref();
  };

  return {
    apply: (next) =>
      new Promise<ApplyResult>((resolve) => {
        waiters.push({ config: next.config, resolve });
        wanted = next;
        if (next.config !== liveConfig) notLiveSince ??= Date.now();
        void run();
      }),
    idle: () => (busy ? new Promise<void>((resolve) => idleWaiters.push(resolve)) : Promise.resolve()),
    sweepSoon,
    retryNow: () => {
      refusedConfig = undefined;
      backoff.reset();
      streak.ended();
      clearTimeout(retryTimer);
      retryTimer = undefined;
      void run();
    },
    stats: () => ({
      current: !busy && wanted !== undefined && wanted.config === liveConfig,
      busy,
      refusedNewest: wanted !== undefined && wanted.config === refusedConfig,
      failing: streak.failing,
      notLiveSince,
      applied: { ...counts.applied },
      refused: counts.refused,
      failures: counts.failures,
    }),
    stop: () => {
      stopped = true;
      clearTimeout(retryTimer);
      clearTimeout(sweepTimer);
    },
  };
}
