// Parsing what haproxy's master CLI answers, and --dry-run's output: pure functions.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { dryRunReport } from '../../lib/runner/dryrun.ts';
import { newestWorker, parseShowProc } from '../../lib/haproxy/admin.ts';

// `show proc` from Debian's haproxy 2.6.12, after a reload that worked and one that failed, an old worker
// still finishing its sessions.
const SHOW_PROC = `#<PID>          <type>          <reloads>       <uptime>        <version>
10214           master          2 [failed: 1]   0d00h00m03s     2.6.12-1+deb12u4
# workers
10311           worker          1               0d00h00m00s     2.6.12-1+deb12u4
# old workers
10217           worker          2               0d00h00m03s     2.6.12-1+deb12u4
# programs
`;

test('show proc: the reload counters and every worker with the reloads it has outlived', () => {
  assert.equal(parseShowProc(SHOW_PROC), {
    masterPid: 10214,
    reloads: 2,
    failedReloads: 1,
    workers: [
      { pid: 10311, reloads: 1, leaving: false },
      { pid: 10217, reloads: 2, leaving: true },
    ],
  });
});

// haproxy 3.4.7 while a reload loads a config: the new worker listed, the one it replaces already old.
const SHOW_PROC_LOADING = `#<PID>          <type>          <reloads>       <uptime>        <version>
6966            master          3 [failed: 0]   0d00h05m41s     3.4.7-1
# workers
12310           worker          0               0d00h00m00s     3.4.7-1
# old workers
10692           worker          1               0d00h02m10s     3.4.7-1
`;

test('show proc (3.x): the worker being loaded and the one it replaces', () => {
  assert.equal(parseShowProc(SHOW_PROC_LOADING)?.workers, [
    { pid: 12310, reloads: 0, leaving: false },
    { pid: 10692, reloads: 1, leaving: true },
  ]);
});

test('the newest worker is the one that has outlived the fewest reloads', () => {
  const workers = parseShowProc(SHOW_PROC)!.workers;
  assert.is(newestWorker(workers), 10311);
  assert.is(newestWorker([...workers].reverse()), 10311);
  assert.is(newestWorker(workers.filter((worker) => worker.leaving)), 10217);
  assert.is(newestWorker([]), undefined);
});

test('show proc: anything else (an error, a half answer) is no answer', () => {
  assert.is(parseShowProc(''), undefined);
  assert.is(parseShowProc('Unknown command.\n'), undefined);
});

test('dry run: the config when there is no file, a diff when it differs, nothing when it is the same', () => {
  const fresh = dryRunReport('/run/a/haproxy.cfg', undefined, 'x\n', 7n, 3, 0);
  assert.is(fresh.output, 'x\n');
  assert.is(fresh.summary, 'dry run: revision 7, 3 server(s), 0 problem(s)');
  const changed = dryRunReport('/run/a/haproxy.cfg', 'x\n', 'y\n', 8n, 3, 1);
  assert.match(changed.output, '--- /run/a/haproxy.cfg\n+++ /run/a/haproxy.cfg (revision 8)');
  assert.match(changed.output, '\n-x\n+y\n');
  assert.match(changed.summary, '; diff against /run/a/haproxy.cfg');
  const same = dryRunReport('/run/a/haproxy.cfg', 'x\n', 'x\n', 9n, 3, 0);
  assert.is(same.output, '');
  assert.match(same.summary, 'is already this config');
});

test.run();
