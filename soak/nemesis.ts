// The nemesis: each fault of the schedule carried out on the soak's world, and healed. A fault that picks its
// member when it starts (the watched one, the leader) says which in the history.

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { processOf, signal } from '../harness/processes.ts';
import { workerPids } from '../harness/haproxy.ts';
import { now, type History } from './history.ts';
import type { Fault, FaultKind } from './schedule.ts';
import type { SoakWorld } from './world.ts';

export interface Injected {
  heal(): Promise<void>;
}

const none: Injected = { heal: async () => {} };

// What a fault carries out with: the world, the fault, the history (`started` writes its start, with its
// target), the member it picks, and a seeded random source.
interface Context {
  world: SoakWorld;
  fault: Fault;
  history: History;
  random: () => number;
  started(target?: string): void;
  member(which: 'fixed' | 'watched' | 'leader'): Promise<number>;
}

export async function inject(world: SoakWorld, fault: Fault, history: History, random: () => number): Promise<Injected> {
  const context: Context = {
    world,
    fault,
    history,
    random,
    started: (target) => history.add({ type: 'fault-start', t: now(), id: fault.id, kind: fault.kind, ...(target !== undefined ? { target } : {}) }),
    member: async (which) => {
      if (which === 'fixed') return fault.member!;
      if (which === 'watched') return world.watched() ?? Math.floor(random() * 3);
      return world.cluster.leader().catch(() => Math.floor(random() * 3));
    },
  };
  return FAULTS[fault.kind](context);
}

const partition = (which: 'fixed' | 'watched') => async ({ world, started, member }: Context): Promise<Injected> => {
  const m = await member(which);
  started(`m${m + 1}`);
  world.cluster.partition(m);
  return { heal: async () => world.cluster.heal(m) };
};

const pause = (which: 'fixed' | 'leader') => async ({ world, started, member }: Context): Promise<Injected> => {
  const m = await member(which);
  started(`m${m + 1}`);
  world.cluster.pause(m);
  return { heal: async () => world.cluster.resume(m) };
};

const kill = (which: 'fixed' | 'leader') => async ({ world, started, member }: Context): Promise<Injected> => {
  const m = await member(which);
  started(`m${m + 1}`);
  await world.cluster.kill(m);
  return { heal: () => world.cluster.start(m) };
};

// A signal to ambassador itself; `heal`, the signal that undoes it.
const signalAmbassador = (name: NodeJS.Signals, heal?: NodeJS.Signals) => async ({ world, started }: Context): Promise<Injected> => {
  const pid = world.ambassador()?.child.pid;
  started(String(pid));
  if (pid !== undefined) signal(pid, name);
  return heal === undefined || pid === undefined ? none : { heal: async () => signal(pid, heal) };
};

// haproxy's master, or its current worker.
const haproxyPid = (world: SoakWorld, which: 'master' | 'worker') => {
  const master = world.ambassador()?.haproxyPid();
  return which === 'master' || master === undefined ? master : workerPids(master)[0];
};

