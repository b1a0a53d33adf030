// Backends that record what they see: every accept and every close, on the machine's monotonic clock, from a
// process of their own (so neither the test's event loop nor ambassador's delays their clock), all of them
// in one process (one event loop, so the order of two events is the order the kernel gave them).
// Used where a promise is checked from the backends' side: the fence ordering, the soak.

import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { isRunning, stopPid, track } from './processes.ts';

export interface BackendEvent {
  // session: the client's first byte arrived (a health check sends none).
  kind: 'accept' | 'session' | 'close';
  // CLOCK_MONOTONIC, in nanoseconds: the clock of process.hrtime.bigint() in every process.
  at: bigint;
  backend: string;
  // The connection, unique within one recorder.
  id: number;
}

export interface RecordingBackends {
  pid: number;
  // The events so far, in the order they happened.
  events: BackendEvent[];
  // Resolves with the first event from `from` on that `predicate` likes (the caller bounds the wait).
  waitForEvents(predicate: (event: BackendEvent) => boolean, from?: number): Promise<BackendEvent>;
  stop(): Promise<void>;
}

// A deaf backend reads nothing after its greeting, as a database busy with a long statement.
export async function startRecordingBackends(backends: { name: string; host: string; port: number; deaf?: boolean }[]): Promise<RecordingBackends> {
  const spec = (b: (typeof backends)[number]) => `${b.name}@${b.host}:${b.port}${b.deaf ? '/deaf' : ''}`;
  const child = spawn(process.execPath, [join(import.meta.dirname, 'recorder-process.ts'), ...backends.map(spec)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  track(child.pid);
  const events: BackendEvent[] = [];
  const waiters = new Set<{ predicate: (event: BackendEvent) => boolean; resolve: (event: BackendEvent) => void }>();
  const ready = new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`the recording backends exited (${code}) before they listened`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line === 'ready') return resolve();
      const [kind, at, backend, id] = line.split(' ');
      const event: BackendEvent = { kind: kind as BackendEvent['kind'], at: BigInt(at!), backend: backend!, id: Number(id) };
      events.push(event);
      for (const waiter of waiters) {
        if (!waiter.predicate(event)) continue;
        waiters.delete(waiter);
        waiter.resolve(event);
      }
    });
  });
  await ready;
  return {
    pid: child.pid!,
    events,
    waitForEvents: (predicate, from = events.length) => {
      const seen = events.slice(from).find(predicate);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve) => waiters.add({ predicate, resolve }));
    },
    stop: async () => {
      if (!isRunning(child)) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.stdin!.end();
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 3000))]);
      await stopPid(child.pid!);
    },
  };
}

// Sessions still open to one backend when another accepted a client's connection: with one master routed at a
// time, each is a breach of the fence (the new master took a connection before every session to the old one
// was closed). Each such session counts once, at the first accept it overlaps. Only connections that carried
// a client byte count: haproxy's health checks connect and close without one. `overlapNs`: how long the
// session stayed open after that accept (to the last event, if it never closed).
export interface Overlap {
  at: bigint;
  accepted: string;
  stillOpen: string;
  overlapNs: bigint;
}

export function fenceOverlaps(events: readonly BackendEvent[]): Overlap[] {
  const sessions = new Set(events.filter((event) => event.kind === 'session').map((event) => event.id));
  const closeAt = new Map<number, bigint>();
  for (const event of events) if (event.kind === 'close') closeAt.set(event.id, event.at);
  const end = events.reduce((last, event) => (event.at > last ? event.at : last), 0n);
  const open = new Map<number, string>();
  const overlaps: Overlap[] = [];
  for (const event of events) {
    if (!sessions.has(event.id) || event.kind === 'session') continue;
    if (event.kind === 'close') {
      open.delete(event.id);
      continue;
    }
    for (const [id, backend] of open) {
      if (backend === event.backend) continue;
      overlaps.push({ at: event.at, accepted: event.backend, stillOpen: backend, overlapNs: (closeAt.get(id) ?? end) - event.at });
      open.delete(id);
    }
    open.set(event.id, event.backend);
  }
  return overlaps;
}
