// The watch loop against a fake etcd at its boundary (lib/etcd/connection.ts's EtcdConnection): a store of its own, whose
// changes reach the watch stream unless a test loses or reorders them; members that fail on demand. Then the
// loop's two decisions, as tables: what a check found, and what to do after a turn.

import * as assert from 'uvu/assert';
import type { Connect, EtcdConnection, WatchEnd, WatchMessage, WatchStream } from '../../lib/etcd/connection.ts';
import { createLogger } from '../../lib/common/log.ts';
import type { KeyState, WatchEvent } from '../../lib/etcd/mirror.ts';
import { afterTurn, judgeCheck, watchPrefix, type TurnEnding, type WatchSettings } from '../../lib/etcd/watch.ts';
import { limitedSuite, within } from '../../harness/limits.ts';

const test = limitedSuite('watch');

// A fake etcd cluster: one store, and per connection the behaviour a test asks for.
interface MemberBehaviour {
  version: string;
  // Reads fail (no leader, paused).
  readsFail: boolean;
  // The stream answers progress requests.
  answersProgress: boolean;
}

function fakeEtcd(behaviour: Partial<MemberBehaviour> = {}) {
  const store = new Map<string, KeyState>();
  let revision = 1n;
  let compactedTo = 0n;
  const members = new Map<string, MemberBehaviour>();
  const memberOf = (url: string) => members.get(url) ?? members.set(url, { version: '3.5.30', readsFail: false, answersProgress: true, ...behaviour }).get(url)!;
  const streams = new Set<{ url: string; from: bigint; send: (message: WatchMessage) => void; end: (how: WatchEnd) => void }>();
  const record = { connections: [] as string[], watches: [] as { url: string; from: bigint }[], snapshots: 0, listings: 0 };

  const connect: Connect = async (_settings, member) => {
    record.connections.push(member.url);
    const own = memberOf(member.url);
    const connection: EtcdConnection = {
      member: member.url,
      version: async () => own.version,
      snapshot: async () => {
        record.snapshots++;
        return { entries: new Map(store), revision };
      },
      read: async (keys) => {
        if (own.readsFail) throw new Error('context deadline exceeded');
        return { revision, found: new Map(keys.flatMap((key) => (store.has(key) ? [[key, store.get(key)!] as const] : []))) };
      },
      listAt: async (at) => {
        record.listings++;
        if (at < compactedTo) return 'compacted';
        return new Map([...store].map(([key, { modRevision }]) => [key, modRevision]));
      },
      watch: async (from, onMessage) => {
        let resolve: (how: WatchEnd) => void = () => {};
        const ended = new Promise<WatchEnd>((r) => (resolve = r));
        const entry = { url: member.url, from, send: onMessage, end: (how: WatchEnd) => (streams.delete(entry), resolve(how)) };
        record.watches.push({ url: member.url, from });
        if (from < compactedTo) {
          queueMicrotask(() => entry.end({ kind: 'compacted', compactRevision: compactedTo }));
          return { requestProgress: () => {}, ended, cancel: () => {} };
        }
        streams.add(entry);
        const stream: WatchStream = {
          requestProgress: () => own.answersProgress && queueMicrotask(() => onMessage({ kind: 'progress', revision })),
          ended,
          cancel: () => entry.end({ kind: 'failed', reason: 'cancelled' }),
        };
        return stream;
      },
      diagnose: async () => 'no leader',
      close: () => {},
    };
    return connection;
  };

  // A write: the store moves on; its event goes to every stream unless `deliver` is false (a lost event).
  const write = (type: 'put' | 'delete', key: string, value = '', deliver = true): WatchEvent => {
    revision++;
    if (type === 'put') store.set(key, { value, modRevision: revision });
    else store.delete(key);
    const event: WatchEvent = { type, key, value, modRevision: revision };
    if (deliver) for (const stream of streams) stream.send({ kind: 'events', events: [event] });
    return event;
  };
  return {
    connect,
    record,
    member: memberOf,
    put: (key: string, value: string, deliver = true) => write('put', key, value, deliver),
    del: (key: string, deliver = true) => write('delete', key, '', deliver),
    // Hands events to every stream as they are, in any order.
    deliver: (events: WatchEvent[]) => {
      for (const stream of streams) stream.send({ kind: 'events', events });
    },
    endStreams: (how: WatchEnd) => {
      for (const stream of [...streams]) stream.end(how);
    },
    compact: () => (compactedTo = revision),
    rewind: (to: bigint) => (revision = to),
    revision: () => revision,
  };
}