const FAULTS: Record<FaultKind, (context: Context) => Promise<Injected>> = {
  'partition-member': partition('fixed'),
  'partition-watched': partition('watched'),
  'pause-member': pause('fixed'),
  'pause-leader': pause('leader'),
  'kill-member': kill('fixed'),
  'kill-leader': kill('leader'),
  'replace-member': async ({ world, fault, started }) => {
    started(`m${fault.member! + 1}`);
    await world.cluster.replace(fault.member!);
    return none;
  },
  'compact-disconnected': async ({ world, started }) => {
    started('every member');
    for (const relay of world.relays) relay.partition();
    return {
      heal: async () => {
        await world.cluster.compact().catch(() => {});
        for (const relay of world.relays) relay.heal();
      },
    };
  },
  'blackhole-watched': async ({ world, started, member }) => {
    const m = await member('watched');
    started(`m${m + 1}`);
    world.relays[m]!.partition();
    return { heal: async () => world.relays[m]!.heal() };
  },
  latency: async ({ world, started, random }) => {
    const ms = 200 + Math.floor(random() * 400);
    started(`${ms} ms each way`);
    for (const relay of world.relays) relay.delay(ms);
    return { heal: async () => world.relays.forEach((relay) => relay.delay(0)) };
  },
  'kill-ambassador': signalAmbassador('SIGKILL'),
  'pause-ambassador': signalAmbassador('SIGSTOP', 'SIGCONT'),
  sighup: signalAmbassador('SIGHUP'),
  'kill-haproxy-worker': async ({ world, started }) => {
    const worker = haproxyPid(world, 'worker');
    started(String(worker));
    if (worker !== undefined) signal(worker, 'SIGKILL');
    return none;
  },
  'kill-haproxy-master': async ({ world, started }) => {
    const master = haproxyPid(world, 'master');
    started(String(master));
    if (master !== undefined) signal(master, 'SIGKILL');
    return none;
  },
  'oom-haproxy-worker': async ({ world, started }) => {
    const worker = haproxyPid(world, 'worker');
    started(worker === undefined ? 'no worker' : `${worker}: ${await oomKill(worker)}`);
    return none;
  },
  'vanish-master': async ({ world, started }) => {
    const name = world.master();
    started(name);
    const undo = world.vanish(name);
    return { heal: async () => undo() };
  },
  'write-burst': async ({ world, started }) => {
    started('500 writes');
    await world.burst(500);
    return none;
  },
  'delete-runtime-dir': async ({ world, started }) => {
    started(world.runtimeDir);
    rmSync(world.runtimeDir, { recursive: true, force: true });
    return none;
  },
  'runtime-dir-read-only': async ({ world, started }) => {
    started(world.runtimeDir);
    execFileSync('mount', ['--bind', world.runtimeDir, world.runtimeDir]);
    execFileSync('mount', ['-o', 'remount,bind,ro', world.runtimeDir]);
    return { heal: async () => void execFileSync('umount', [world.runtimeDir]) };
  },
  'disk-full': async ({ world, started }) => {
    const filler = join(world.runtimeFileSystem, 'filler');
    const { bavail, bsize } = statfsSync(world.runtimeFileSystem);
    started(`${bavail * bsize} bytes`);
    writeFileSync(filler, Buffer.alloc(bavail * bsize));
    return { heal: async () => rmSync(filler, { force: true }) };
  },
  'file-limit': async ({ world, started }) => {
    const pid = world.ambassador()?.child.pid;
    if (pid === undefined) {
      started('no ambassador');
      return none;
    }
    const limits = execFileSync('prlimit', [`--pid=${pid}`, '--nofile', '--output=SOFT,HARD', '--noheadings'], { encoding: 'utf8' }).trim().split(/\s+/);
    const inUse = readdirSync(`/proc/${pid}/fd`).length;
    started(`${inUse} of ${limits[0]}`);
    execFileSync('prlimit', [`--pid=${pid}`, `--nofile=${inUse}:${limits[1]}`]);
    // An ambassador that exited meanwhile (and was restarted) took its limit with it.
    return { heal: async () => void spawnSync('prlimit', [`--pid=${pid}`, `--nofile=${limits[0]}:${limits[1]}`], { stdio: 'ignore' }) };
  },
  'status-flood': async ({ world, started }) => {
    started('300 idle connections');
    const sockets: Socket[] = Array.from({ length: 300 }, () => connect(world.statusPort, '127.0.0.1').on('error', () => {}));
    return { heal: async () => sockets.forEach((socket) => socket.destroy()) };
  },
  'second-ambassador': async ({ world, history, started }) => {
    started('on its port, then in its runtime dir');
    for (const on of ['port', 'runtime-dir'] as const) history.add({ type: 'intruder', t: now(), on, ...(await world.intrude(on)) });
    return none;
  },
  'burst-during-leader-change': async ({ world, fault, history, started }) => {
    started('500 writes');
    const moved = world.cluster.moveLeader().then(
      (to) => `to m${to + 1}`,
      (err: Error) => `not moved: ${err.message}`,
    );
    await world.burst(500);
    history.add({ type: 'fault-note', t: now(), id: fault.id, note: `leadership ${await moved}` });
    return none;
  },
};

// The OOM killer on an haproxy worker: the worker moved into a memory cgroup (v1) whose limit is what it
// uses now, so that its next allocations (the probes' buffers) make the kernel kill it; if it has not within
// a second, SIGKILL under that pressure. Says which it was.
const MEMORY_CGROUPS = '/sys/fs/cgroup/memory';

async function oomKill(worker: number): Promise<string> {
  const alive = processOf(worker);
  if (!existsSync(MEMORY_CGROUPS)) {
    signal(worker, 'SIGKILL');
    return 'SIGKILL (no memory cgroup here)';
  }
  const group = `${MEMORY_CGROUPS}/ambassador-soak-${process.pid}-${worker}`;
  mkdirSync(group);
  try {
    writeFileSync(`${group}/cgroup.procs`, String(worker));
    const usage = Number(readFileSync(`${group}/memory.usage_in_bytes`, 'utf8'));
    // A limit below what the kernel can reclaim is refused: then a page above it.
    try {
      writeFileSync(`${group}/memory.limit_in_bytes`, String(usage));
    } catch {
      writeFileSync(`${group}/memory.limit_in_bytes`, String(usage + 4096));
    }
    for (let waited = 0; waited < 1000 && alive(); waited += 20) await sleep(20);
    if (!alive()) return 'killed by the OOM killer';
    signal(worker, 'SIGKILL');
    return 'SIGKILL under memory pressure';
  } finally {
    for (let waited = 0; waited < 2000 && alive(); waited += 20) await sleep(20);
    // The dead worker leaves the group once its parent has reaped it.
    for (let waited = 0; waited < 5000; waited += 50) {
      try {
        rmdirSync(group);
        break;
      } catch {
        await sleep(50);
      }
    }
  }
}
