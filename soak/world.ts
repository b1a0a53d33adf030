// The soak's world: a 3-member etcd cluster, a relay between ambassador and each member (the place for a
// silent blackhole or added latency), three instances on recording backends with a packet capture of
// haproxy's connections to them, dist/ambassador kept running as its supervisor would, the writer that moves
// the master (writer.ts) and the clients and samplers (observers.ts). Everything it sees goes into the
// history; everything it starts is stopped.

import { execFileSync } from 'node:child_process';
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { ambassadorCommand, startAmbassador, type RunningAmbassador } from '../harness/ambassador.ts';
import { startProcess, stopPid } from '../harness/processes.ts';
import { startCapture, type Capture } from '../harness/capture.ts';
import { startEtcdCluster, type EtcdCluster } from '../harness/etcd-cluster.ts';
import { iptables } from '../harness/netns.ts';
import { freePort } from '../harness/net.ts';
import { startRecordingBackends, type RecordingBackends } from '../harness/recorder.ts';
import { startRelay, type Relay } from '../harness/relay.ts';
import { remoteEndpoints } from '../harness/sockets.ts';
import { now, type History } from './history.ts';
import { startObservers } from './observers.ts';
import { random } from './schedule.ts';
import { MasterWriter } from './writer.ts';

export const PREFIX = '/soak/services/db';
const INSTANCES = ['a', 'b', 'c'];
const MAX_STALE = '5s';

export interface SoakWorld {
  cluster: EtcdCluster;
  relays: Relay[];
  ambassador(): RunningAmbassador | undefined;
  // ambassador's runtime dir, on a small file system of its own (a tmpfs) that a fault can fill.
  runtimeDir: string;
  runtimeFileSystem: string;
  statusPort: number;
  // A second ambassador started on the soak's port (its own runtime dir) or in its runtime dir (another port);
  // its exit code once it exits, or null if it does not within 10 s (then it is stopped).
  intrude(on: 'port' | 'runtime-dir'): Promise<{ code: number | null; reason: string }>;
  // The relay (so the member) ambassador's etcd connection goes through now, if one.
  watched(): number | undefined;
  // The master the writer last knew etcd to name.
  master(): string;
  // The instance's host drops every packet and answers nothing, as a host that lost power; the writer names
  // another master within a second, as Patroni would once the host's leader lease lapsed, and never this one
  // until undone. Returns the undo.
  vanish(name: string): () => void;
  // Holds the writer (quiet periods), once its write in flight is done; or lets it go on.
  pauseWriter(): Promise<void>;
  resumeWriter(): void;
  // A linearizable read of the master, asked until it answers; recorded.
  readMaster(): Promise<string>;
  burst(writes: number): Promise<void>;
  stop(): Promise<void>;
}

const etcdClient = (endpoints: string[], deadlineMs: number) =>
  new Etcd3({ hosts: endpoints.map((e) => `http://${e}`), faultHandling: { host: () => noop, global: noop }, defaultCallOptions: (c) => (c.isStream ? {} : { deadline: Date.now() + deadlineMs }) });

