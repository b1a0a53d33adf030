// The nemesis's schedule, drawn from a seed before the run starts: cycles of faults (one, or a pair at once)
// held for a few seconds, healed, then a quiet period after which convergence is checked. Pure: the same
// seed and duration give the same schedule, so a run can be reproduced from its seed.

// What a fault does (soak/nemesis.ts carries each out). A target is an etcd member index (0-2), or for
// `watched`/`leader` the member chosen when the fault starts.
export const FAULT_KINDS = [
  'partition-member', // a member cut off from the other two (firewall)
  'partition-watched', // the member ambassador's watch is on, cut off
  'pause-member', // a member paused (SIGSTOP)
  'pause-leader',
  'kill-member', // killed, restarted when healed
  'kill-leader',
  'replace-member', // removed, its data wiped, added back as a new member
  'compact-disconnected', // ambassador cut off from every member (silent), writes and a compaction meanwhile
  'blackhole-watched', // ambassador's connection to the member it watches goes silent
  'latency', // 200-600 ms added each way between ambassador and every member
  'kill-ambassador', // SIGKILL, restarted at once (as its supervisor would)
  'pause-ambassador', // SIGSTOP past the fence window
  'kill-haproxy-worker', // ambassador exits 1 by design; restarted
  'kill-haproxy-master', // haproxy's master SIGKILLed: its workers end, ambassador exits 1; restarted
  'oom-haproxy-worker', // the worker, in a memory cgroup at its usage, killed by the OOM killer (or SIGKILL under that pressure) with sessions open
  'vanish-master', // the master's host drops every packet, answers nothing (no reset); etcd names another master meanwhile
  'write-burst', // 500 writes in and outside the prefix
  'burst-during-leader-change', // 500 writes while etcd's leadership moves to another member
  'sighup', // ambassador resyncs
  'delete-runtime-dir', // ambassador's runtime dir deleted, sockets and all
  'runtime-dir-read-only', // its runtime dir made read-only (a bind mount): no socket, no file
  'disk-full', // the file system of its runtime dir filled
  'file-limit', // ambassador's open-file limit lowered to what it has open
  'status-flood', // 300 idle connections to its status port
  'second-ambassador', // another ambassador started on its port, and one on its runtime dir: each must exit 1
] as const;

export type FaultKind = (typeof FAULT_KINDS)[number];

export interface Fault {
  id: number;
  kind: FaultKind;
  // For member faults with a fixed target.
  member?: number;
}

interface Cycle {
  // Offsets from the run's start, in ms.
  at: number;
  faults: Fault[];
  // How long the faults are held, then healed.
  holdMs: number;
  // After healing: nothing is injected and the master stays put, then convergence is checked.
  quietMs: number;
}

export interface Schedule {
  seed: number;
  durationMs: number;
  cycles: Cycle[];
}

// mulberry32: small, fast, and the same everywhere.
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const QUIET_MS = 8_000;
// Faults whose member is chosen by the schedule.
const FIXED_MEMBER = new Set<FaultKind>(['partition-member', 'pause-member', 'kill-member', 'replace-member']);
// Pairs that cannot run at once: they fight over the same process or the same member.
const EXCLUSIVE = new Set<FaultKind>(['kill-ambassador', 'pause-ambassador', 'kill-haproxy-worker', 'kill-haproxy-master', 'oom-haproxy-worker', 'replace-member', 'compact-disconnected', 'delete-runtime-dir', 'runtime-dir-read-only', 'disk-full', 'file-limit']);

export function makeSchedule(seed: number, durationMs: number): Schedule {
  const next = random(seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
  const cycles: Cycle[] = [];
  let ids = 0;
  // Every kind once, in a shuffled order, before any repeats: a short run still covers them all.
  const deck: FaultKind[] = [...FAULT_KINDS].sort(() => next() - 0.5);
  const fault = (kind: FaultKind): Fault => ({ id: ++ids, kind, ...(FIXED_MEMBER.has(kind) ? { member: Math.floor(next() * 3) } : {}) });
  let at = 0;
  for (;;) {
    const first = deck.shift() ?? pick(FAULT_KINDS);
    const faults = [fault(first)];
    // One cycle in three pairs two faults at once (once the deck is dealt).
    if (deck.length === 0 && next() < 0.34 && !EXCLUSIVE.has(first)) {
      const second = pick(FAULT_KINDS.filter((kind) => kind !== first && !EXCLUSIVE.has(kind)));
      const one = faults[0]!;
      const two = fault(second);
      // Two member faults never take down two members at once: the cluster keeps its majority.
      if (!(one.member !== undefined && two.member !== undefined && one.member !== two.member)) faults.push(two);
    }
    const holdMs = 3_000 + Math.floor(next() * 5_000);
    const cycle = { at, faults, holdMs, quietMs: QUIET_MS };
    if (at + holdMs + QUIET_MS > durationMs) break;
    cycles.push(cycle);
    at += holdMs + QUIET_MS + 1_000;
  }
  return { seed, durationMs, cycles };
}

// The fault kinds a schedule holds: what its run must show happening.
export function scheduledKinds(schedule: Schedule): FaultKind[] {
  return [...new Set(schedule.cycles.flatMap((cycle) => cycle.faults.map((fault) => fault.kind)))];
}
