// What the hold has done (lib/render/hold.ts), as haproxy's `ambassador hold` says it, and added up across
// workers: each worker counts from its own start, so a reload would take the counts back to zero; the counts
// of each worker replaced are kept and added to its successor's. A worker's counts after its last read are
// not seen (a reload moves new connections to the new worker at once; the old one holds none for long).

import { ask, type WorkerControl } from './admin.ts';

export interface HoldCounts {
  // Held now; held since the start; of those ended, sent on to a server that became usable, closed at the
  // bound, or ended by their stream while held (the client left).
  now: number;
  total: number;
  released: number;
  timeouts: number;
  abandoned: number;
  // The hold times of those released or closed at the bound: their sum (seconds) and cumulative counts per
  // bucket (HOLD_BUCKETS).
  sum: number;
  buckets: number[];
}

// The answer of `ambassador hold`: the worker's load time and the counts per proxy. Pure.
export function parseHold(text: string): { loaded: string; proxies: Map<string, HoldCounts> } | undefined {
  const loaded = /^loaded (\S+)$/m.exec(text)?.[1];
  if (loaded === undefined) return undefined;
  const proxies = new Map<string, HoldCounts>();
  for (const line of text.split('\n')) {
    const match = /^(\S+) now (\d+) total (\d+) released (\d+) timeouts (\d+) abandoned (\d+) sum ([\d.]+) buckets ([\d,]+)$/.exec(line);
    if (!match) continue;
    const [now, total, released, timeouts, abandoned, sum] = match.slice(2, 8).map(Number) as [number, number, number, number, number, number];
    proxies.set(match[1]!, { now, total, released, timeouts, abandoned, sum, buckets: match[8]!.split(',').map(Number) });
  }
  return { loaded, proxies };
}

const add = (a: HoldCounts | undefined, b: HoldCounts, now: number): HoldCounts => ({
  now,
  total: (a?.total ?? 0) + b.total,
  released: (a?.released ?? 0) + b.released,
  timeouts: (a?.timeouts ?? 0) + b.timeouts,
  abandoned: (a?.abandoned ?? 0) + b.abandoned,
  sum: (a?.sum ?? 0) + b.sum,
  buckets: b.buckets.map((count, i) => (a?.buckets[i] ?? 0) + count),
});

// Counts across workers, per proxy: read(text) takes one answer and returns the totals.
export function createHoldTotals() {
  const retired = new Map<string, HoldCounts>();
  let current: { loaded: string; proxies: Map<string, HoldCounts> } | undefined;
  return (answer: NonNullable<ReturnType<typeof parseHold>>): Map<string, HoldCounts> => {
    if (current !== undefined && current.loaded !== answer.loaded) {
      for (const [proxy, counts] of current.proxies) retired.set(proxy, add(retired.get(proxy), counts, 0));
    }
    current = answer;
    const totals = new Map(retired);
    for (const [proxy, counts] of answer.proxies) totals.set(proxy, add(retired.get(proxy), counts, counts.now));
    return totals;
  };
}

// The hold's counts from the worker now, within timeoutMs; undefined when it does not answer as the hold does.
export async function readHold(control: WorkerControl, timeoutMs: number) {
  return parseHold(await ask(control, 'ambassador hold', timeoutMs));
}
