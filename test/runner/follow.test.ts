// The follower: etcd changes in, one update per burst, with the keys the burst changed.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createFollower } from '../../lib/runner/follow.ts';
import type { Wanted } from '../../lib/haproxy/queue.ts';
import { createLogger } from '../../lib/common/log.ts';
import type { Problem, Selection } from '../../lib/service/service.ts';
import { within } from '../../harness/limits.ts';

function startFollower(problems: () => Problem[] = () => []) {
  const mirror = new Map<string, string>();
  const seen: (string[] | undefined)[] = [];
  const lines: string[] = [];
  let applied: () => void = () => {};
  const state = () => ({ mirror, revision: BigInt(seen.length + 1) });
  const follower = createFollower({
    routingKeys: () => ['/p/master'],
    select: (_mirror, changed): Selection => {
      seen.push(changed && [...changed].sort());
      return { servers: [], replicas: undefined, master: undefined, problems: problems() };
    },
    render: () => `config ${seen.length}`,
    apply: async (_wanted: Wanted) => {
      applied();
      return { outcome: 'applied', path: 'runtime', ms: 0 };
    },
    idle: async () => {},
    log: createLogger({ format: 'text', level: 'info', write: (line) => lines.push(line) }),
    masterOnly: false,
    briefMs: 200,
  });
  const nextApply = () => within(new Promise<void>((resolve) => (applied = resolve)), 2000, 'an update');
  return { follower, seen, lines, nextApply, state };
}

test('a burst is one update, with every key it changed; a snapshot means anything may have changed', async () => {
  const { follower, seen, nextApply , state } = startFollower();
  let update = nextApply();
  follower.changed(state());
  await update;
  update = nextApply();
  follower.changed(state(), ['/p/master']);
  follower.changed(state(), ['/p/master', '/p/instances/1/private_ip']);
  await update;
  update = nextApply();
  follower.changed(state(), ['/p/instances/2/port']);
  follower.changed(state());
  follower.changed(state(), ['/p/instances/3/port']);
  await update;
  update = nextApply();
  follower.changed(state(), ['/p/instances/4/port']);
  await update;
  assert.equal(seen, [undefined, ['/p/instances/1/private_ip', '/p/master'], undefined, ['/p/instances/4/port']]);
});

test("Patroni's leader gap is said at info when it passes, and at warn once it lasts", async () => {
  let current: Problem[] = [];
  const { follower, lines, nextApply , state } = startFollower(() => current);
  const noLeader: Problem = { key: '/service/demo/leader', reason: 'no leader: no member is routed', brief: true };
  const step = async (problems: Problem[]) => {
    current = problems;
    const update = nextApply();
    follower.changed(state());
    await update;
  };
  await step([noLeader]);
  await step([]);
  await within(new Promise((resolve) => setTimeout(resolve, 400)), 1000, 'past the bound');
  assert.not.ok(lines.some((line) => line.includes('WARN')), lines.join('\n'));
  assert.ok(lines.some((line) => line.includes('INFO') && line.includes('no leader') && line.includes('a normal step of a switchover')));
  await step([noLeader]);
  const warned = await within(
    (async () => {
      while (!lines.some((line) => line.includes('WARN'))) await new Promise((resolve) => setTimeout(resolve, 20));
      return lines.filter((line) => line.includes('WARN'));
    })(),
    2000,
    'the warning',
  );
  assert.is(warned.length, 1);
  assert.match(warned[0]!, 'no leader: no member is routed, for 0.2 s now');
});

test.run();