const settings = (over: Partial<WatchSettings> = {}): WatchSettings => ({
  endpoints: ['http://10.0.0.1:2379', 'http://10.0.0.2:2379'],
  prefix: '/p',
  maxKeyBytes: 512,
  maxValueBytes: 512,
  checkEveryMs: 100,
  routingKeys: () => ['/p/master'],
  ...over,
});

const quiet = () => {
  const lines: string[] = [];
  return { lines, log: createLogger({ format: 'text', level: 'debug', write: (line) => lines.push(line) }) };
};

// `condition`, polled until it holds (within the test's bound).
async function until(condition: () => boolean, what: string, ms = 3000): Promise<void> {
  await within(
    (async () => {
      while (!condition()) await new Promise((resolve) => setTimeout(resolve, 10));
    })(),
    ms,
    what,
  );
}

async function watching(etcd: ReturnType<typeof fakeEtcd>, over: Partial<WatchSettings> = {}) {
  const { log, lines } = quiet();
  const notified: (readonly string[] | undefined)[] = [];
  const watch = watchPrefix(settings(over), log, (_state, keys) => notified.push(keys), etcd.connect, () => 0.5);
  await until(() => watch.stats().connected, 'the first snapshot');
  const master = () => watch.state().mirror.get('/p/master');
  return { watch, lines, notified, master, stop: () => within(watch.stop(), 3000, 'stop') };
}

test('a snapshot, then events as they come; a disconnect resumes from the revision held, with no second snapshot', async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  const { watch, notified, master, stop } = await watching(etcd);
  try {
    etcd.put('/p/master', 'b');
    await until(() => master() === 'b', 'the event');
    assert.equal(notified.slice(0, 2), [undefined, ['/p/master']], 'a snapshot may change anything; an event names its key');
    const held = watch.state().revision;
    etcd.endStreams({ kind: 'failed', reason: 'disconnected (reset)' });
    await until(() => etcd.record.watches.length === 2, 'a second watch');
    etcd.put('/p/master', 'c');
    await until(() => master() === 'c', 'the event after the resume');
    assert.is(etcd.record.snapshots, 1, 'resumed, not read again');
    assert.ok(etcd.record.watches[1]!.from <= held && etcd.record.watches[1]!.from >= 2n, `resumed from ${etcd.record.watches[1]!.from}, held ${held}`);
    assert.is.not(etcd.record.watches[1]!.url, etcd.record.watches[0]!.url, 'on the next member');
    assert.is(watch.stats().resumes, 1);
    assert.is(watch.stats().watchesLost, 1);
  } finally {
    await stop();
  }
});

test('an event older than one already applied breaks the stream: left at WARN, and a fresh snapshot has the change', async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  const { watch, lines, master, stop } = await watching(etcd);
  try {
    // Two changes whose responses arrive swapped: the master's change comes second.
    const demoted = etcd.put('/p/master', 'b', false);
    const other = etcd.put('/p/instances/x/port', '1', false);
    etcd.deliver([other]);
    etcd.deliver([demoted]);
    await until(() => master() === 'b', 'the master from a fresh snapshot');
    assert.ok(lines.some((line) => / WARN .*broke its order/.test(line)), lines.join('\n'));
    assert.is(watch.stats().resyncs.order, 1);
    assert.is(etcd.record.snapshots, 2);
  } finally {
    await stop();
  }
});

