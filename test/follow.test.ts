// The follower: etcd changes in, one update per burst, with the keys the burst changed.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createFollower } from '../lib/follow.ts';
import type { Wanted } from '../lib/haproxy/queue.ts';
import { createLogger } from '../lib/log.ts';
import type { Selection } from '../lib/registry.ts';
import { within } from './helpers/limits.ts';

function startFollower() {
  const mirror = new Map<string, string>();
  const seen: (string[] | undefined)[] = [];
  let applied: () => void = () => {};
  const follower = createFollower({
    state: () => ({ mirror, revision: BigInt(seen.length + 1) }),
    select: (_mirror, changed): Selection => {
      seen.push(changed && [...changed].sort());
      return { servers: [], replicas: undefined, master: undefined, problems: [] };
    },
    render: () => `config ${seen.length}`,
    apply: async (_wanted: Wanted) => {
      applied();
      return { outcome: 'applied', path: 'runtime', ms: 0 };
    },
    log: createLogger({ format: 'text', level: 'error' }),
    masterOnly: false,
  });
  const nextApply = () => within(new Promise<void>((resolve) => (applied = resolve)), 2000, 'an update');
  return { follower, seen, nextApply };
}

test('a burst is one update, with every key it changed; a snapshot means anything may have changed', async () => {
  const { follower, seen, nextApply } = startFollower();
  let update = nextApply();
  follower.changed();
  await update;
  update = nextApply();
  follower.changed(['/p/master']);
  follower.changed(['/p/master', '/p/instances/1/private_ip']);
  await update;
  update = nextApply();
  follower.changed(['/p/instances/2/port']);
  follower.changed();
  follower.changed(['/p/instances/3/port']);
  await update;
  update = nextApply();
  follower.changed(['/p/instances/4/port']);
  await update;
  assert.equal(seen, [undefined, ['/p/instances/1/private_ip', '/p/master'], undefined, ['/p/instances/4/port']]);
});

test.run();
