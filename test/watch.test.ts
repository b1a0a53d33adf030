// The watch loop with a fake etcd connection at its boundary: revision tracking, resyncs, retries.

import * as assert from 'uvu/assert';
import { createLogger } from '../lib/log.ts';
import { applyWatchEvents, judgeCheck, watchPrefix, type Connect, type EtcdConnection, type PrefixCheck, type WatchEvent } from '../lib/watch.ts';
import { limitedSuite, within } from './helpers/limits.ts';

const test = limitedSuite('watch');

const put = (key: string, value: string, modRevision: number): WatchEvent => ({ type: 'put', key, value, modRevision: BigInt(modRevision) });
const del = (key: string, modRevision: number): WatchEvent => ({ type: 'delete', key, value: '', modRevision: BigInt(modRevision) });

test('applies only events newer than the revision held, and moves it', () => {
  const mirror = new Map([['/p/a', '1']]);
  const result = applyWatchEvents(mirror, 5n, [put('/p/a', 'old', 4), put('/p/a', '2', 6), put('/p/b', '3', 7), del('/p/a', 8), put('/p/b', 'stale', 7)]);
  assert.equal(result, { revision: 8n, keys: ['/p/a', '/p/b', '/p/a'] });
  assert.equal([...mirror], [['/p/b', '3']]);
});

test('events already in the snapshot change nothing', () => {
  const mirror = new Map([['/p/a', '1']]);
  assert.equal(applyWatchEvents(mirror, 9n, [put('/p/a', 'x', 9), del('/p/a', 3)]), { revision: 9n, keys: [] });
  assert.equal([...mirror], [['/p/a', '1']]);
});

// A fake etcd: each connection takes its snapshot, its watch and its checks from the scripts the test gives,
// in turn, and says which member it was made for.
interface Script {
  snapshot?: { mirror: [string, string][]; revision: number } | Error;
  // Events to deliver once watching, then how the watch ends ('' = it stays up until interrupted).
  events?: WatchEvent[];
  ends?: string;
  // What each check answers (the last one repeats); an Error: the member does not answer.
  checks?: (PrefixCheck | Error)[];
  diagnosis?: string;
}

function fakeEtcd(scripts: Script[], fallback: Script) {
  const connections: { member: string; fromRevision?: bigint; at: number; checks: number }[] = [];
  const connect: Connect = async (_settings, member) => {
    const script = scripts.shift() ?? fallback;
    const record: (typeof connections)[number] = { member: member.url, at: performance.now(), checks: 0 };
    connections.push(record);
    const snapshot = script.snapshot;
    if (snapshot instanceof Error || snapshot === undefined) throw snapshot ?? new Error('no snapshot scripted');
    const connection: EtcdConnection = {
      member: member.url,
      snapshot: async () => ({ mirror: new Map(snapshot.mirror), revision: BigInt(snapshot.revision) }),
      follow: async (fromRevision, onEvents, interrupted) => {
        record.fromRevision = fromRevision;
        if (script.events) onEvents(script.events);
        return script.ends ? script.ends : interrupted;
      },
      check: async () => {
        const checks = script.checks ?? [{ revision: BigInt(snapshot.revision), keys: snapshot.mirror.length, newer: 0 }];
        const answer = checks[Math.min(record.checks++, checks.length - 1)]!;
        if (answer instanceof Error) throw answer;
        return answer;
      },
      diagnose: async () => script.diagnosis ?? 'no leader',
      close: () => {},
    };
    return connection;
  };
  return { connect, connections };
}

const settings = (endpoints = ['http://127.0.0.1:9'], checkEveryMs = 0) => ({ endpoints, prefix: '/p', checkEveryMs });

const quiet = () => {
  const lines: string[] = [];
  return { lines, log: createLogger({ format: 'text', level: 'debug', write: (line) => lines.push(line) }) };
};

// Counts the watch's change notifications and keeps the keys each named; until(n) waits for the nth.
function changes() {
  let count = 0;
  let waiting: (() => void)[] = [];
  const keys: (readonly string[] | undefined)[] = [];
  return {
    keys,
    notify: (changed?: readonly string[]) => {
      keys.push(changed);
      count++;
      for (const wake of waiting.splice(0)) wake();
    },
    until: (n: number) =>
      within(
        new Promise<void>((resolve) => {
          const check = () => (count >= n ? resolve() : waiting.push(check));
          check();
        }),
        3000,
        `change ${n}`,
      ),
  };
}

