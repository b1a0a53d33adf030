// The fence and the hold on one haproxy release, for bench.ts's versions workload: run on this machine, or
// inside a Debian root of another release (so with that release's own haproxy and libraries). dist/ambassador,
// a throwaway etcd and backends on loopback; 200 failovers (put → new master answers, → old master's session
// cut) and the fence's order on the wire over 1,000 more (the hold on, as by default); then the hold's
// workloads (bench/hold.ts), with the hold on and with --hold=0. Prints one JSON object.

import { execFileSync } from 'node:child_process';
import { startAmbassador, type RunningAmbassador } from '../harness/ambassador.ts';
import { startEtcd } from '../harness/etcd.ts';
import { freePort, startBackend } from '../harness/net.ts';
import { stopAll } from '../harness/processes.ts';
import { answeredBy, failoverSamples, fenceOrder, timeUntil } from './fence.ts';
import { holdFailovers, holdGaps, manyHeld, ordinaryPath } from './hold.ts';

const [failovers, ordered] = process.argv.slice(2).map(Number) as [number, number];
const etcd = await startEtcd();
const backendPort = await freePort('127.0.0.11');
const backends = await Promise.all([1, 2, 3].map((i) => startBackend(`node-${i}`, `127.0.0.1${i}`, backendPort)));
const running: RunningAmbassador[] = [];
const start = async (flags: string[]) => {
  const port = await freePort();
  const ambassador = await startAmbassador([`--etcd=${etcd.endpoint}`, `--port=${port}`, '--bind=127.0.0.1', `--backend-port=${backendPort}`, ...flags], { binary: 'dist' });
  running.push(ambassador);
  return Object.assign(ambassador, { port });
};
try {
  const prefix = '/versions/services/mysql';
  for (const i of [1, 2, 3]) await etcd.put(`${prefix}/instances/${i}/private_ip`, `127.0.0.1${i}`);
  await etcd.put(`${prefix}/master`, '2');
  const ambassador = await start([`--etcd-prefix=${prefix}`, '--master-only']);
  await timeUntil(performance.now(), answeredBy(ambassador.port, 'node-2'), 10_000);
  const { latencies, cuts } = await failoverSamples(etcd, ambassador.port, prefix, failovers, '2');
  const order = await fenceOrder(etcd, '/versions-order/services/mysql', start, ordered);
  const hold: Record<string, unknown> = {};
  for (const [name, flags] of [['on', []], ['off', ['--hold=0']]] as const) {
    const holdPrefix = `/versions-hold-${name}/services/mysql`;
    for (const i of [1, 2, 3]) await etcd.put(`${holdPrefix}/instances/${i}/private_ip`, `127.0.0.1${i}`);
    await etcd.put(`${holdPrefix}/master`, '2');
    const statusPort = await freePort();
    const holding = await start([`--etcd-prefix=${holdPrefix}`, '--master-only', '--log-level=info', `--status=127.0.0.1:${statusPort}`, ...flags]);
    await timeUntil(performance.now(), answeredBy(holding.port, 'node-2'), 10_000);
    const heldNow = async () => ((await (await fetch(`http://127.0.0.1:${statusPort}/state`)).json()) as { hold: { service?: { now: number } } | null }).hold?.service?.now ?? 0;
    hold[name] = {
      ordinary: await ordinaryPath(holding.port, 2_000),
      failovers: await holdFailovers(etcd, holding.port, holdPrefix, 100, 250),
      gaps: await holdGaps(etcd, holding.port, holdPrefix, 10, 300),
      many: name === 'on' ? await manyHeld(etcd, holding.port, holdPrefix, 50, 200, heldNow) : undefined,
    };
    await holding.cleanup();
  }
  const haproxy = execFileSync('haproxy', ['-v'], { encoding: 'utf8' }).split('\n')[0]!.replace(/^HAProxy version (\S+).*/, '$1');
  process.stdout.write(JSON.stringify({ haproxy, latencies, cuts, order, hold }) + '\n');
} finally {
  await Promise.all(running.map((ambassador) => ambassador.cleanup()));
  await Promise.all(backends.map((backend) => backend.close()));
  await etcd.stop();
  await stopAll();
}
