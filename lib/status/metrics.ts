// /metrics: the control plane's figures, read from the snapshot at scrape time, and per instance what the traffic
// does, read from haproxy's `show stat` at scrape time, and what the hold did (`ambassador hold`); each declared
// once in a table below (prom-client).

import { getHeapStatistics } from 'node:v8';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, type Metric } from 'prom-client';
import type { ApplyPath, HoldCounts, ServerTraffic, Traffic } from '../haproxy/driver.ts';
import { HOLD_BUCKETS } from '../render/hold.ts';
import { PROXY_NAME, REPLICA_PROXY_NAME } from '../render/render.ts';
import { health, type StatusSnapshot } from './health.ts';

// Which port a proxy of ours serves, as a label value.
const PORTS: Record<string, string> = { [PROXY_NAME]: 'primary', [REPLICA_PROXY_NAME]: 'replica' };

// The control plane's metrics, read from the snapshot at scrape time: counters that mirror a count kept
// elsewhere, gauges, and labelled series (each sample its labels and value).
type Sample = [labels: Record<string, string>, value: number];
interface SnapshotMetric {
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  labels?: string[];
  read(snapshot: StatusSnapshot, maxStaleMs: number): number | Sample[];
}

const since = (at: number | undefined, otherwise: number) => (at === undefined ? otherwise : (Date.now() - at) / 1000);