test('a lost change of a routing key is found by the next check and repaired by a fresh snapshot (ordered progress)', async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  const { watch, lines, master, stop } = await watching(etcd);
  try {
    etcd.put('/p/master', 'b', false);
    await until(() => master() === 'b', 'the master repaired');
    assert.ok(lines.some((line) => / WARN .*\/p\/master is at revision \d+ in etcd .*lost a change/.test(line)), lines.join('\n'));
    assert.is(watch.stats().resyncs.missed, 1);
  } finally {
    await stop();
  }
});

test('on an etcd whose progress replies are not ordered (3.4.23), a lost change is repaired after two checks', async () => {
  const etcd = fakeEtcd({ version: '3.4.23' });
  etcd.put('/p/master', 'a');
  const { watch, lines, master, stop } = await watching(etcd);
  try {
    etcd.put('/p/master', 'b', false);
    await until(() => master() === 'b', 'the master repaired');
    assert.ok(lines.some((line) => /not delivered for a whole check interval/.test(line)), lines.join('\n'));
    assert.is(watch.stats().resyncs.missed, 1);
    assert.is(watch.stats().progress, 'alive');
  } finally {
    await stop();
  }
});

test('a lost change of a key that does not route is found by the listing of the prefix', async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  const { watch, lines, stop } = await watching(etcd, { listingMinMs: 300 });
  try {
    etcd.put('/p/instances/x/private_ip', '10.0.0.9', false);
    await until(() => watch.state().mirror.get('/p/instances/x/private_ip') === '10.0.0.9', 'repaired by a snapshot');
    assert.ok(lines.some((line) => /etcd and the mirror differ in 1 key\(s\), e\.g\. \/p\/instances\/x\/private_ip/.test(line)), lines.join('\n'));
    assert.is(watch.stats().resyncs.listing, 1);
  } finally {
    await stop();
  }
});

test('a stream that stops answering progress requests is left, and the watch resumed on the next member', async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  const { watch, lines, stop } = await watching(etcd);
  try {
    await until(() => watch.stats().progress === 'ordered', 'a progress reply');
    const first = etcd.record.watches[0]!.url;
    etcd.member(first).answersProgress = false;
    await until(() => watch.stats().watchesBehind === 1, 'the stall found');
    assert.ok(lines.some((line) => new RegExp(`WARN .*leaving member ${first}: the watch stream answered none of 2 progress requests`).test(line)), lines.join('\n'));
    await until(() => watch.stats().connected && watch.stats().member !== first, 'on the next member');
    assert.is(etcd.record.snapshots, 1, 'resumed');
  } finally {
    await stop();
  }
});

test('a stream that never answers progress requests (a gRPC proxy) is confirmed by the routing keys, and said once', async () => {
  const etcd = fakeEtcd({ answersProgress: false });
  etcd.put('/p/master', 'a');
  const { watch, lines, stop } = await watching(etcd);
  try {
    await until(() => watch.stats().progress === 'none', 'said to answer none', 8000);
    const confirmed = watch.stats().confirmedAt!;
    await until(() => watch.stats().confirmedAt! > confirmed, 'confirmed again by a check');
    assert.is(lines.filter((line) => line.includes('answers no watch progress request')).length, 1);
    assert.is(watch.stats().membersLeft, 0);
  } finally {
    await stop();
  }
});

test('a member that cannot answer a check is left; the watch resumes on the next, with no snapshot', async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  const { watch, lines, master, stop } = await watching(etcd);
  try {
    const first = etcd.record.watches[0]!.url;
    etcd.member(first).readsFail = true;
    await until(() => watch.stats().membersLeft === 1, 'left');
    etcd.put('/p/master', 'b');
    await until(() => master() === 'b', 'followed on the next member');
    assert.match(lines.find((line) => line.includes('leaving member'))!, `leaving member ${first}: no linearizable read within 1000 ms: no leader`);
    assert.is(etcd.record.snapshots, 1);
  } finally {
    await stop();
  }
});

