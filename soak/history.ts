// The soak's history: every event, as the process that observed it saw it, on one clock (CLOCK_MONOTONIC, in
// ns, which every process here reads as process.hrtime.bigint()). Kept in memory for the checker and
// written as JSON lines, so that a run can be checked again later (npm run soak -- --check <dir>).

import { createWriteStream, readFileSync, type WriteStream } from 'node:fs';
import { gunzipSync } from 'node:zlib';

export type SoakEvent =
  // A connection as a backend saw it (source backend: its own record) or as the wire did (source wire).
  | { type: 'accept' | 'session' | 'close'; t: bigint; source: 'backend' | 'wire'; backend: string; id: number }
  // The writer: a compare-and-swap of the master key, acknowledged (ok), refused (someone else wrote it),
  // or of unknown outcome (no answer); a linearizable read of the master.
  | { type: 'write'; t: bigint; sent: bigint; master: string; revision: bigint }
  | { type: 'write-unknown'; t: bigint; sent: bigint; master: string }
  | { type: 'read'; t: bigint; master: string; modRevision: bigint; revision: bigint }
  // Other writes under the prefix (they move the prefix's revision, not the master).
  | { type: 'churn'; t: bigint; revision: bigint }
  // A client's new connection through the port, opened at `sent`: who greeted it at `t` ('' for refused, closed
  // or no greeting within the probe's limit). Histories recorded before the hold have no `sent` (then `t`).
  | { type: 'probe'; t: bigint; sent?: bigint; answered: string }
  | { type: 'healthz'; t: bigint; status: number; body: string }
  | { type: 'fault-start'; t: bigint; id: number; kind: string; target?: string }
  | { type: 'fault-end'; t: bigint; id: number }
  // What a fault found out while it ran (where etcd's leadership went, say).
  | { type: 'fault-note'; t: bigint; id: number; note: string }
  | { type: 'quiet-start'; t: bigint }
  | { type: 'quiet-end'; t: bigint }
  | { type: 'ambassador-start'; t: bigint; pid: number }
  | { type: 'ambassador-exit'; t: bigint; pid: number; code: number | null; signal: string | null; reason: string }
  | { type: 'haproxy-masters'; t: bigint; count: number }
  // A second ambassador started on the soak's port or runtime dir, and how it exited (null: it did not, and
  // was stopped).
  | { type: 'intruder'; t: bigint; on: 'port' | 'runtime-dir'; code: number | null; reason: string }
  // The run ends: what stops after this was stopped by the soak.
  | { type: 'end'; t: bigint };

export interface History {
  events: SoakEvent[];
  add(event: SoakEvent): void;
  close(): Promise<void>;
}

export const now = (): bigint => process.hrtime.bigint();

export function createHistory(file: string): History {
  const out: WriteStream = createWriteStream(file);
  const events: SoakEvent[] = [];
  return {
    events,
    add: (event) => {
      events.push(event);
      out.write(JSON.stringify(event, (_, v) => (typeof v === 'bigint' ? `${v}n` : v)) + '\n');
    },
    close: () => new Promise((resolve) => out.end(resolve)),
  };
}

// A stored run keeps its history gzipped (history.jsonl.gz).
export function readHistory(file: string): SoakEvent[] {
  const bytes = readFileSync(file);
  return (file.endsWith('.gz') ? gunzipSync(bytes) : bytes)
    .toString('utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line, (_, v) => (typeof v === 'string' && /^-?\d+n$/.test(v) ? BigInt(v.slice(0, -1)) : v)) as SoakEvent)
    .sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : 0));
}
