// A 3-member etcd cluster as production runs one, inside the suite's private network namespace: members on
// 127.0.0.51-53 (client port 2379, peer port 2380), each as a user of its own so that its peer traffic can be
// cut by owner (and the peer connections already open ended); faults made for real: a member cut off from its peers (firewall), paused (SIGSTOP), killed and
// restarted, removed and replaced with a wiped data dir; the whole cluster restarted; compaction.
// $AMBASSADOR_TEST_ETCD names another etcd executable (etcd 3.5 from a Debian 13 or sid root, say).

import { execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { untilServing } from './cluster.ts';
import { etcdDataRoot, requireCommand } from './etcd.ts';
import { eventually } from './net.ts';
import { iptables, requirePrivateNetwork } from './netns.ts';
import { isRunning, signal, startProcess, stopPid } from './processes.ts';
import { remoteEndpoints } from './sockets.ts';

export const ETCD = process.env.AMBASSADOR_TEST_ETCD || 'etcd';

export interface ClusterMember {
  name: string;
  address: string;
  endpoint: string;
  uid: number;
}

export interface EtcdCluster {
  members: ClusterMember[];
  // host:port of every member, for --etcd.
  endpoints: string[];
  // A client on every member: writes go through whichever answers (the majority, when one is cut off).
  client: Etcd3;
  // Index of the leader now, as the members themselves say.
  leader(): Promise<number>;
  // Writes through the members other than `except` (the majority, when that one is cut off or paused), trying
  // again until one acknowledges, as a client does while a new leader is elected. Resolves with the time of
  // the acknowledgement (performance.now()) and the revision it made.
  write(key: string, value: string, except?: number): Promise<{ at: number; revision: bigint }>;
  partition(i: number): void;
  heal(i: number): void;
  pause(i: number): void;
  resume(i: number): void;
  kill(i: number): Promise<void>;
  // Starts member i again (if it is not running) and waits until it serves; one cut off serves only once
  // healed, and is not waited on.
  start(i: number): Promise<void>;
  // Removes member i from the cluster, wipes its data, and adds it back as a new member (waited on likewise).
  replace(i: number): Promise<void>;
  // Every member killed, then all started again.
  restartAll(): Promise<void>;
  // Compacts the cluster to its current revision.
  compact(): Promise<bigint>;
  // Moves the leadership to another member (etcd's own transfer); the member that leads after.
  moveLeader(): Promise<number>;
  version(): string;
  stop(): Promise<void>;
}

const UIDS = [60051, 60052, 60053];

function clientOn(endpoints: string[], deadlineMs = 5000): Etcd3 {
  return new Etcd3({ hosts: endpoints.map((e) => `http://${e}`), faultHandling: { host: () => noop, global: noop }, defaultCallOptions: (c) => (c.isStream ? {} : { deadline: Date.now() + deadlineMs }) });
}

// `call`, asked again for up to 30 s while it fails.
async function retried<T>(call: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      return await call();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(250);
    }
  }
}

// The member a process's etcd connections go to, seen from outside (/proc): once there is exactly one.
export async function watchedMember(pid: number, cluster: Pick<EtcdCluster, 'endpoints'>): Promise<number> {
  const found = await eventually(
    () => [...new Set(remoteEndpoints(pid).filter((e) => cluster.endpoints.includes(e)))],
    (members) => members.length === 1,
    10_000,
    'a connection to exactly one etcd member',
  );
  return cluster.endpoints.indexOf(found[0]!);
}

