// A 3-member etcd cluster on loopback, and etcd's own grpc-proxy in front of an endpoint, for fault tests.

import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { etcdDataRoot, requireCommand } from './etcd.ts';
import { freePort } from './net.ts';
import { isRunning, signal, startProcess, stopPid } from './processes.ts';

export interface TestCluster {
  endpoints: string[];
  client: Etcd3;
  // The members' pids (undefined for one not running).
  pids(): (number | undefined)[];
  // SIGKILL member i, as a crash would.
  kill(i: number): Promise<void>;
  start(i: number): Promise<void>;
  stop(): Promise<void>;
}

// Until the etcd at `endpoint` answers a linearizable read (it has a leader and can serve), within timeoutMs.
export async function untilServing(endpoint: string, timeoutMs: number, alive: () => boolean): Promise<void> {
  const probe = new Etcd3({ hosts: `http://${endpoint}`, faultHandling: { host: () => noop }, defaultCallOptions: (c) => (c.isStream ? {} : { deadline: Date.now() + 5000 }) });
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      try {
        await probe.get('health-probe').string();
        return;
      } catch (err) {
        if (Date.now() > deadline || !alive()) throw new Error(`etcd at ${endpoint} did not come up: ${(err as Error).message}`);
        await sleep(100);
      }
    }
  } finally {
    probe.close();
  }
}

export async function startCluster(size = 3): Promise<TestCluster> {
  requireCommand('etcd', 'apt-get install -y etcd-server etcd-client');
  const dir = mkdtempSync(join(etcdDataRoot(), 'ambassador-cluster-'));
  const members = await Promise.all(
    Array.from({ length: size }, async (_, i) => ({ name: `m${i}`, client: await freePort(), peer: await freePort(), child: undefined as ChildProcess | undefined })),
  );
  const initialCluster = members.map((m) => `${m.name}=http://127.0.0.1:${m.peer}`).join(',');
  const endpoints = members.map((m) => `127.0.0.1:${m.client}`);

  const launch = (i: number, state: 'new' | 'existing') => {
    const m = members[i]!;
    m.child = startProcess('etcd', [
      '--name', m.name, '--data-dir', join(dir, m.name),
      '--listen-client-urls', `http://127.0.0.1:${m.client}`, '--advertise-client-urls', `http://127.0.0.1:${m.client}`,
      '--listen-peer-urls', `http://127.0.0.1:${m.peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${m.peer}`,
      '--initial-cluster', initialCluster, '--initial-cluster-state', state, '--log-level', 'error',
    ]);
    m.child.stdout?.resume();
    m.child.stderr?.resume();
  };
  members.forEach((_, i) => launch(i, 'new'));
  await Promise.all(endpoints.map((endpoint, i) => untilServing(endpoint, 20_000, () => isRunning(members[i]!.child))));
  const client = new Etcd3({ hosts: endpoints.map((e) => `http://${e}`), faultHandling: { host: () => noop } });

  return {
    endpoints,
    client,
    pids: () => members.map((m) => (isRunning(m.child) ? m.child.pid : undefined)),
    kill: async (i) => {
      const child = members[i]!.child;
      if (!isRunning(child)) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      signal(child.pid!, 'SIGKILL');
      await exited;
    },
    start: async (i) => {
      launch(i, 'existing');
      await untilServing(endpoints[i]!, 20_000, () => isRunning(members[i]!.child));
    },
    stop: async () => {
      client.close();
      await Promise.all(members.map((m) => (m.child?.pid !== undefined ? stopPid(m.child.pid) : undefined)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface GrpcProxy {
  endpoint: string;
  pid(): number | undefined;
  start(): Promise<void>;
  stop(): Promise<void>;
}

// etcd's own watch-coalescing proxy, in front of `endpoints`.
export async function startGrpcProxy(endpoints: string[]): Promise<GrpcProxy> {
  const port = await freePort();
  const endpoint = `127.0.0.1:${port}`;
  let child: ChildProcess | undefined;
  const launch = async () => {
    child = startProcess('etcd', ['grpc-proxy', 'start', `--endpoints=${endpoints.join(',')}`, `--listen-addr=${endpoint}`, `--advertise-client-url=${endpoint}`]);
    child.stdout?.resume();
    child.stderr?.resume();
    await untilServing(endpoint, 15_000, () => isRunning(child));
  };
  const stop = async () => {
    if (isRunning(child) && child.pid !== undefined) await stopPid(child.pid);
  };
  await launch();
  return { endpoint, pid: () => (isRunning(child) ? child.pid : undefined), start: launch, stop };
}