const SNAPSHOT_METRICS: SnapshotMetric[] = [
  { type: 'counter', name: 'ambassador_etcd_events_total', help: 'etcd changes (key puts and deletes) seen under the prefix', read: (s) => s.etcd.events },
  { type: 'counter', name: 'ambassador_etcd_snapshots_total', help: 'full reads of the prefix: the first, and one after each resync (an untrusted mirror, a compaction past the revision held, SIGHUP)', read: (s) => s.etcd.snapshots },
  { type: 'counter', name: 'ambassador_etcd_resumes_total', help: 'watches started again from the revision held, with no snapshot (after a disconnect or a change of member)', read: (s) => s.etcd.resumes },
  {
    type: 'counter',
    name: 'ambassador_etcd_resyncs_total',
    help: 'fresh snapshots taken, by cause: order (the watch broke its order), missed (a routing key differed from etcd), listing (the listing of the prefix differed), etcd-behind, compacted, requested (SIGHUP)',
    labels: ['cause'],
    read: (s) => Object.entries(s.etcd.resyncs).map(([cause, count]) => [{ cause }, count]),
  },
  { type: 'counter', name: 'ambassador_etcd_checks_total', help: 'checks of the routing keys against etcd that were answered (one per --etcd-check-interval)', read: (s) => s.etcd.checks },
  { type: 'counter', name: 'ambassador_etcd_listings_total', help: 'listings of the prefix compared with the mirror', read: (s) => s.etcd.listings },
  { type: 'counter', name: 'ambassador_etcd_watches_lost_total', help: 'etcd watches lost after working (disconnect, member restarted, auth)', read: (s) => s.etcd.watchesLost },
  { type: 'counter', name: 'ambassador_etcd_members_left_total', help: 'etcd members left because they could not confirm the state (no leader, paused, cut off) or their watch stopped delivering', read: (s) => s.etcd.membersLeft },
  { type: 'counter', name: 'ambassador_etcd_watches_behind_total', help: 'etcd watches a check found stalled (progress requests unanswered), then resumed on the next member', read: (s) => s.etcd.watchesBehind },
  {
    type: 'gauge',
    name: 'ambassador_etcd_watch_progress',
    help: "1 for what the watched member's progress replies prove: ordered (every change up to their revision delivered), alive (the stream works: etcd before 3.4.25 / 3.5.8), none (no replies: an etcd gRPC proxy)",
    labels: ['proves'],
    read: (s) => (s.etcd.progress === undefined ? [] : [[{ proves: s.etcd.progress }, 1]]),
  },
  { type: 'gauge', name: 'ambassador_etcd_connected', help: '1 while the etcd watch is live', read: (s) => (s.etcd.connected ? 1 : 0) },
  { type: 'gauge', name: 'ambassador_etcd_seconds_since_confirmed', help: 'seconds since the state was last confirmed current against etcd (a snapshot, or a check that agreed; -1 if never)', read: (s) => since(s.etcd.confirmedAt, -1) },
  {
    type: 'gauge',
    name: 'ambassador_etcd_member',
    help: 'per etcd member: 1 for the one watched, 0 for one that could not serve when last tried (the reason is in /state), labelled by its URL',
    labels: ['member'],
    read: ({ etcd }) => [...Object.keys(etcd.memberProblems).filter((member) => member !== etcd.member).map((member): Sample => [{ member }, 0]), ...(etcd.member === undefined ? [] : [[{ member: etcd.member }, 1] as Sample])],
  },
  { type: 'gauge', name: 'ambassador_etcd_revision', help: 'etcd revision of the newest state', read: (s) => Number(s.revision) },
  { type: 'gauge', name: 'ambassador_seconds_since_etcd_event', help: 'seconds since the last change seen under the prefix (-1 if none yet)', read: (s) => since(s.etcd.lastEventAt, -1) },
  { type: 'gauge', name: 'ambassador_seconds_since_sync', help: 'seconds the state has not been known current (0 while the etcd watch is live and confirmed)', read: (s) => since(s.etcd.staleSince, 0) },
  { type: 'counter', name: 'ambassador_haproxy_refused_total', help: 'configs haproxy refused (check or load failed); the previous one kept serving', read: (s) => s.haproxy.refused },
  { type: 'counter', name: 'ambassador_apply_failures_total', help: 'tries at applying a change that failed in a way worth retrying (a timeout, a spawn error, a full disk)', read: (s) => s.haproxy.failures },
  { type: 'counter', name: 'ambassador_runtime_fallbacks_total', help: 'changes where a runtime command failed and a reload was done instead', read: (s) => s.haproxy.runtimeFallbacks },
  { type: 'counter', name: 'ambassador_fences_unconfirmed_total', help: 'failovers where haproxy still showed sessions on the old master 1 s after the fence, and the new master was opened anyway', read: (s) => s.haproxy.fencesUnconfirmed },
  { type: 'counter', name: 'ambassador_fences_frozen_total', help: 'failovers where haproxy froze streams it shut (an haproxy 2.7-3.1 bug), ended by a reload and a stop of the worker holding them before the new master opened', read: (s) => s.haproxy.fencesFrozen },
  { type: 'gauge', name: 'ambassador_master_blocked', help: '1 while the master the newest etcd state names cannot be opened in haproxy (the reason is in /healthz and the log)', read: (s) => (s.haproxy.masterBlocked === undefined ? 0 : 1) },
  { type: 'gauge', name: 'ambassador_config_file_behind', help: '1 while the config file does not describe what haproxy runs (it cannot be written: a full disk, a read-only dir); written again every second', read: (s) => (s.haproxy.configFileBehind === undefined ? 0 : 1) },
  { type: 'counter', name: 'ambassador_runtime_dir_restored_total', help: 'times the runtime dir was found deleted or changed while running, and made right again', read: (s) => s.haproxy.runtimeDirRestored },
  { type: 'gauge', name: 'ambassador_haproxy_workers', help: 'haproxy worker processes (more than 1 while replaced ones finish their sessions)', read: (s) => s.haproxy.workers },
  { type: 'gauge', name: 'ambassador_haproxy_current', help: '1 when haproxy runs the config for the newest etcd state', read: (s) => (s.haproxy.current ? 1 : 0) },
  { type: 'gauge', name: 'ambassador_healthy', help: '1 when /healthz answers 200', read: (s, maxStaleMs) => (health(s, maxStaleMs).healthy ? 1 : 0) },
  { type: 'gauge', name: 'ambassador_heap_limit_bytes', help: "V8's heap limit: the executable's baked-in --max-old-space-size and young generation, unless --node-options changed them", read: () => getHeapStatistics().heap_size_limit },
  { type: 'gauge', name: 'ambassador_max_stale_seconds', help: 'the --max-stale setting: how long the state may be stale or unapplied before /healthz says 503', read: (_, maxStaleMs) => maxStaleMs / 1000 },
  { type: 'gauge', name: 'ambassador_unapplied_seconds', help: 'seconds the newest etcd state has not been live in haproxy (0 while it is)', read: (s) => since(s.haproxy.notLiveSince, 0) },
  { type: 'gauge', name: 'ambassador_instances_known', help: 'instances with an address key', read: (s) => s.servers.length + s.instancesRejected },
  { type: 'gauge', name: 'ambassador_instances_routed', help: 'instances haproxy sends connections to on --port', read: (s) => s.servers.filter((server) => server.enabled).length },
  { type: 'gauge', name: 'ambassador_replicas_routed', help: 'instances haproxy sends connections to on --replica-port (0 without one)', read: (s) => (s.replicas ?? []).filter((server) => server.enabled).length },
  { type: 'gauge', name: 'ambassador_instances_rejected', help: 'instances not routed because a value failed validation', read: (s) => s.instancesRejected },
  { type: 'gauge', name: 'ambassador_problems', help: 'problems in the registry now (bad values, missing or unknown master)', read: (s) => s.problems.filter((problem) => !problem.notice).length },
  {
    type: 'gauge',
    name: 'ambassador_master',
    help: '1 for the instance named as master (with --master-only), labelled by its name',
    labels: ['instance_name'],
    read: (s) => (s.masterOnly && s.master !== undefined ? [[{ instance_name: s.master }, 1]] : []),
  },
];