test('a watch whose revision was compacted takes a fresh snapshot', async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  const { watch, master, stop } = await watching(etcd, { endpoints: ['http://10.0.0.1:2379'] });
  try {
    etcd.member('http://10.0.0.1:2379').readsFail = true;
    await until(() => !watch.stats().connected, 'cut off');
    etcd.put('/p/master', 'b', false);
    etcd.put('/p/master', 'c', false);
    etcd.compact();
    etcd.member('http://10.0.0.1:2379').readsFail = false;
    await until(() => master() === 'c', 'the final state');
    assert.is(watch.stats().resyncs.compacted, 1);
    assert.is(etcd.record.snapshots, 2);
  } finally {
    await stop();
  }
});

test("etcd's revision behind the mirror's (a cluster restored from a backup): a fresh snapshot", async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  etcd.put('/p/master', 'b');
  const { watch, master, stop } = await watching(etcd);
  try {
    etcd.rewind(1n);
    etcd.put('/p/master', 'restored', false);
    await until(() => master() === 'restored', 'the restored state');
    assert.is(watch.stats().resyncs['etcd-behind'], 1);
  } finally {
    await stop();
  }
});

test('a resync takes a fresh snapshot at once', async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  const { watch, stop } = await watching(etcd);
  try {
    watch.resync();
    await until(() => etcd.record.snapshots === 2, 'a second snapshot');
    assert.is(watch.stats().resyncs.requested, 1);
  } finally {
    await stop();
  }
});

test('a failure to connect (a credential file gone bad) is retried and said once; when no member can serve, one warning names each', async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  const { log, lines } = quiet();
  let failing = 4;
  const connect: Connect = async (s, member) => {
    if (failing-- > 0) throw new Error(`member ${member.url}: no leader`);
    return etcd.connect(s, member);
  };
  const watch = watchPrefix(settings(), log, () => {}, connect, () => 0.5);
  try {
    await until(() => watch.stats().connected, 'connected in the end');
    const warnings = lines.filter((line) => line.includes('no member can serve'));
    assert.is(warnings.length, 1, lines.join('\n'));
    assert.match(warnings[0]!, /http:\/\/10\.0\.0\.1:2379 \(.*no leader\), http:\/\/10\.0\.0\.2:2379/);
    assert.ok(lines.some((line) => line.includes('etcd: reachable again')));
  } finally {
    await within(watch.stop(), 3000, 'stop');
  }
});

test('a watch that dies right after connecting backs off instead of spinning, and says so once', async () => {
  const etcd = fakeEtcd();
  etcd.put('/p/master', 'a');
  const { log, lines } = quiet();
  const connect: Connect = async (s, member) => {
    const connection = await etcd.connect(s, member);
    return { ...connection, watch: async () => ({ requestProgress: () => {}, ended: Promise.resolve({ kind: 'failed', reason: 'watch canceled (auth)' }), cancel: () => {} }) };
  };
  const watch = watchPrefix(settings({ endpoints: ['http://10.0.0.1:2379'] }), log, () => {}, connect, () => 0.5);
  await new Promise((resolve) => setTimeout(resolve, 2000));
  await within(watch.stop(), 3000, 'stop');
  // Backoff 50, 100, 200, 200... ms (half of 100, 200, 400, 400 with this random): ~12 in 2 s, where no backoff gives hundreds.
  assert.ok(etcd.record.connections.length <= 15, `${etcd.record.connections.length} connections`);
  assert.ok(etcd.record.connections.length >= 5, `${etcd.record.connections.length} connections`);
  assert.is(lines.filter((line) => line.includes('watch canceled (auth)')).length, 1, lines.join('\n'));
});

