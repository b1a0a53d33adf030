// /state: JSON of what is live and how each part is doing, from the snapshot. Pure.

import type { HoldCounts } from '../haproxy/driver.ts';
import { shownProblem } from '../service/problems.ts';
import { health, type StatusSnapshot } from './health.ts';

// `hold`: the hold's counts per proxy as haproxy said them for this answer (undefined: not read).
export function stateJson(snapshot: StatusSnapshot, maxStaleMs: number, hold: ReadonlyMap<string, HoldCounts> | undefined) {
  const verdict = health(snapshot, maxStaleMs);
  return {
    version: snapshot.version,
    prefix: snapshot.prefix,
    healthy: verdict.healthy,
    health: verdict.reason,
    revision: snapshot.revision.toString(),
    master: snapshot.masterOnly ? (snapshot.master ?? null) : undefined,
    instances: snapshot.servers.map((server) => ({
      name: server.name,
      server: server.server,
      address: server.address,
      port: server.port,
      routed: server.enabled,
    })),
    replicas: snapshot.replicas?.map((server) => ({ name: server.name, server: server.server, address: server.address, port: server.port, routed: server.enabled })),
    problems: snapshot.problems.map(shownProblem),
    lastChange: snapshot.lastChange ? { ...snapshot.lastChange, revision: snapshot.lastChange.revision.toString() } : null,
    etcd: {
      connected: snapshot.etcd.connected,
      member: snapshot.etcd.member ?? null,
      staleSeconds: snapshot.etcd.staleSince === undefined ? 0 : Math.round((Date.now() - snapshot.etcd.staleSince) / 1000),
      confirmedSecondsAgo: snapshot.etcd.confirmedAt === undefined ? null : Math.round((Date.now() - snapshot.etcd.confirmedAt) / 100) / 10,
      memberProblems: snapshot.etcd.memberProblems,
      membersLeft: snapshot.etcd.membersLeft,
      events: snapshot.etcd.events,
      snapshots: snapshot.etcd.snapshots,
      resumes: snapshot.etcd.resumes,
      resyncs: snapshot.etcd.resyncs,
      checks: snapshot.etcd.checks,
      listings: snapshot.etcd.listings,
      progress: snapshot.etcd.progress ?? null,
    },
    haproxy: {
      pid: snapshot.haproxy.masterPid ?? null,
      workers: snapshot.haproxy.workers,
      current: snapshot.haproxy.current,
      runtimeChanges: snapshot.haproxy.applied.runtime,
      reloads: snapshot.haproxy.applied.reload,
      refused: snapshot.haproxy.refused,
      fencesUnconfirmed: snapshot.haproxy.fencesUnconfirmed,
      fencesFrozen: snapshot.haproxy.fencesFrozen,
      failing: snapshot.haproxy.failing ?? null,
      masterBlocked: snapshot.haproxy.masterBlocked ?? null,
      runtimeDirRestored: snapshot.haproxy.runtimeDirRestored,
      configFileBehind: snapshot.haproxy.configFileBehind ?? null,
    },
    // Per proxy (service: --port; replicas: --replica-port): held now, in total, closed at the bound, left by
    // their client, and the mean hold of those that ended.
    hold: hold === undefined ? null : Object.fromEntries([...hold].map(([proxy, c]) => [proxy, { now: c.now, total: c.total, released: c.released, timeouts: c.timeouts, abandoned: c.abandoned, meanSeconds: c.released + c.timeouts === 0 ? null : Math.round((c.sum / (c.released + c.timeouts)) * 1e4) / 1e4 }])),
  };
}