export async function startSoakWorld(history: History, dir: string, seed: number): Promise<SoakWorld> {
  const cluster = await startEtcdCluster();
  const relays = await Promise.all(cluster.endpoints.map((endpoint) => startRelay(endpoint)));
  const backendPort = await freePort('127.0.0.21');
  const addresses = new Map(INSTANCES.map((name, i) => [name, `127.0.0.2${i + 1}`]));
  const backends: RecordingBackends = await startRecordingBackends([...addresses].map(([name, host]) => ({ name, host, port: backendPort })));
  const capture: Capture = await startCapture(addresses, backendPort);
  const client = etcdClient(cluster.endpoints, 2000);
  for (const [name, address] of addresses) {
    await cluster.write(`${PREFIX}/instances/${name}/private_ip`, address);
    await cluster.write(`${PREFIX}/instances/${name}/port`, String(backendPort));
  }
  const first = await cluster.write(`${PREFIX}/master`, 'a');
  history.add({ type: 'write', t: now(), sent: now(), master: 'a', revision: first.revision });
  const writer = new MasterWriter(client, history, `${PREFIX}/master`, INSTANCES, random(seed + 1), { master: 'a', revision: first.revision });

  // ambassador's runtime dir lives on a tmpfs of 8 MiB, mounted in the soak's private mount namespace, for the
  // fault that fills it.
  const [port, statusPort] = [await freePort(), await freePort()];
  const runtimeFileSystem = join(dir, 'tmpfs');
  const runtimeDir = join(runtimeFileSystem, 'run');
  mkdirSync(runtimeFileSystem, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0755', 'tmpfs', runtimeFileSystem]);
  const flags = [
    `--etcd=${relays.map((relay) => relay.endpoint).join(',')}`,
    `--etcd-prefix=${PREFIX}`,
    '--master-only',
    `--port=${port}`,
    '--bind=127.0.0.1',
    `--status=127.0.0.1:${statusPort}`,
    `--max-stale=${MAX_STALE}`,
  ];
  const supervised = supervise(flags, runtimeDir, history, join(dir, 'ambassador.log'));
  const observers = startObservers(history, client, { port, statusPort, prefix: PREFIX });

  return {
    cluster,
    relays,
    ambassador: supervised.current,
    runtimeDir,
    runtimeFileSystem,
    statusPort,
    intrude: (on) => intrude(on, flags, { port, statusPort, runtimeDir, dir }),
    watched: () => watchedRelay(supervised.current(), relays),
    master: () => writer.master(),
    vanish: (name) => {
      const address = addresses.get(name)!;
      const rules = [
        ['INPUT', '-d', address, '-j', 'DROP'],
        ['OUTPUT', '-s', address, '-j', 'DROP'],
      ];
      for (const rule of rules) iptables('-A', ...rule);
      const vanished = writer.vanish(name);
      return () => {
        for (const rule of rules) iptables('-D', ...rule);
        vanished.back();
      };
    },
    pauseWriter: () => writer.pause(),
    resumeWriter: () => writer.resume(),
    readMaster: () => writer.readMaster(),
    burst: async (writes) => {
      const pending: Promise<unknown>[] = [];
      for (let n = 0; n < writes; n++) {
        const key = n % 2 === 0 ? `${PREFIX}/meta/burst${n % 100}` : `/soak/elsewhere/burst${n % 100}`;
        pending.push(client.put(key).value(String(n)).exec().then((r) => n % 2 === 0 && history.add({ type: 'churn', t: now(), revision: BigInt(r.header.revision) }), () => {}));
        if (pending.length >= 32) await Promise.all(pending.splice(0));
      }
      await Promise.all(pending);
    },
    stop: async () => {
      history.add({ type: 'end', t: now() });
      await Promise.all([writer.stop(), observers.stop()]);
      await supervised.stop();
      await capture.stop();
      await backends.stop();
      for (const { kind, at, backend, id } of backends.events) history.add({ type: kind, t: at, source: 'backend', backend, id });
      for (const { kind, at, backend, id } of capture.events) history.add({ type: kind, t: at, source: 'wire', backend, id });
      client.close();
      await Promise.all(relays.map((relay) => relay.close()));
      await cluster.stop();
      execFileSync('umount', ['--lazy', runtimeFileSystem]);
    },
  };
}

// ambassador, restarted whenever it exits, as systemd's Restart=always would; its logs appended to logPath.
function supervise(flags: string[], runtimeDir: string, history: History, logPath: string): { current: () => RunningAmbassador | undefined; stop: () => Promise<void> } {
  let current: RunningAmbassador | undefined;
  let stopping = false;
  const loop = (async () => {
    while (!stopping) {
      const ambassador = await startAmbassador(flags, { binary: 'dist', runtimeDir });
      current = ambassador;
      history.add({ type: 'ambassador-start', t: now(), pid: ambassador.child.pid! });
      const code = await ambassador.exited;
      const reason = ambassador.logs.filter((line) => / (ERROR|WARN) /.test(line)).slice(-1)[0] ?? '';
      history.add({ type: 'ambassador-exit', t: now(), pid: ambassador.child.pid!, code, signal: ambassador.child.signalCode, reason });
      appendFileSync(logPath, ambassador.logs.join('\n') + '\n');
      await ambassador.cleanup();
      if (!stopping) await sleep(200); // a supervisor's restart delay
    }
  })();
  return {
    current: () => current,
    stop: async () => {
      stopping = true;
      current?.child.kill('SIGCONT');
      current?.child.kill('SIGTERM');
      await loop;
    },
  };
}

// A second ambassador on the soak's port (a runtime dir of its own) or in its runtime dir (another port).
// Started as a process of its own, not through startAmbassador, whose cleanup would stop the haproxy of the
// runtime dir it was given: here, the soak's own.
async function intrude(on: 'port' | 'runtime-dir', flags: string[], soak: { port: number; statusPort: number; runtimeDir: string; dir: string }): Promise<{ code: number | null; reason: string }> {
  const otherStatus = (flag: string) => flag.replace(`--status=127.0.0.1:${soak.statusPort}`, `--status=127.0.0.1:${soak.statusPort + 1}`);
  const other =
    on === 'port'
      ? [...flags.map(otherStatus), `--runtime-dir=${join(soak.dir, 'intruder')}`]
      : [...flags.map((flag) => otherStatus(flag).replace(`--port=${soak.port}`, `--port=${soak.port + 1}`)), `--runtime-dir=${soak.runtimeDir}`];
  const [command, args] = ambassadorCommand('dist');
  const intruder = startProcess(command, [...args, ...other], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  intruder.stderr!.on('data', (data) => (stderr += data));
  const code = await Promise.race([new Promise<number | null>((resolve) => intruder.once('exit', resolve)), sleep(10_000).then(() => 'running' as const)]);
  if (code === 'running') await stopPid(intruder.pid!);
  const reason = stderr.split('\n').filter((line) => / ERROR /.test(line)).slice(-1)[0] ?? '';
  return { code: code === 'running' ? null : code, reason };
}

// The relay (so the member) ambassador's etcd connection goes through now, if one.
function watchedRelay(ambassador: RunningAmbassador | undefined, relays: Relay[]): number | undefined {
  const pid = ambassador?.child.pid;
  if (pid === undefined) return undefined;
  const ports = relays.map((relay) => Number(relay.endpoint.split(':')[1]));
  try {
    const connected = new Set(remoteEndpoints(pid).filter((e) => e.startsWith('127.0.0.1:')).map((e) => Number(e.split(':')[1])));
    const index = ports.findIndex((p) => connected.has(p));
    return index < 0 ? undefined : index;
  } catch {
    return undefined;
  }
}