test('resumes from its own revision after a disconnect: a fresh snapshot, then watching from the one after it', async () => {
  const etcd = fakeEtcd(
    [
      { snapshot: { mirror: [['/p/master', '1']], revision: 10 }, events: [put('/p/master', '2', 11)], ends: 'disconnected (reset)' },
      { snapshot: { mirror: [['/p/master', '3']], revision: 20 } },
    ],
    { snapshot: new Error('unexpected') },
  );
  const { log, lines } = quiet();
  const changed = changes();
  const watch = watchPrefix(settings(), log, changed.notify, etcd.connect);
  try {
    await changed.until(3);
    assert.equal(changed.keys, [undefined, ['/p/master'], undefined], 'a snapshot may change anything; an event names its key');
    assert.equal([...watch.state().mirror], [['/p/master', '3']]);
    assert.is(watch.state().revision, 20n);
    assert.equal(etcd.connections.map((c) => c.fromRevision), [11n, 21n]);
    assert.is(watch.stats().watchesLost, 1);
    assert.ok(lines.some((line) => line.includes('disconnected (reset); keeping the last state and resyncing')));
  } finally {
    await within(watch.stop(), 3000, 'stop');
  }
});

test('a watch that dies right after connecting backs off instead of spinning, and says so once', async () => {
  const etcd = fakeEtcd([], { snapshot: { mirror: [], revision: 5 }, ends: 'watch failed (canceled)' });
  const { log, lines } = quiet();
  const watch = watchPrefix(settings(), log, () => {}, etcd.connect);
  await new Promise((resolve) => setTimeout(resolve, 3000));
  await within(watch.stop(), 3000, 'stop');
  // Backoff 0.1, 0.2, 0.4, 0.8, 1.6 s (±20 %): at most 6 connections in 3 s, where a reset per snapshot gives ~30.
  assert.ok(etcd.connections.length <= 6, `${etcd.connections.length} connections`);
  assert.ok(etcd.connections.length >= 3, `${etcd.connections.length} connections`);
  assert.is(lines.filter((line) => line.includes('watch failed (canceled)')).length, 1, lines.join('\n'));
});

test('a failure to connect (a credential file gone bad) is retried, never thrown', async () => {
  const etcd = fakeEtcd(
    [{ snapshot: new Error('--etcd-ca=/etc/ca.pem: no such file') }, { snapshot: new Error('--etcd-ca=/etc/ca.pem: no such file') }],
    { snapshot: { mirror: [['/p/master', '1']], revision: 3 } },
  );
  const { log, lines } = quiet();
  const changed = changes();
  const watch = watchPrefix(settings(), log, changed.notify, etcd.connect);
  try {
    await changed.until(1);
    assert.is(watch.state().revision, 3n);
    assert.is(lines.filter((line) => line.includes('no such file')).length, 1, 'said once');
    assert.ok(lines.some((line) => line.includes('etcd: reachable again')));
  } finally {
    await within(watch.stop(), 3000, 'stop');
  }
});

test('a resync takes a fresh snapshot at once', async () => {
  const etcd = fakeEtcd([], { snapshot: { mirror: [], revision: 7 } });
  const { log } = quiet();
  const changed = changes();
  const watch = watchPrefix(settings(), log, changed.notify, etcd.connect);
  try {
    await changed.until(1);
    watch.resync();
    await changed.until(2);
    assert.is(etcd.connections.length, 2);
    assert.is(watch.stats().snapshots, 2);
    assert.is(watch.stats().watchesLost, 0);
  } finally {
    await within(watch.stop(), 3000, 'stop');
  }
});

test('judges a check: current, behind while events may be on their way, stalled when behind twice at one revision', () => {
  const held = { revision: 10n, keys: 3 };
  assert.equal(judgeCheck({ revision: 12n, keys: 3, newer: 0 }, held, undefined), { verdict: 'current' });
  assert.equal(judgeCheck({ revision: 12n, keys: 3, newer: 1 }, held, undefined), { verdict: 'behind', suspect: 10n });
  assert.equal(judgeCheck({ revision: 12n, keys: 2, newer: 0 }, held, 9n), { verdict: 'behind', suspect: 10n }, 'events came since the last check');
  assert.equal(judgeCheck({ revision: 12n, keys: 2, newer: 0 }, held, 10n), { verdict: 'stalled' }, 'a delete it never heard of');
  assert.equal(judgeCheck({ revision: 12n, keys: 3, newer: 2 }, held, 10n), { verdict: 'stalled' });
});