// The data plane, set from one read of haproxy per scrape, per instance of the validated registry and port; a
// series for an instance that is gone is dropped, not left at its last value. Labelled `instance_name`, not
// `instance`: Prometheus gives every scraped series that label itself (the target's address).
const TRAFFIC_METRICS: { type: 'counter' | 'gauge'; name: string; help: string; read(row: ServerTraffic, now: number): number | undefined }[] = [
  { type: 'gauge', name: 'ambassador_backend_sessions', help: 'sessions open to the instance through haproxy now', read: (row) => row.sessions },
  { type: 'counter', name: 'ambassador_backend_sessions_total', help: 'sessions haproxy has sent to the instance (since the last reload)', read: (row) => row.sessionsTotal },
  { type: 'counter', name: 'ambassador_backend_connection_errors_total', help: 'connections to the instance that failed', read: (row) => row.connectionErrors },
  { type: 'counter', name: 'ambassador_backend_response_errors_total', help: 'sessions to the instance that ended in an error (aborted, timed out)', read: (row) => row.responseErrors },
  { type: 'gauge', name: 'ambassador_backend_up', help: 'health check of the instance: 1 up, 0 down (no series while it is in maintenance: a master-only standby)', read: (row) => (/^(UP|DOWN)/.test(row.status) ? (row.status.startsWith('UP') ? 1 : 0) : undefined) },
  { type: 'gauge', name: 'ambassador_backend_status_changed_timestamp_seconds', help: 'when the instance last changed status (up, down, maintenance), as a Unix time', read: (row, now) => Math.round(now - row.secondsSinceStatusChange) },
  { type: 'counter', name: 'ambassador_backend_received_bytes_total', help: 'bytes clients sent to the instance', read: (row) => row.bytesIn },
  { type: 'counter', name: 'ambassador_backend_sent_bytes_total', help: 'bytes the instance sent to clients', read: (row) => row.bytesOut },
  { type: 'gauge', name: 'ambassador_backend_queued_connections', help: 'connections waiting for the instance', read: (row) => row.queued },
];
const HAPROXY_METRICS: { type: 'counter' | 'gauge'; name: string; help: string; read(traffic: Traffic): number }[] = [
  { type: 'gauge', name: 'ambassador_haproxy_connections', help: 'connections haproxy holds now', read: (t) => t.connections },
  { type: 'counter', name: 'ambassador_haproxy_connections_total', help: 'connections haproxy has accepted (since its start)', read: (t) => t.connectionsTotal },
  { type: 'gauge', name: 'ambassador_haproxy_connections_per_second', help: 'connections haproxy accepted over the last second', read: (t) => t.connectionRate },
];

// The hold, per port, from haproxy's counts at scrape time (no series while nothing was held there).
const HOLD_METRICS: { type: 'counter' | 'gauge'; name: string; help: string; read(counts: HoldCounts): number }[] = [
  { type: 'gauge', name: 'ambassador_held_connections', help: 'new connections held now, waiting for a routable master (or replica)', read: (c) => c.now },
  { type: 'counter', name: 'ambassador_held_connections_total', help: 'new connections held because no master (or replica) was routable when they came', read: (c) => c.total },
  { type: 'counter', name: 'ambassador_hold_timeouts_total', help: 'held connections closed at the bound (--hold) with still no master (or replica) routable', read: (c) => c.timeouts },
  { type: 'counter', name: 'ambassador_hold_abandoned_total', help: 'held connections their client closed while they waited', read: (c) => c.abandoned },
];
const HOLD_SECONDS = { name: 'ambassador_hold_seconds', help: 'how long each held connection waited: until a master (or replica) was routable, or the bound' };

// The hold times as a Prometheus histogram, from the cumulative bucket counts haproxy keeps (prom-client's
// Histogram only observes values one at a time).
function holdHistogram(read: () => ReadonlyMap<string, HoldCounts> | undefined): Metric {
  const samples = () => {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const [proxy, counts] of read() ?? []) {
      const port = PORTS[proxy];
      if (port === undefined) continue;
      const count = counts.released + counts.timeouts;
      HOLD_BUCKETS.forEach((le, i) => values.push({ metricName: `${HOLD_SECONDS.name}_bucket`, labels: { port, le }, value: counts.buckets[i] ?? 0 }));
      values.push({ metricName: `${HOLD_SECONDS.name}_bucket`, labels: { port, le: '+Inf' }, value: count });
      values.push({ metricName: `${HOLD_SECONDS.name}_sum`, labels: { port }, value: counts.sum });
      values.push({ metricName: `${HOLD_SECONDS.name}_count`, labels: { port }, value: count });
    }
    return values;
  };
  const metric = { ...HOLD_SECONDS, type: 'histogram', aggregator: 'sum', get: async () => ({ ...HOLD_SECONDS, type: 'histogram', aggregator: 'sum', values: samples() }), reset: () => {} };
  return metric as unknown as Metric;
}

