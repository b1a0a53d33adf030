// The soak's world, and its observers: a 3-member etcd cluster, a relay between ambassador and each member
// (the place for a silent blackhole or added latency), three instances on recording backends with a packet
// capture of haproxy's connections to them, dist/ambassador kept running as its supervisor would, a writer
// that moves the master, churn, clients, and samplers of /healthz and of haproxy's processes. Everything it
// sees goes into the history; everything it starts is stopped.

import { execFileSync } from 'node:child_process';
import { appendFileSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { ambassadorCommand, startAmbassador, type RunningAmbassador } from '../harness/ambassador.ts';
import { startProcess, stopPid } from '../harness/processes.ts';
import { startCapture, type Capture } from '../harness/capture.ts';
import { startEtcdCluster, type EtcdCluster } from '../harness/etcd-cluster.ts';
import { iptables } from '../harness/netns.ts';
import { freePort, openSession, whoAnswers, type Session } from '../harness/net.ts';
import { startRecordingBackends, type RecordingBackends } from '../harness/recorder.ts';
import { startRelay, type Relay } from '../harness/relay.ts';
import { remoteEndpoints } from '../harness/sockets.ts';
import { now, type History } from './history.ts';
import { random } from './schedule.ts';

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
  const next = random(seed + 1);
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
  let master = 'a';
  const first = await cluster.write(`${PREFIX}/master`, master);
  history.add({ type: 'write', t: now(), sent: now(), master, revision: first.revision });

  // ambassador, restarted whenever it exits, as systemd's Restart=always would. Its runtime dir lives on a tmpfs
  // of 8 MiB, mounted in the soak's private mount namespace, for the fault that fills it.
  const port = await freePort();
  const statusPort = await freePort();
  const runtimeFileSystem = join(dir, 'tmpfs');
  const runtimeDir = join(runtimeFileSystem, 'run');
  mkdirSync(runtimeFileSystem, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0755', 'tmpfs', runtimeFileSystem]);
  let current: RunningAmbassador | undefined;
  let stopping = false;
  const flags = [
    `--etcd=${relays.map((relay) => relay.endpoint).join(',')}`,
    `--etcd-prefix=${PREFIX}`,
    '--master-only',
    `--port=${port}`,
    '--bind=127.0.0.1',
    `--status=127.0.0.1:${statusPort}`,
    `--max-stale=${MAX_STALE}`,
  ];
  const supervise = async () => {
    while (!stopping) {
      const ambassador = await startAmbassador(flags, { binary: 'dist', runtimeDir });
      current = ambassador;
      history.add({ type: 'ambassador-start', t: now(), pid: ambassador.child.pid! });
      const code = await ambassador.exited;
      const reason = ambassador.logs.filter((line) => / (ERROR|WARN) /.test(line)).slice(-1)[0] ?? '';
      history.add({ type: 'ambassador-exit', t: now(), pid: ambassador.child.pid!, code, signal: ambassador.child.signalCode, reason });
      appendFileSync(join(dir, 'ambassador.log'), ambassador.logs.join('\n') + '\n');
      await ambassador.cleanup();
      if (!stopping) await sleep(200); // a supervisor's restart delay
    }
  };
  const supervisor = supervise();

  // The writer: compare-and-swap on the master key, a change every 2-4 s while it is on.
  let writing = true;
  let inFlight: Promise<void> = Promise.resolve();
  let modRevision = first.revision;
  const readMaster = async (): Promise<string> => {
    for (;;) {
      try {
        const response = await client.get(`${PREFIX}/master`).exec();
        const kv = response.kvs[0]!;
        master = kv.value.toString();
        modRevision = BigInt(kv.mod_revision);
        history.add({ type: 'read', t: now(), master, modRevision, revision: BigInt(response.header.revision) });
        return master;
      } catch {
        await sleep(200);
      }
    }
  };
  // A compare-and-swap of the master to `value`, on the revision last known: recorded as a write when it
  // succeeds, followed by a read when it does not. Throws when its outcome is unknown.
  const writeMaster = async (value: string) => {
    const sent = now();
    const response = await client
      .if(`${PREFIX}/master`, 'Mod', '==', String(modRevision))
      .then(client.put(`${PREFIX}/master`).value(value))
      .commit();
    if (!response.succeeded) return void (await readMaster());
    master = value;
    modRevision = BigInt(response.header.revision);
    history.add({ type: 'write', t: now(), sent, master, revision: modRevision });
  };
  // After a write of unknown outcome: a read cannot settle it, since the request may still be on its way (to a
  // paused member, say) and land after the read. A write of the master known now, on the same condition the
  // lost one had, does: if it succeeds the lost one can no longer (and had not), and if it fails the lost one
  // landed first, and a read says when at the latest. Asked again while its own outcome is unknown (only one
  // of them can land: they share the condition).
  const settle = async () => {
    while (running) {
      try {
        return await writeMaster(master);
      } catch {
        await sleep(200);
      }
    }
  };
  let running = true;
  // A vanished instance: never chosen, and moved away from at once.
  let vanished: string | undefined;
  let hurry: () => void = () => {};
  const writer = (async () => {
    while (running) {
      await Promise.race([sleep(2000 + next() * 2000), new Promise<void>((resolve) => (hurry = resolve))]);
      if (!writing || !running) continue;
      let done: () => void = () => {};
      inFlight = new Promise((resolve) => (done = resolve));
      const choices = INSTANCES.filter((name) => name !== master && name !== vanished);
      const target = choices[Math.floor(next() * choices.length)]!;
      const sent = now();
      try {
        await writeMaster(target);
      } catch {
        history.add({ type: 'write-unknown', t: now(), sent, master: target });
        await settle();
      } finally {
        done();
      }
    }
  })();

  // Churn under the prefix (the registry ignores these keys) and outside it.
  const churn = (async () => {
    for (let n = 0; running; n++) {
      await sleep(500);
      await client.put(`${PREFIX}/meta/churn`).value(String(n)).exec().then(
        (r) => history.add({ type: 'churn', t: now(), revision: BigInt(r.header.revision) }),
        () => {},
      );
      await client.put(`/soak/elsewhere/${n % 50}`).value(String(n)).catch(() => {});
    }
  })();

  // Clients: a new connection every 100 ms, and two sessions held open (opened again when cut).
  const probes = (async () => {
    while (running) {
      const answered = await whoAnswers(port, '127.0.0.1', 1000);
      history.add({ type: 'probe', t: now(), answered });
      await sleep(100);
    }
  })();
  const held: Session[] = [];
  const holders = [0, 1].map(async () => {
    while (running) {
      const session = await Promise.race([openSession(port), sleep(2000).then(() => undefined)]);
      if (session) {
        held.push(session);
        await Promise.race([session.closed, (async () => {
          while (running) await sleep(200);
        })()]);
        session.close();
      }
      await sleep(100);
    }
  });

  // /healthz every 500 ms; haproxy masters every second.
  const healthz = (async () => {
    while (running) {
      const sample = await fetch(`http://127.0.0.1:${statusPort}/healthz`, { signal: AbortSignal.timeout(1000) }).then(
        async (r) => ({ status: r.status, body: await r.text() }),
        () => ({ status: 0, body: '' }),
      );
      history.add({ type: 'healthz', t: now(), ...sample });
      await sleep(500);
    }
  })();
  const processes = (async () => {
    while (running) {
      history.add({ type: 'haproxy-masters', t: now(), count: haproxyMasters() });
      await sleep(1000);
    }
  })();

  // Started as a process of its own, not through startAmbassador, whose cleanup would stop the haproxy of the
  // runtime dir it was given: here, the soak's own.
  const intrude = async (on: 'port' | 'runtime-dir') => {
    const otherStatus = (flag: string) => flag.replace(`--status=127.0.0.1:${statusPort}`, `--status=127.0.0.1:${statusPort + 1}`);
    const other = on === 'port' ? [...flags.map(otherStatus), `--runtime-dir=${join(dir, 'intruder')}`] : [...flags.map((flag) => otherStatus(flag).replace(`--port=${port}`, `--port=${port + 1}`)), `--runtime-dir=${runtimeDir}`];
    const [command, args] = ambassadorCommand('dist');
    const intruder = startProcess(command, [...args, ...other], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    intruder.stderr!.on('data', (data) => (stderr += data));
    const code = await Promise.race([new Promise<number | null>((resolve) => intruder.once('exit', resolve)), sleep(10_000).then(() => 'running' as const)]);
    if (code === 'running') await stopPid(intruder.pid!);
    const reason = stderr.split('\n').filter((line) => / ERROR /.test(line)).slice(-1)[0] ?? '';
    return { code: code === 'running' ? null : code, reason };
  };

  return {
    cluster,
    relays,
    ambassador: () => current,
    runtimeDir,
    runtimeFileSystem,
    statusPort,
    intrude,
    watched: () => {
      const pid = current?.child.pid;
      if (pid === undefined) return undefined;
      const ports = relays.map((relay) => Number(relay.endpoint.split(':')[1]));
      try {
        const connected = new Set(remoteEndpoints(pid).filter((e) => e.startsWith('127.0.0.1:')).map((e) => Number(e.split(':')[1])));
        const index = ports.findIndex((p) => connected.has(p));
        return index < 0 ? undefined : index;
      } catch {
        return undefined;
      }
    },
    master: () => master,
    vanish: (name) => {
      const address = addresses.get(name)!;
      const rules = [
        ['INPUT', '-d', address, '-j', 'DROP'],
        ['OUTPUT', '-s', address, '-j', 'DROP'],
      ];
      for (const rule of rules) iptables('-A', ...rule);
      vanished = name;
      setTimeout(() => hurry(), 1000);
      return () => {
        for (const rule of rules) iptables('-D', ...rule);
        vanished = undefined;
      };
    },
    pauseWriter: async () => {
      writing = false;
      await inFlight;
    },
    resumeWriter: () => {
      writing = true;
    },
    readMaster,
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
      running = false;
      stopping = true;
      await Promise.all([writer, churn, probes, healthz, processes]);
      for (const session of held) session.close();
      await Promise.all(holders);
      current?.child.kill('SIGCONT');
      current?.child.kill('SIGTERM');
      await supervisor;
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

// haproxy masters in this pid namespace: haproxy processes whose parent is not haproxy.
function haproxyMasters(): number {
  const comm = (pid: string) => {
    try {
      return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      return '';
    }
  };
  const parent = (pid: string) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]!;
    } catch {
      return '';
    }
  };
  return readdirSync('/proc').filter((pid) => /^\d+$/.test(pid) && comm(pid) === 'haproxy' && comm(parent(pid)) !== 'haproxy').length;
}
