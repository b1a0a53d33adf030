// The cluster workload of npm run bench, run by bench.ts inside a private network, pid and mount namespace
// (it cuts etcd members off with firewall rules): dist/ambassador on a 3-member etcd cluster, the member its
// watch is on cut off (a minority partition) or paused (SIGSTOP), again and again; for each, the time from
// the write of a new master through the majority to a new connection answered by it, with the check on (the
// default, 1 s) and off (etcd's own no-leader cancel, and gRPC keepalive). Prints one JSON object of samples.
// Usage: node bench/cluster.ts PARTITIONS PAUSES

import { startAmbassador } from '../harness/ambassador.ts';
import { startEtcdCluster, watchedMember, type EtcdCluster } from '../harness/etcd-cluster.ts';
import { freePort, startBackend, whoAnswers } from '../harness/net.ts';
import { stopAll } from '../harness/processes.ts';

const [partitions, pauses] = process.argv.slice(2).map(Number) as [number, number];
const TIMEOUT_MS = 30_000;

const backendPort = await freePort('127.0.0.11');
const backends = await Promise.all([1, 2].map((i) => startBackend(`node-${i}`, `127.0.0.1${i}`, backendPort)));
const cluster: EtcdCluster = await startEtcdCluster();

// Polls until a new connection is answered by `name`; the time from `since`, or undefined (a miss).
async function routed(port: number, name: string, since: number): Promise<number | undefined> {
  while (performance.now() - since < TIMEOUT_MS) {
    if ((await whoAnswers(port, '127.0.0.1', 500)) === name) return performance.now() - since;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return undefined;
}

async function run(check: string, fault: 'partition' | 'pause', count: number, prefix: string) {
  for (const i of [1, 2]) await cluster.write(`${prefix}/instances/${i}/private_ip`, `127.0.0.1${i}`);
  await cluster.write(`${prefix}/master`, '1');
  const port = await freePort();
  const ambassador = await startAmbassador(
    [`--etcd=${cluster.endpoints.join(',')}`, `--etcd-prefix=${prefix}`, '--master-only', `--port=${port}`, '--bind=127.0.0.1', `--backend-port=${backendPort}`, `--etcd-check-interval=${check}`],
    { binary: 'dist' },
  );
  const fromWrite: (number | undefined)[] = [];
  const fromFault: (number | undefined)[] = [];
  let master = '1';
  try {
    if ((await routed(port, 'node-1', performance.now())) === undefined) throw new Error('not routed at start');
    for (let n = 0; n < count; n++) {
      const watched = await watchedMember(ambassador.child.pid!, cluster);
      const faultAt = performance.now();
      if (fault === 'partition') cluster.partition(watched);
      else cluster.pause(watched);
      try {
        master = master === '1' ? '2' : '1';
        const { at } = await cluster.write(`${prefix}/master`, master, watched);
        const ms = await routed(port, `node-${master}`, at);
        fromWrite.push(ms);
        fromFault.push(ms === undefined ? undefined : ms + (at - faultAt));
      } finally {
        if (fault === 'partition') cluster.heal(watched);
        else cluster.resume(watched);
      }
      // The member back, and its leader back, before the next fault.
      await cluster.write(`${prefix}/settle`, String(n));
      await new Promise((resolve) => setTimeout(resolve, 1500));
    }
  } finally {
    await ambassador.cleanup();
  }
  return { fromWrite, fromFault };
}

const result: Record<string, { fromWrite: (number | undefined)[]; fromFault: (number | undefined)[] }> = {};
try {
  result['check 1s, partition'] = await run('1s', 'partition', partitions, '/b1/services/mysql');
  result['check 1s, pause'] = await run('1s', 'pause', pauses, '/b2/services/mysql');
  result['check off, partition'] = await run('0', 'partition', Math.ceil(partitions / 2), '/b3/services/mysql');
  result['check off, pause'] = await run('0', 'pause', Math.ceil(pauses / 2), '/b4/services/mysql');
  process.stdout.write(JSON.stringify({ etcd: cluster.version(), result }) + '\n');
} finally {
  await cluster.stop();
  await Promise.all(backends.map((backend) => backend.close()));
  await stopAll();
}