// A counter or a gauge set to what `value` reads, labelled or not.
function setMetric(metric: Counter | Gauge, value: number | Sample[]): void {
  metric.reset();
  const samples: Sample[] = typeof value === 'number' ? [[{}, value]] : value;
  for (const [labels, n] of samples) {
    if (metric instanceof Counter) metric.inc(labels, n);
    else metric.set(labels, n);
  }
}

export function createMetrics(source: () => StatusSnapshot, maxStaleMs: number, readTraffic: () => Promise<Traffic | undefined>) {
  const registry = new Registry();
  // process_resident_memory_bytes, CPU, open fds, event loop lag: ambassador's own.
  collectDefaultMetrics({ register: registry });
  const make = (type: 'counter' | 'gauge', name: string, help: string, labelNames: readonly string[], collect?: (metric: Counter | Gauge) => void) => {
    const settings = { name, help, labelNames, registers: [registry], ...(collect ? { collect(this: Counter | Gauge) { collect(this); } } : {}) };
    return type === 'counter' ? new Counter(settings) : new Gauge(settings);
  };
  for (const metric of SNAPSHOT_METRICS) make(metric.type, metric.name, metric.help, metric.labels ?? [], (m) => setMetric(m, metric.read(source(), maxStaleMs)));
  const applied = new Counter({ name: 'ambassador_changes_applied_total', help: 'changes applied to haproxy, by path', labelNames: ['path'], registers: [registry] });
  for (const path of ['start', 'runtime', 'reload']) applied.inc({ path }, 0);
  const convergence = new Histogram({
    name: 'ambassador_convergence_seconds',
    help: 'from an etcd change seen to haproxy running it',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  const validationFailures = new Counter({ name: 'ambassador_validation_failures_total', help: 'problems found in the registry (each counted once, when it appears)', registers: [registry] });
  const traffic = TRAFFIC_METRICS.map((metric) => ({ metric, series: make(metric.type, metric.name, metric.help, ['instance_name', 'port']) }));
  const haproxy = HAPROXY_METRICS.map((metric) => ({ metric, series: make(metric.type, metric.name, metric.help, []) }));
  const hold = HOLD_METRICS.map((metric) => ({ metric, series: make(metric.type, metric.name, metric.help, ['port']) }));
  let holdRead: ReadonlyMap<string, HoldCounts> | undefined;
  registry.registerMetric(holdHistogram(() => holdRead));
  const statsUp = new Gauge({ name: 'ambassador_haproxy_stats_up', help: '1 when haproxy answered for the traffic figures in this scrape (within 1 s)', registers: [registry] });

  const readTrafficMetrics = async (snapshot: StatusSnapshot) => {
    for (const { series } of [...traffic, ...haproxy, ...hold]) series.reset();
    const read = await readTraffic();
    statsUp.set(read ? 1 : 0);
    holdRead = read?.hold;
    if (!read) return;
    const instances = new Map([...snapshot.servers, ...(snapshot.replicas ?? [])].map((server) => [server.server, server.name]));
    const now = Date.now() / 1000;
    for (const row of read.servers) {
      const instance = instances.get(row.server);
      const port = PORTS[row.proxy];
      if (instance === undefined || port === undefined) continue;
      for (const { metric, series } of traffic) {
        const value = metric.read(row, now);
        if (value === undefined) continue;
        if (series instanceof Counter) series.inc({ instance_name: instance, port }, value);
        else series.set({ instance_name: instance, port }, value);
      }
    }
    for (const { metric, series } of haproxy) setMetric(series, metric.read(read));
    for (const [proxy, counts] of read.hold ?? []) {
      const port = PORTS[proxy];
      if (port === undefined) continue;
      for (const { metric, series } of hold) {
        if (series instanceof Counter) series.inc({ port }, metric.read(counts));
        else series.set({ port }, metric.read(counts));
      }
    }
  };

  // One scrape at a time: each resets and sets the traffic series.
  let scrapes: Promise<unknown> = Promise.resolve();
  return {
    contentType: registry.contentType,
    // The text of a scrape, the traffic read from haproxy for it.
    scrape: (snapshot: StatusSnapshot): Promise<string> => {
      const text = scrapes.then(async () => {
        await readTrafficMetrics(snapshot);
        return registry.metrics();
      });
      // The next scrape waits for this one, whatever became of it (this one's failure is its own answer's).
      scrapes = text.catch(() => '');
      return text;
    },
    changeApplied: (path: ApplyPath, seconds: number) => {
      applied.inc({ path });
      convergence.observe(seconds);
    },
    problemsFound: (count: number) => validationFailures.inc(count),
  };
}
