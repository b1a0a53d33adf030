// The soak's clients and samplers: a new connection every 100 ms and two sessions held open; churn written in
// and outside the prefix; /healthz every 500 ms and haproxy's masters every second. Each records what it saw,
// with its own clock reading, into the history; `stop` ends them all.

import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Etcd3 } from 'etcd3';
import { openSession, whoAnswers, type Session } from '../harness/net.ts';
import { now, type History } from './history.ts';

// ambassador's default hold (--hold), and the most probes that may wait at once.
const PROBE_LIMIT_MS = 10_000 + 3_000;
const PROBES_IN_FLIGHT = 100;

export interface Observed {
  port: number;
  statusPort: number;
  prefix: string;
}

export function startObservers(history: History, client: Etcd3, { port, statusPort, prefix }: Observed): { stop: () => Promise<void> } {
  let running = true;
  const every = async (ms: number, body: () => Promise<void> | void) => {
    while (running) {
      await body();
      await sleep(ms);
    }
  };
  // Churn under the prefix (the registry ignores these keys) and outside it.
  let churned = 0;
  const churn = every(500, async () => {
    const n = churned++;
    await client.put(`${prefix}/meta/churn`).value(String(n)).exec().then(
      (r) => history.add({ type: 'churn', t: now(), revision: BigInt(r.header.revision) }),
      () => {},
    );
    await client.put(`/soak/elsewhere/${n % 50}`).value(String(n)).catch(() => {});
  });
  // A new connection every 100 ms, each waiting for its greeting as long as ambassador may hold it and more.
  const inFlight = new Set<Promise<void>>();
  const probes = every(100, () => {
    if (inFlight.size >= PROBES_IN_FLIGHT) return;
    const sent = now();
    const probe = whoAnswers(port, '127.0.0.1', PROBE_LIMIT_MS).then((answered) => history.add({ type: 'probe', t: now(), sent, answered }));
    inFlight.add(probe);
    void probe.finally(() => inFlight.delete(probe));
  });
  const held: Session[] = [];
  const holders = [0, 1].map(() =>
    every(100, async () => {
      const session = await Promise.race([openSession(port), sleep(2000).then(() => undefined)]);
      if (!session) return;
      held.push(session);
      await Promise.race([session.closed, every(200, () => {})]);
      session.close();
    }),
  );
  const healthz = every(500, async () => {
    const sample = await fetch(`http://127.0.0.1:${statusPort}/healthz`, { signal: AbortSignal.timeout(1000) }).then(
      async (r) => ({ status: r.status, body: await r.text() }),
      () => ({ status: 0, body: '' }),
    );
    history.add({ type: 'healthz', t: now(), ...sample });
  });
  const processes = every(1000, () => void history.add({ type: 'haproxy-masters', t: now(), count: haproxyMasters() }));
  return {
    stop: async () => {
      running = false;
      await Promise.all([churn, probes, healthz, processes]);
      await Promise.all(inFlight);
      for (const session of held) session.close();
      await Promise.all(holders);
    },
  };
}

// haproxy masters in this pid namespace: haproxy processes whose parent is not haproxy.
function haproxyMasters(): number {
  const comm = (pid: string) => {
    try {
      return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      return '';
    }
  };
  const parent = (pid: string) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]!;
    } catch {
      return '';
    }
  };
  return readdirSync('/proc').filter((pid) => /^\d+$/.test(pid) && comm(pid) === 'haproxy' && comm(parent(pid)) !== 'haproxy').length;
}
