// The health verdict, and the snapshot every answer of the status page is read from: pure, so that each
// verdict is tested on its own (test/status/health.test.ts).

import type { ApplyPath, HaproxyStats } from '../haproxy/driver.ts';
import type { Problem, Server } from '../service/service.ts';
import type { WatchStats } from '../etcd/watch.ts';

export interface LastChange {
  revision: bigint;
  at: string;
  path: ApplyPath;
  description: string;
}

export interface StatusSnapshot {
  version: string;
  prefix: string;
  masterOnly: boolean;
  revision: bigint;
  etcd: WatchStats;
  haproxy: HaproxyStats;
  // The servers of the newest etcd state (what haproxy runs when haproxy.current), per port.
  servers: readonly Server[];
  replicas: readonly Server[] | undefined;
  instancesRejected: number;
  master: string | undefined;
  problems: readonly Problem[];
  lastChange: LastChange | undefined;
}

export interface HealthVerdict {
  healthy: boolean;
  reason: string;
}

// Healthy when haproxy runs the newest state, or has not for less than maxStaleMs (a change being applied, or
// retried), and etcd is live or stale for less than maxStaleMs. A config haproxy refused is unhealthy at once.
export function health(snapshot: StatusSnapshot, maxStaleMs: number, now = Date.now()): HealthVerdict {
  const { etcd, haproxy } = snapshot;
  if (haproxy.masterPid === undefined) {
    return { healthy: false, reason: etcd.snapshots === 0 ? 'waiting for the first etcd snapshot; haproxy not started' : 'haproxy is not running' };
  }
  if (haproxy.masterBlocked !== undefined) return { healthy: false, reason: `the master cannot be opened: ${haproxy.masterBlocked}` };
  if (haproxy.refusedNewest) return { healthy: false, reason: 'haproxy refused the config for the newest etcd state; an older one is serving' };
  const notLiveMs = haproxy.notLiveSince === undefined ? 0 : now - haproxy.notLiveSince;
  if (notLiveMs >= maxStaleMs) {
    const why = haproxy.failing ? `failing: ${haproxy.failing}` : 'a change is still being applied';
    return { healthy: false, reason: `the newest etcd state (revision ${snapshot.revision}) has not been live for ${(notLiveMs / 1000).toFixed(0)} s (${why}); an older one is serving` };
  }
  const staleMs = etcd.staleSince === undefined ? 0 : now - etcd.staleSince;
  if (staleMs >= maxStaleMs) {
    const problems = Object.entries(etcd.memberProblems).map(([member, why]) => `${member}: ${why}`);
    const why = problems.length > 0 ? ` (${problems.join('; ')})` : '';
    return { healthy: false, reason: `the etcd state has not been confirmed current for ${(staleMs / 1000).toFixed(0)} s${why}; serving revision ${snapshot.revision}` };
  }
  const stale = staleMs > 0 ? `, etcd state not confirmed for ${(staleMs / 1000).toFixed(0)} s` : '';
  const pending = haproxy.current ? '' : haproxy.failing ? `, retrying a change (${haproxy.failing})` : ', a change is being applied';
  const file = haproxy.configFileBehind === undefined ? '' : `, the config file lags what is live (${haproxy.configFileBehind})`;
  return { healthy: true, reason: `ok: revision ${snapshot.revision}, ${snapshot.servers.filter((s) => s.enabled).length} server(s) routed${stale}${pending}${file}` };
}

