import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHoldTotals, parseHold } from '../../lib/haproxy/holds.ts';

const answer = (loaded: string, total: number, now = 0) => `loaded ${loaded}\nservice now ${now} total ${total} released ${total - now} timeouts 0 abandoned 0 sum 0.500000 buckets 0,1,${total - now}\n`;

test('reads the hold\'s counts per proxy, and nothing from an answer that is not the hold\'s', () => {
  const read = parseHold('loaded 1700000000.000123\nservice now 2 total 9 released 5 timeouts 1 abandoned 1 sum 3.250000 buckets 1,2,6\nreplicas now 0 total 1 released 1 timeouts 0 abandoned 0 sum 0.010000 buckets 0,1,1\n');
  assert.is(read?.loaded, '1700000000.000123');
  assert.equal(read?.proxies.get('service'), { now: 2, total: 9, released: 5, timeouts: 1, abandoned: 1, sum: 3.25, buckets: [1, 2, 6] });
  assert.equal(read?.proxies.get('replicas')?.buckets, [0, 1, 1]);
  assert.is(parseHold('Unknown command: \'ambassador\'\n'), undefined);
});

test('counts add up across workers: a reload starts a worker at zero, and its predecessor\'s counts are kept', () => {
  const totals = createHoldTotals();
  assert.is(totals(parseHold(answer('1.0', 4, 1))!).get('service')?.total, 4);
  assert.is(totals(parseHold(answer('1.0', 6))!).get('service')?.total, 6);
  const after = totals(parseHold(answer('2.0', 1, 1))!).get('service')!;
  assert.is(after.total, 7);
  assert.is(after.now, 1, 'held now: the current worker\'s alone');
  assert.equal(after.buckets, [0, 2, 6]);
  assert.is(after.sum, 1);
});
