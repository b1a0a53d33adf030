// The watch's report of how a turn ended: a line, or a failure for the streak, and what it counts. Pure.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { afterTurn, reportEnding } from '../../lib/etcd/decide.ts';

const context = { member: 'http://10.0.0.1:2379', members: 2, failures: [] as string[], revision: 42n, endpoints: ['http://10.0.0.1:2379', 'http://10.0.0.2:2379'] };

test('a member that cannot serve, with another left to try, is a debug line; the last of a round a failure naming each', () => {
  const first = reportEnding({ kind: 'failed-to-start', reason: 'no leader', credential: false }, context);
  assert.is(first.line?.level, 'debug');
  assert.is(first.failure, undefined);
  assert.is(first.memberProblem, 'no leader');
  const last = reportEnding({ kind: 'failed-to-start', reason: 'refused', credential: false }, { ...context, member: 'http://10.0.0.2:2379', failures: ['http://10.0.0.1:2379 (no leader)'] });
  assert.is(last.failure?.what, 'no member can serve: http://10.0.0.1:2379 (no leader), http://10.0.0.2:2379 (refused); keeping the last state (revision 42); retrying');
  assert.ok(last.unconfirmed);
});

test('refused credentials are a failure at once, whatever members are left', () => {
  const report = reportEnding({ kind: 'failed-to-start', reason: 'etcd refused the credentials of --etcd-user=u', credential: true }, context);
  assert.match(report.failure!.what, /^unreachable|^no member can serve: etcd refused the credentials/);
});

test('leaving a member counts it, a stall counts twice; distrust and resyncs say their cause', () => {
  assert.equal(reportEnding({ kind: 'stalled', reason: 'x' }, context).counts, { membersLeft: 1, watchesBehind: 1 });
  assert.equal(reportEnding({ kind: 'cannot-confirm', reason: 'x' }, context).counts, { membersLeft: 1 });
  assert.is(reportEnding({ kind: 'untrusted', cause: 'order', reason: 'x' }, context).resync, 'order');
  assert.is(reportEnding({ kind: 'compacted', compactRevision: 40n }, context).resync, 'compacted');
  assert.equal(reportEnding({ kind: 'stopped' }, context), {});
});

test('what changes after a turn: an untrusted mirror is distrusted and the next snapshot announced', () => {
  const brief = { workedMs: 5, membersLeftInRound: 1 };
  assert.ok(afterTurn({ kind: 'untrusted', cause: 'missed', reason: 'x' }, brief).distrust);
  assert.ok(afterTurn({ kind: 'untrusted', cause: 'missed', reason: 'x' }, brief).announce);
  assert.ok(afterTurn({ kind: 'resync-requested' }, brief).announce);
  assert.not.ok(afterTurn({ kind: 'lost', reason: 'x' }, brief).distrust);
});

test.run();