export async function startEtcdCluster(): Promise<EtcdCluster> {
  requirePrivateNetwork();
  requireCommand(ETCD, 'apt-get install -y etcd-server etcd-client');
  requireCommand('iptables', 'apt-get install -y iptables');
  const dir = mkdtempSync(join(etcdDataRoot(), 'ambassador-cluster-'));
  // Each member, a user of its own, reaches its own data dir below.
  chmodSync(dir, 0o711);
  const members: ClusterMember[] = [1, 2, 3].map((n, i) => ({ name: `m${n}`, address: `127.0.0.5${n}`, endpoint: `127.0.0.5${n}:2379`, uid: UIDS[i]! }));
  const children = new Map<number, ChildProcess>();
  const peerUrl = (m: ClusterMember) => `http://${m.address}:2380`;
  let initialCluster = members.map((m) => `${m.name}=${peerUrl(m)}`).join(',');
  const partitioned = new Set<number>();

  const launch = (i: number, state: 'new' | 'existing') => {
    const m = members[i]!;
    const data = join(dir, m.name);
    mkdirSync(data, { recursive: true, mode: 0o700 });
    chownSync(data, m.uid, m.uid);
    const child = startProcess(
      ETCD,
      [
        '--name', m.name, '--data-dir', data,
        '--listen-client-urls', `http://${m.endpoint}`, '--advertise-client-urls', `http://${m.endpoint}`,
        '--listen-peer-urls', peerUrl(m), '--initial-advertise-peer-urls', peerUrl(m),
        '--initial-cluster', initialCluster, '--initial-cluster-state', state, '--log-level', 'error',
      ],
      { uid: m.uid, gid: m.uid },
    );
    child.stdout?.resume();
    child.stderr?.resume();
    children.set(i, child);
  };
  const alive = (i: number) => () => isRunning(children.get(i));

  members.forEach((_, i) => launch(i, 'new'));
  await Promise.all(members.map((m, i) => untilServing(m.endpoint, 30_000, alive(i))));
  const endpoints = members.map((m) => m.endpoint);
  const client = clientOn(endpoints);

  const kill = async (i: number) => {
    const child = children.get(i);
    if (!isRunning(child)) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    signal(child.pid!, 'SIGCONT');
    signal(child.pid!, 'SIGKILL');
    await exited;
  };
  const rules = (i: number) => {
    const m = members[i]!;
    return [
      ['INPUT', '-d', m.address, '-p', 'tcp', '--dport', '2380', '-j', 'DROP'],
      ['OUTPUT', '-m', 'owner', '--uid-owner', String(m.uid), '-p', 'tcp', '!', '--sport', '2379', '-j', 'DROP'],
    ];
  };

  const leaderOf = async () => {
    for (const [i, m] of members.entries()) {
      const one = clientOn([m.endpoint]);
      try {
        const status = await one.maintenance.status({ deadline: Date.now() + 1000 });
        if (status.leader !== '0' && status.leader === status.header.member_id) return i;
      } catch {
        // not this one
      } finally {
        one.close();
      }
    }
    throw new Error('no member says it leads');
  };

  let lastWriter = 0;
  return {
    members,
    endpoints,
    client,
    leader: leaderOf,
    write: async (key, value, except) => {
      const deadline = performance.now() + 30_000;
      // Start with the member that took the last write: a member that is down costs each write a timeout.
      for (let attempt = 0; ; attempt++) {
        const i = (lastWriter + attempt) % members.length;
        if (i === except) continue;
        const one = clientOn([endpoints[i]!], 2000);
        try {
          const response = await one.put(key).value(value).exec();
          lastWriter = i;
          return { at: performance.now(), revision: BigInt(response.header.revision) };
        } catch (err) {
          if (performance.now() > deadline) throw new Error(`no member acknowledged ${key}=${value}: ${(err as Error).message}`);
        } finally {
          one.close();
        }
      }
    },
    partition: (i) => {
      if (partitioned.has(i)) return;
      partitioned.add(i);
      for (const rule of rules(i)) iptables('-A', ...rule);
      // A member's outgoing peer connections leave from 127.0.0.1, so the rules cannot tell another member's
      // packets to them from anyone's: the ones open now would still carry the leader's messages to it. Every
      // peer connection is ended (the others dial again at once; it cannot).
      execFileSync('ss', ['-K', '-tn', '( sport = :2380 or dport = :2380 )'], { stdio: 'ignore' });
    },
    heal: (i) => {
      if (!partitioned.delete(i)) return;
      for (const rule of rules(i)) iptables('-D', ...rule);
    },
    pause: (i) => signal(children.get(i)!.pid!, 'SIGSTOP'),
    resume: (i) => signal(children.get(i)!.pid!, 'SIGCONT'),
    kill,
    start: async (i) => {
      // Two faults of a pair may have killed the same member: the second heal finds it running again.
      if (alive(i)()) return;
      launch(i, 'existing');
      // etcd serves clients only once it has rejoined through the quorum: a member cut off cannot, until healed.
      if (!partitioned.has(i)) await untilServing(members[i]!.endpoint, 30_000, alive(i));
    },
    replace: async (i) => {
      const m = members[i]!;
      const others = clientOn(endpoints.filter((_, j) => j !== i));
      try {
        await kill(i);
        // Membership changes go through the leader, which may be the member just killed; and etcd refuses one
        // while the cluster has just changed ("unhealthy cluster"): each is asked again until it is done.
        const list = await retried(() => others.cluster.memberList({}));
        const id = list.members.find((member) => member.name === m.name || member.peerURLs.includes(peerUrl(m)))?.ID;
        if (id !== undefined) await retried(() => others.cluster.memberRemove({ ID: id }));
        rmSync(join(dir, m.name), { recursive: true, force: true });
        await retried(() => others.cluster.memberAdd({ peerURLs: [peerUrl(m)] }));
      } finally {
        others.close();
      }
      launch(i, 'existing');
      if (!partitioned.has(i)) await untilServing(m.endpoint, 30_000, alive(i));
    },
    restartAll: async () => {
      await Promise.all(members.map((_, i) => kill(i)));
      initialCluster = members.map((m) => `${m.name}=${peerUrl(m)}`).join(',');
      members.forEach((_, i) => launch(i, 'existing'));
      await Promise.all(members.map((m, i) => untilServing(m.endpoint, 30_000, alive(i))));
    },
    moveLeader: async () => {
      const from = await retried(() => leaderOf());
      const to = (from + 1 + Math.floor(Math.random() * 2)) % members.length;
      const ids = await retried(() => client.cluster.memberList({}));
      const target = ids.members.find((member) => member.name === members[to]!.name)!.ID;
      const leader = clientOn([endpoints[from]!]);
      try {
        await leader.maintenance.moveLeader({ targetID: target });
      } finally {
        leader.close();
      }
      return to;
    },
    compact: async () => {
      const revision = BigInt((await client.get('compaction-probe').exec()).header.revision);
      await client.kv.compact({ revision: String(revision), physical: true });
      return revision;
    },
    version: () => execFileSync(ETCD, ['--version'], { encoding: 'utf8' }).split('\n')[0]!.trim(),
    stop: async () => {
      client.close();
      for (const i of [...partitioned]) {
        partitioned.delete(i);
        for (const rule of rules(i)) iptables('-D', ...rule);
      }
      await Promise.all([...children.values()].map((child) => (child.pid !== undefined ? (signal(child.pid, 'SIGCONT'), stopPid(child.pid)) : undefined)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
