// The health verdict: healthy, stale within bounds and past them, haproxy down, a config refused, a master that
// cannot be opened, a config file that lags. Pure.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { health, type StatusSnapshot } from '../../lib/status/health.ts';

const snapshot = (over: Partial<StatusSnapshot> = {}): StatusSnapshot => ({
  version: 'x',
  prefix: '/p',
  masterOnly: true,
  revision: 7n,
  etcd: { connected: true, member: 'http://127.0.0.1:2379', staleSince: undefined, confirmedAt: Date.now(), lastEventAt: undefined, events: 0, snapshots: 1, resumes: 0, resyncs: { order: 0, missed: 0, listing: 0, 'etcd-behind': 0, compacted: 0, requested: 0 }, checks: 0, listings: 0, progress: 'ordered', watchesLost: 0, membersLeft: 0, watchesBehind: 0, memberProblems: {} },
  haproxy: { masterPid: 10, workers: 1, current: true, busy: false, refusedNewest: false, failing: undefined, notLiveSince: undefined, applied: { start: 1, runtime: 0, reload: 0 }, refused: 0, failures: 0, runtimeFallbacks: 0, fencesUnconfirmed: 0, fencesFrozen: 0, masterBlocked: undefined, runtimeDirRestored: 0, configFileBehind: undefined },
  servers: [],
  replicas: undefined,
  instancesRejected: 0,
  master: undefined,
  problems: [],
  lastChange: undefined,
  ...over,
});

test('health: healthy, stale within bounds, stale too long, haproxy down, config refused', () => {
  const now = 1_000_000;
  assert.ok(health(snapshot(), 60_000, now).healthy);
  const stale = (ms: number) => snapshot({ etcd: { ...snapshot().etcd, connected: false, staleSince: now - ms } });
  assert.ok(health(stale(59_000), 60_000, now).healthy);
  assert.equal(health(stale(61_000), 60_000, now), { healthy: false, reason: 'the etcd state has not been confirmed current for 61 s; serving revision 7' });
  const unserved = snapshot({ etcd: { ...stale(61_000).etcd, memberProblems: { 'http://10.0.0.5:2379': 'no leader' } } });
  assert.equal(health(unserved, 60_000, now).reason, 'the etcd state has not been confirmed current for 61 s (http://10.0.0.5:2379: no leader); serving revision 7');
  assert.not.ok(health(snapshot({ haproxy: { ...snapshot().haproxy, masterPid: undefined } }), 60_000, now).healthy);
  assert.match(health(snapshot({ haproxy: { ...snapshot().haproxy, refusedNewest: true } }), 60_000, now).reason, 'refused');
});

test('a master that cannot be opened is unhealthy, with the reason; a config file that lags is said, and healthy', () => {
  const now = 1_000_000;
  const blocked = snapshot({ haproxy: { ...snapshot().haproxy, masterBlocked: '3 (10.0.0.3:5432) could not be opened at run time' } });
  assert.equal(health(blocked, 60_000, now), { healthy: false, reason: 'the master cannot be opened: 3 (10.0.0.3:5432) could not be opened at run time' });
  const lagging = health(snapshot({ haproxy: { ...snapshot().haproxy, configFileBehind: 'cannot write /run/a/haproxy.cfg: ENOSPC' } }), 60_000, now);
  assert.ok(lagging.healthy);
  assert.match(lagging.reason, 'the config file lags what is live (cannot write /run/a/haproxy.cfg: ENOSPC)');
});

test.run();
