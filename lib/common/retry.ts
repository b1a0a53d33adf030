// Retry discipline, shared by the etcd watch and the apply queue: a backoff that grows with jitter and is reset
// only by a success that lasted, and a streak of identical failures logged once, then every 30 s with a count.

export class Backoff {
  private failures = 0;
  private readonly firstMs: number;
  private readonly maxMs: number;
  private readonly random: () => number;

  constructor(firstMs: number, maxMs: number, random: () => number = Math.random) {
    this.firstMs = firstMs;
    this.maxMs = maxMs;
    this.random = random;
  }

  // The delay before the next try: doubled after each failure up to the cap, then ±20 % so that many
  // ambassadors that lost etcd at once do not come back at once.
  next(): number {
    const base = Math.min(this.maxMs, this.firstMs * 2 ** this.failures);
    this.failures++;
    return base * (0.8 + this.random() * 0.4);
  }

  reset(): void {
    this.failures = 0;
  }
}

const STREAK_LOG_EVERY_MS = 30_000;

// Says a failure when it starts a streak, then again every `everyMs` while the same failure repeats, with a
// count; a different failure starts a new streak. `ended()` closes the streak and says how many it had.
export class FailureStreak {
  private reason: string | undefined;
  private count = 0;
  private loggedAt = 0;
  private readonly everyMs: number;
  private readonly now: () => number;

  constructor(everyMs = STREAK_LOG_EVERY_MS, now: () => number = Date.now) {
    this.everyMs = everyMs;
    this.now = now;
  }

  // Whether this failure is worth a log line, and how many in a row it makes.
  failed(reason: string): { log: boolean; count: number } {
    const now = this.now();
    if (reason !== this.reason) {
      this.reason = reason;
      this.count = 0;
      this.loggedAt = -Infinity;
    }
    this.count++;
    const log = now - this.loggedAt >= this.everyMs;
    if (log) this.loggedAt = now;
    return { log, count: this.count };
  }

  // The failures in the streak that just ended (0 if there was none).
  ended(): number {
    const count = this.count;
    this.reason = undefined;
    this.count = 0;
    return count;
  }

  get failing(): string | undefined {
    return this.reason;
  }
}