test('judging a check: agreement with a progress reply is current; a change on its way waits once, then is missed', () => {
  const fresh = { pending: undefined, answered: false, unanswered: 0 };
  const at = () => 12n;
  assert.equal(judgeCheck({ kind: 'agrees' }, 12n, fresh, at), { verdict: 'current', state: { pending: undefined, answered: true, unanswered: 0 } });
  assert.equal(judgeCheck({ kind: 'agrees' }, undefined, fresh, at), { verdict: 'current', state: fresh }, 'a stream that never answered: the keys decide');
  const waiting = judgeCheck({ kind: 'pending', key: '/p/master' }, 12n, fresh, at);
  assert.equal(waiting, { verdict: 'waiting', state: { pending: '/p/master@12', answered: true, unanswered: 0 } });
  if (waiting.verdict !== 'waiting') throw new Error('unreachable');
  assert.equal(judgeCheck({ kind: 'pending', key: '/p/master' }, 12n, waiting.state, at).verdict, 'end', 'the same change, a check later');
  assert.equal(judgeCheck({ kind: 'pending', key: '/p/master' }, 12n, waiting.state, () => 13n).verdict, 'waiting', 'a newer change of the key');
  const missed = judgeCheck({ kind: 'missed', key: '/p/master', etcd: 9n, mirror: 7n }, 12n, fresh, at);
  assert.equal(missed.verdict === 'end' && missed.ending.kind === 'untrusted' && missed.ending.cause, 'missed');
  const behind = judgeCheck({ kind: 'etcd-behind', revision: 3n }, 12n, fresh, at);
  assert.equal(behind.verdict === 'end' && behind.ending.kind === 'untrusted' && behind.ending.cause, 'etcd-behind');
});

test('judging a check: progress requests unanswered twice, on a stream that answered before, is a stall', () => {
  const answered = { pending: undefined, answered: true, unanswered: 0 };
  const once = judgeCheck({ kind: 'agrees' }, undefined, answered, () => undefined);
  assert.equal(once, { verdict: 'waiting', state: { pending: undefined, answered: true, unanswered: 1 } });
  if (once.verdict !== 'waiting') throw new Error('unreachable');
  const twice = judgeCheck({ kind: 'agrees' }, undefined, once.state, () => undefined);
  assert.equal(twice.verdict === 'end' && twice.ending.kind, 'stalled');
});

test('after a turn: only an untrusted mirror, a compaction or a resync asked for takes a snapshot; short turns back off', () => {
  const worked = { workedMs: 60_000, membersLeftInRound: 2 };
  const brief = { workedMs: 50, membersLeftInRound: 2 };
  const cases: [TurnEnding, typeof worked, string][] = [
    [{ kind: 'lost', reason: 'reset' }, worked, 'next spread resume success'],
    [{ kind: 'lost', reason: 'reset' }, brief, 'next backoff resume'],
    [{ kind: 'cannot-confirm', reason: 'no leader' }, brief, 'next now resume'],
    [{ kind: 'stalled', reason: 'silent' }, worked, 'next now resume success'],
    [{ kind: 'untrusted', cause: 'order', reason: 'x' }, worked, 'next now snapshot success'],
    [{ kind: 'untrusted', cause: 'order', reason: 'x' }, brief, 'next backoff snapshot'],
    [{ kind: 'compacted', compactRevision: 9n }, brief, 'same now snapshot'],
    [{ kind: 'resync-requested' }, brief, 'same now snapshot success'],
    [{ kind: 'failed-to-start', reason: 'refused', credential: false }, brief, 'next now resume'],
    [{ kind: 'failed-to-start', reason: 'refused', credential: false }, { workedMs: 5, membersLeftInRound: 0 }, 'next backoff resume'],
    [{ kind: 'failed-to-start', reason: 'bad CA', credential: true }, brief, 'next backoff resume'],
  ];
  for (const [ending, context, expected] of cases) {
    const next = afterTurn(ending, context);
    const described = [next.member, next.wait, next.snapshot ? 'snapshot' : 'resume', ...(next.success ? ['success'] : [])].join(' ');
    assert.is(described, expected, `${ending.kind} after ${context.workedMs} ms`);
  }
  assert.ok(afterTurn({ kind: 'stopped' }, brief).stop);
});

test.run();
