// /state: JSON of what is live and how each part is doing, from the snapshot. Pure.

import { shownProblem } from '../service/problems.ts';
import { health, type StatusSnapshot } from './health.ts';

export function stateJson(snapshot: StatusSnapshot, maxStaleMs: number) {
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
  };
}