test('a member that cannot answer a check is left for the next, which gives a fresh snapshot', async () => {
  const etcd = fakeEtcd(
    [
      { snapshot: { mirror: [['/p/master', '1']], revision: 10 }, checks: [{ revision: 10n, keys: 1, newer: 0 }, { revision: 10n, keys: 1, newer: 0 }, new Error('deadline exceeded')], diagnosis: 'no leader' },
      { snapshot: { mirror: [['/p/master', '2']], revision: 15 } },
    ],
    { snapshot: new Error('unexpected') },
  );
  const { log, lines } = quiet();
  const changed = changes();
  const watch = watchPrefix(settings(['http://10.0.0.1:2379', 'http://10.0.0.2:2379'], 100), log, changed.notify, etcd.connect);
  try {
    await changed.until(2);
    assert.is(watch.state().revision, 15n);
    assert.not.equal(etcd.connections[0]!.member, etcd.connections[1]!.member, 'on another member');
    const left = lines.filter((line) => line.includes('leaving member'));
    assert.is(left.length, 1, lines.join('\n'));
    assert.match(left[0]!, `leaving member ${etcd.connections[0]!.member}: no linearizable read within 1000 ms: no leader`);
    assert.is(watch.stats().membersLeft, 1);
    assert.is(watch.stats().member, etcd.connections[1]!.member);
  } finally {
    await within(watch.stop(), 3000, 'stop');
  }
});

test('a watch that stays silent while etcd moved on is caught by the checks and dropped', async () => {
  const etcd = fakeEtcd(
    [{ snapshot: { mirror: [['/p/master', '1']], revision: 10 }, checks: [{ revision: 11n, keys: 1, newer: 1 }] }, { snapshot: { mirror: [['/p/master', '2']], revision: 11 } }],
    { snapshot: new Error('unexpected') },
  );
  const { log, lines } = quiet();
  const changed = changes();
  const watch = watchPrefix(settings(['http://10.0.0.1:2379'], 100), log, changed.notify, etcd.connect);
  try {
    await changed.until(2);
    assert.is(watch.state().revision, 11n);
    assert.ok(lines.some((line) => line.includes('the watch fell behind etcd')), lines.join('\n'));
    assert.is(watch.stats().watchesBehind, 1);
    assert.is(etcd.connections[0]!.checks, 3, 'the pre-check, then behind twice at one revision');
  } finally {
    await within(watch.stop(), 3000, 'stop');
  }
});

test('when no member can serve: one warning naming each member and why, the last state kept, stale from its last confirmation', async () => {
  const down = (diagnosis: string): Script => ({ snapshot: { mirror: [], revision: 1 }, checks: [new Error('deadline exceeded')], diagnosis });
  const etcd = fakeEtcd(
    [{ snapshot: { mirror: [['/p/master', '1']], revision: 10 }, checks: [{ revision: 10n, keys: 1, newer: 0 }, new Error('deadline exceeded')] }, down('not answering'), down('no leader')],
    down('no leader'),
  );
  const { log, lines } = quiet();
  const changed = changes();
  const watch = watchPrefix(settings(['http://10.0.0.1:2379', 'http://10.0.0.2:2379'], 100), log, changed.notify, etcd.connect);
  try {
    await changed.until(1);
    const confirmedAt = await within(
      (async () => {
        for (;;) {
          const stats = watch.stats();
          if (stats.staleSince !== undefined && Object.keys(stats.memberProblems).length === 2) return stats.confirmedAt;
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      })(),
      3000,
      'every member given up',
    );
    await within(
      (async () => {
        while (!lines.some((line) => line.includes('no member can serve'))) await new Promise((resolve) => setTimeout(resolve, 20));
      })(),
      3000,
      'the warning',
    );
    const warning = lines.filter((line) => line.includes('no member can serve'));
    assert.is(warning.length, 1, lines.join('\n'));
    assert.match(warning[0]!, /http:\/\/10\.0\.0\.\d:2379 \((no leader|not answering)/);
    assert.match(warning[0]!, 'keeping the last state (revision 10)');
    assert.is(watch.stats().staleSince, confirmedAt, 'stale since the last confirmation, not since the trouble was seen');
    assert.equal([...watch.state().mirror], [['/p/master', '1']]);
  } finally {
    await within(watch.stop(), 3000, 'stop');
  }
});

test.run();
