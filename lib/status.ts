// The operator's window, on --status=ADDR:PORT: GET /healthz (200 or 503 with the reason), GET /metrics
// (Prometheus text, by prom-client: the control plane, and per instance what the traffic does, read from
// haproxy's `show stat` at scrape time) and GET /state (JSON of what is live). It reads a snapshot that
// ambassador.ts assembles on each request, and changes nothing.

import { createServer, type Server } from 'node:http';
import { getHeapStatistics } from 'node:v8';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { LastChange } from './follow.ts';
import type { ApplyPath, HaproxyStats, Traffic } from './haproxy/driver.ts';
import { PROXY_NAME, REPLICA_PROXY_NAME } from './render.ts';
import type { Problem, Server as HaproxyServer } from './registry.ts';
import type { WatchStats } from './watch.ts';

export interface StatusSnapshot {
  version: string;
  prefix: string;
  masterOnly: boolean;
  revision: bigint;
  etcd: WatchStats;
  haproxy: HaproxyStats;
  // The servers of the newest etcd state (what haproxy runs when haproxy.current), per port.
  servers: readonly HaproxyServer[];
  replicas: readonly HaproxyServer[] | undefined;
  instancesRejected: number;
  master: string | undefined;
  problems: readonly Problem[];
  lastChange: LastChange | undefined;
}

export interface Status {
  // Counts what happened, as ambassador.ts sees it.
  changeApplied(path: ApplyPath, convergenceSeconds: number): void;
  problemsFound(count: number): void;
  listen(host: string, port: number): Promise<void>;
  close(): Promise<void>;
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
  return { healthy: true, reason: `ok: revision ${snapshot.revision}, ${snapshot.servers.filter((s) => s.enabled).length} server(s) routed${stale}${pending}` };
}

// Which port a proxy of ours serves, as a label value.
const PORTS: Record<string, string> = { [PROXY_NAME]: 'primary', [REPLICA_PROXY_NAME]: 'replica' };

