// A throwaway etcd on free loopback ports in a temp dir, with a client for the test's own writes.
// It fails (never skips) when etcd is not installed.

import { execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { freePort } from './net.ts';
import { isRunning, signal, startProcess, stopPid } from './processes.ts';

export interface TestEtcd {
  endpoint: string;
  readonly client: Etcd3;
  authenticate(username: string, password: string): void;
  put(key: string, value: string): Promise<void>;
  del(key: string): Promise<void>;
  // Its pid while it runs.
  pid(): number | undefined;
  // SIGKILL, as a crash would.
  kill(): Promise<void>;
  // Starts it again on the same ports and data.
  start(): Promise<void>;
  stop(): Promise<void>;
}

export function requireCommand(command: string, installHint: string): void {
  try {
    // haproxy and debootstrap live in sbin, which a user's PATH may lack.
    execFileSync('sh', ['-c', `command -v ${command} || command -v /usr/sbin/${command} || command -v /sbin/${command}`], { stdio: 'ignore' });
  } catch {
    throw new Error(`${command} is not installed (needed by the integration tests): ${installHint}`);
  }
}

export interface EtcdOptions {
  // More etcd flags, e.g. ['--auth-token-ttl', '3'].
  args?: string[];
}

// In memory where there is a tmpfs: etcd fsyncs every write, and on a busy disk one put can stall for
// hundreds of ms, which is etcd's latency, not the one tests and benchmarks look at.
export function etcdDataRoot(): string {
  return existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
}

export async function startEtcd(options: EtcdOptions = {}): Promise<TestEtcd> {
  requireCommand('etcd', 'apt-get install -y etcd-server etcd-client');
  const dir = mkdtempSync(join(etcdDataRoot(), 'ambassador-etcd-'));
  const clientPort = await freePort();
  const peerPort = await freePort();
  const endpoint = `127.0.0.1:${clientPort}`;
  // No circuit breaker: the tests restart etcd and write right after.
  let client = new Etcd3({ hosts: `http://${endpoint}`, faultHandling: { host: () => noop } });
  // Readiness is probed without credentials: a health read answers (or is refused for auth) once etcd is up.
  const probe = new Etcd3({ hosts: `http://${endpoint}`, faultHandling: { host: () => noop } });
  let child: ChildProcess | undefined;

  const start = async () => {
    const peer = `http://127.0.0.1:${peerPort}`;
    child = startProcess('etcd', [
      '--name', 't', '--data-dir', join(dir, 'data'),
      '--listen-client-urls', `http://${endpoint}`, '--advertise-client-urls', `http://${endpoint}`,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `t=${peer}`,
      '--log-level', 'error',
      ...(options.args ?? []),
    ]);
    child.stdout?.resume();
    child.stderr?.resume();
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        await probe.get('health-probe').string();
        return;
      } catch (err) {
        if (/permission denied|user name is empty|authentication/i.test((err as Error).message)) return;
        if (Date.now() > deadline || !isRunning(child)) throw new Error(`etcd did not come up on ${endpoint}: ${(err as Error).message}`);
        await sleep(100);
      }
    }
  };

  const kill = async () => {
    const pid = child?.pid;
    if (pid === undefined || !isRunning(child)) return;
    const exited = new Promise((resolve) => child!.once('exit', resolve));
    signal(pid, 'SIGKILL');
    await exited;
  };

  await start();
  return {
    endpoint,
    get client() {
      return client;
    },
    // Once auth is on, the test's own writes need credentials.
    authenticate: (username: string, password: string) => {
      client.close();
      client = new Etcd3({ hosts: `http://${endpoint}`, faultHandling: { host: () => noop }, auth: { username, password } });
    },
    pid: () => (isRunning(child) ? child.pid : undefined),
    put: async (key, value) => void (await client.put(key).value(value)),
    del: async (key) => void (await client.delete().key(key)),
    kill,
    start,
    stop: async () => {
      client.close();
      probe.close();
      if (child?.pid !== undefined) await stopPid(child.pid);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