export function createStatus(source: () => StatusSnapshot, maxStaleMs: number, readTraffic: () => Promise<Traffic | undefined>): Status {
  const registry = new Registry();
  // process_resident_memory_bytes, CPU, open fds, event loop lag: ambassador's own.
  collectDefaultMetrics({ register: registry });
  // Counters that mirror a count kept elsewhere are set at scrape time.
  const mirrored = (name: string, help: string, read: (s: StatusSnapshot) => number) =>
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(read(source()));
      },
    });
  const gauge = (name: string, help: string, read: (s: StatusSnapshot) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read(source()));
      },
    });

  mirrored('ambassador_etcd_events_total', 'etcd changes (key puts and deletes) seen under the prefix', (s) => s.etcd.events);
  mirrored('ambassador_etcd_snapshots_total', 'full reads of the prefix: the first, and one after each reconnect or resync', (s) => s.etcd.snapshots);
  mirrored('ambassador_etcd_watches_lost_total', 'etcd watches lost after working (disconnect, compaction, auth, partition)', (s) => s.etcd.watchesLost);
  mirrored('ambassador_etcd_members_left_total', 'etcd members left because they could not confirm the state (no leader, paused, cut off) or their watch fell behind', (s) => s.etcd.membersLeft);
  mirrored('ambassador_etcd_watches_behind_total', 'etcd watches a check found behind what etcd holds (then dropped for a fresh snapshot)', (s) => s.etcd.watchesBehind);
  gauge('ambassador_etcd_connected', '1 while the etcd watch is live', (s) => (s.etcd.connected ? 1 : 0));
  gauge('ambassador_etcd_seconds_since_confirmed', 'seconds since the state was last confirmed current against etcd (a snapshot, or a check that agreed; -1 if never)', (s) =>
    s.etcd.confirmedAt === undefined ? -1 : (Date.now() - s.etcd.confirmedAt) / 1000,
  );
  new Gauge({
    name: 'ambassador_etcd_member',
    help: 'per etcd member: 1 for the one watched, 0 for one that could not serve when last tried (the reason is in /state), labelled by its URL',
    labelNames: ['member'],
    registers: [registry],
    collect() {
      this.reset();
      const { etcd } = source();
      for (const member of Object.keys(etcd.memberProblems)) this.set({ member }, 0);
      if (etcd.member !== undefined) this.set({ member: etcd.member }, 1);
    },
  });
  gauge('ambassador_etcd_revision', 'etcd revision of the newest state', (s) => Number(s.revision));
  gauge('ambassador_seconds_since_etcd_event', 'seconds since the last change seen under the prefix (-1 if none yet)', (s) =>
    s.etcd.lastEventAt === undefined ? -1 : (Date.now() - s.etcd.lastEventAt) / 1000,
  );
  gauge('ambassador_seconds_since_sync', 'seconds the state has not been known current (0 while the etcd watch is live and confirmed)', (s) =>
    s.etcd.staleSince === undefined ? 0 : (Date.now() - s.etcd.staleSince) / 1000,
  );
  mirrored('ambassador_haproxy_refused_total', 'configs haproxy refused (check or load failed); the previous one kept serving', (s) => s.haproxy.refused);
  mirrored('ambassador_apply_failures_total', 'tries at applying a change that failed in a way worth retrying (a timeout, a spawn error, a full disk)', (s) => s.haproxy.failures);
  mirrored('ambassador_runtime_fallbacks_total', 'changes where a runtime command failed and a reload was done instead', (s) => s.haproxy.runtimeFallbacks);
  mirrored('ambassador_fences_unconfirmed_total', 'failovers where haproxy still showed sessions on the old master 1 s after the fence, and the new master was opened anyway', (s) => s.haproxy.fencesUnconfirmed);
  gauge('ambassador_haproxy_workers', 'haproxy worker processes (more than 1 while replaced ones finish their sessions)', (s) => s.haproxy.workers);
  gauge('ambassador_haproxy_current', '1 when haproxy runs the config for the newest etcd state', (s) => (s.haproxy.current ? 1 : 0));
  gauge('ambassador_healthy', '1 when /healthz answers 200', (s) => (health(s, maxStaleMs).healthy ? 1 : 0));
  gauge('ambassador_heap_limit_bytes', "V8's heap limit: the executable's baked-in --max-old-space-size and young generation, unless --node-options changed them", () => getHeapStatistics().heap_size_limit);
  gauge('ambassador_max_stale_seconds', 'the --max-stale setting: how long the state may be stale or unapplied before /healthz says 503', () => maxStaleMs / 1000);
  gauge('ambassador_unapplied_seconds', 'seconds the newest etcd state has not been live in haproxy (0 while it is)', (s) =>
    s.haproxy.notLiveSince === undefined ? 0 : (Date.now() - s.haproxy.notLiveSince) / 1000,
  );
  gauge('ambassador_instances_known', 'instances with an address key', (s) => s.servers.length + s.instancesRejected);
  gauge('ambassador_instances_routed', 'instances haproxy sends connections to on --port', (s) => s.servers.filter((server) => server.enabled).length);
  gauge('ambassador_replicas_routed', 'instances haproxy sends connections to on --replica-port (0 without one)', (s) => (s.replicas ?? []).filter((server) => server.enabled).length);
  gauge('ambassador_instances_rejected', 'instances not routed because a value failed validation', (s) => s.instancesRejected);
  gauge('ambassador_problems', 'problems in the registry now (bad values, missing or unknown master)', (s) => s.problems.length);
  new Gauge({
    name: 'ambassador_master',
    help: '1 for the instance named as master (with --master-only), labelled by its name',
    labelNames: ['instance_name'],
    registers: [registry],
    collect() {
      this.reset();
      const { master, masterOnly } = source();
      if (masterOnly && master !== undefined) this.set({ instance_name: master }, 1);
    },
  });
  const applied = new Counter({ name: 'ambassador_changes_applied_total', help: 'changes applied to haproxy, by path', labelNames: ['path'], registers: [registry] });
  for (const path of ['start', 'runtime', 'reload']) applied.inc({ path }, 0);
  const convergence = new Histogram({
    name: 'ambassador_convergence_seconds',
    help: 'from an etcd change seen to haproxy running it',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  const validationFailures = new Counter({ name: 'ambassador_validation_failures_total', help: 'problems found in the registry (each counted once, when it appears)', registers: [registry] });

  // The data plane, set from one read of haproxy per scrape. Labelled by instance name (from the validated
  // registry) and port; a series for an instance that is gone is dropped, not left at its last value.
  // Not `instance`: Prometheus gives every scraped series that label itself (the target's address).
  const labelNames = ['instance_name', 'port'] as const;
  const instanceGauge = (name: string, help: string) => new Gauge({ name, help, labelNames, registers: [registry] });
  const instanceCounter = (name: string, help: string) => new Counter({ name, help, labelNames, registers: [registry] });
  const traffic = {
    sessions: instanceGauge('ambassador_backend_sessions', 'sessions open to the instance through haproxy now'),
    sessionsTotal: instanceCounter('ambassador_backend_sessions_total', 'sessions haproxy has sent to the instance (since the last reload)'),
    connectionErrors: instanceCounter('ambassador_backend_connection_errors_total', 'connections to the instance that failed'),
    responseErrors: instanceCounter('ambassador_backend_response_errors_total', 'sessions to the instance that ended in an error (aborted, timed out)'),
    up: instanceGauge('ambassador_backend_up', 'health check of the instance: 1 up, 0 down (no series while it is in maintenance: a master-only standby)'),
    statusChanged: instanceGauge('ambassador_backend_status_changed_timestamp_seconds', 'when the instance last changed status (up, down, maintenance), as a Unix time'),
    bytesIn: instanceCounter('ambassador_backend_received_bytes_total', 'bytes clients sent to the instance'),
    bytesOut: instanceCounter('ambassador_backend_sent_bytes_total', 'bytes the instance sent to clients'),
    queued: instanceGauge('ambassador_backend_queued_connections', 'connections waiting for the instance'),
  };
  const haproxyConnections = new Gauge({ name: 'ambassador_haproxy_connections', help: 'connections haproxy holds now', registers: [registry] });
  const haproxyConnectionsTotal = new Counter({ name: 'ambassador_haproxy_connections_total', help: 'connections haproxy has accepted (since its start)', registers: [registry] });
  const haproxyConnectionRate = new Gauge({ name: 'ambassador_haproxy_connections_per_second', help: 'connections haproxy accepted over the last second', registers: [registry] });
  const statsUp = new Gauge({ name: 'ambassador_haproxy_stats_up', help: '1 when haproxy answered for the traffic figures in this scrape (within 1 s)', registers: [registry] });
  const readTrafficMetrics = async (snapshot: StatusSnapshot) => {
    for (const metric of [...Object.values(traffic), haproxyConnections, haproxyConnectionsTotal, haproxyConnectionRate]) metric.reset();
    const read = await readTraffic();
    statsUp.set(read ? 1 : 0);
    if (!read) return;
    const instances = new Map(snapshot.servers.map((server) => [server.server, server.name]));
    for (const server of snapshot.replicas ?? []) instances.set(server.server, server.name);
    const now = Date.now() / 1000;
    for (const row of read.servers) {
      const instance = instances.get(row.server);
      const port = PORTS[row.proxy];
      if (instance === undefined || port === undefined) continue;
      const labels = { instance_name: instance, port };
      traffic.sessions.set(labels, row.sessions);
      traffic.sessionsTotal.inc(labels, row.sessionsTotal);
      traffic.connectionErrors.inc(labels, row.connectionErrors);
      traffic.responseErrors.inc(labels, row.responseErrors);
      if (/^(UP|DOWN)/.test(row.status)) traffic.up.set(labels, row.status.startsWith('UP') ? 1 : 0);
      traffic.statusChanged.set(labels, Math.round(now - row.secondsSinceStatusChange));
      traffic.bytesIn.inc(labels, row.bytesIn);
      traffic.bytesOut.inc(labels, row.bytesOut);
      traffic.queued.set(labels, row.queued);
    }
    haproxyConnections.set(read.connections);
    haproxyConnectionsTotal.inc(read.connectionsTotal);
    haproxyConnectionRate.set(read.connectionRate);
  };

  let scrapes: Promise<unknown> = Promise.resolve();
  let server: Server | undefined;
  const respond = async (path: string): Promise<[number, string, string]> => {
    const snapshot = source();
    if (path === '/healthz') {
      const verdict = health(snapshot, maxStaleMs);
      return [verdict.healthy ? 200 : 503, 'text/plain; charset=utf-8', verdict.reason + '\n'];
    }
    if (path === '/metrics') {
      // One scrape at a time: each resets and sets the traffic series.
      const text = scrapes.then(async () => {
        await readTrafficMetrics(snapshot);
        return registry.metrics();
      });
      scrapes = text.catch(() => '');
      return [200, registry.contentType, await text];
    }
    if (path === '/state') return [200, 'application/json', JSON.stringify(stateJson(snapshot, maxStaleMs), null, 2) + '\n'];
    return [404, 'text/plain; charset=utf-8', 'not found: try /healthz, /metrics or /state\n'];
  };

  return {
    changeApplied: (path, seconds) => {
      applied.inc({ path });
      convergence.observe(seconds);
    },
    problemsFound: (count) => validationFailures.inc(count),
    listen: (host, port) =>
      new Promise((resolve, reject) => {
        server = createServer((request, response) => {
          if (request.method !== 'GET' && request.method !== 'HEAD') {
            response.writeHead(405, { allow: 'GET, HEAD' }).end();
            return;
          }
          respond(new URL(request.url ?? '/', 'http://status').pathname).then(
            ([code, type, body]) => response.writeHead(code, { 'content-type': type, 'cache-control': 'no-store' }).end(request.method === 'HEAD' ? undefined : body),
            (err: Error) => response.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
          );
        });
        server.once('error', reject);
        server.listen(port, host, () => resolve());
      }),
    close: () => new Promise((resolve) => (server ? server.close(() => resolve()) : resolve())),
  };
}

function stateJson(snapshot: StatusSnapshot, maxStaleMs: number) {
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
    problems: snapshot.problems,
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
    },
    haproxy: {
      pid: snapshot.haproxy.masterPid ?? null,
      workers: snapshot.haproxy.workers,
      current: snapshot.haproxy.current,
      runtimeChanges: snapshot.haproxy.applied.runtime,
      reloads: snapshot.haproxy.applied.reload,
      refused: snapshot.haproxy.refused,
      fencesUnconfirmed: snapshot.haproxy.fencesUnconfirmed,
      failing: snapshot.haproxy.failing ?? null,
    },
  };
}
