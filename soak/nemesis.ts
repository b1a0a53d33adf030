// The nemesis: each fault of the schedule carried out on the soak's world, and healed. A fault that picks its
// member when it starts (the watched one, the leader) says which in the history.

import { signal } from '../test/helpers/processes.ts';
import { workerPids } from '../test/helpers/haproxy.ts';
import { now, type History } from './history.ts';
import type { Fault } from './schedule.ts';
import type { SoakWorld } from './world.ts';

export interface Injected {
  heal(): Promise<void>;
}

const none: Injected = { heal: async () => {} };

export async function inject(world: SoakWorld, fault: Fault, history: History, random: () => number): Promise<Injected> {
  const { cluster, relays } = world;
  const started = (target?: string) => history.add({ type: 'fault-start', t: now(), id: fault.id, kind: fault.kind, ...(target !== undefined ? { target } : {}) });
  const member = async (which: 'fixed' | 'watched' | 'leader'): Promise<number> => {
    if (which === 'fixed') return fault.member!;
    if (which === 'watched') return world.watched() ?? Math.floor(random() * 3);
    return cluster.leader().catch(() => Math.floor(random() * 3));
  };
  const ambassadorPid = () => world.ambassador()?.child.pid;

  switch (fault.kind) {
    case 'partition-member':
    case 'partition-watched': {
      const m = await member(fault.kind === 'partition-member' ? 'fixed' : 'watched');
      started(`m${m + 1}`);
      cluster.partition(m);
      return { heal: async () => cluster.heal(m) };
    }
    case 'pause-member':
    case 'pause-leader': {
      const m = await member(fault.kind === 'pause-member' ? 'fixed' : 'leader');
      started(`m${m + 1}`);
      cluster.pause(m);
      return { heal: async () => cluster.resume(m) };
    }
    case 'kill-member':
    case 'kill-leader': {
      const m = await member(fault.kind === 'kill-member' ? 'fixed' : 'leader');
      started(`m${m + 1}`);
      await cluster.kill(m);
      return { heal: () => cluster.start(m) };
    }
    case 'replace-member': {
      started(`m${fault.member! + 1}`);
      await cluster.replace(fault.member!);
      return none;
    }
    case 'compact-disconnected': {
      started('every member');
      for (const relay of relays) relay.partition();
      return {
        heal: async () => {
          await cluster.compact().catch(() => {});
          for (const relay of relays) relay.heal();
        },
      };
    }
    case 'blackhole-watched': {
      const m = await member('watched');
      started(`m${m + 1}`);
      relays[m]!.partition();
      return { heal: async () => relays[m]!.heal() };
    }
    case 'latency': {
      const ms = 200 + Math.floor(random() * 400);
      started(`${ms} ms each way`);
      for (const relay of relays) relay.delay(ms);
      return { heal: async () => relays.forEach((relay) => relay.delay(0)) };
    }
    case 'kill-ambassador': {
      const pid = ambassadorPid();
      started(String(pid));
      if (pid !== undefined) signal(pid, 'SIGKILL');
      return none;
    }
    case 'pause-ambassador': {
      const pid = ambassadorPid();
      started(String(pid));
      if (pid !== undefined) signal(pid, 'SIGSTOP');
      return { heal: async () => void (pid !== undefined && signal(pid, 'SIGCONT')) };
    }
    case 'kill-haproxy-worker': {
      const master = world.ambassador()?.haproxyPid();
      const worker = master === undefined ? undefined : workerPids(master)[0];
      started(String(worker));
      if (worker !== undefined) signal(worker, 'SIGKILL');
      return none;
    }
    case 'write-burst': {
      started('500 writes');
      await world.burst(500);
      return none;
    }
    case 'sighup': {
      const pid = ambassadorPid();
      started(String(pid));
      if (pid !== undefined) signal(pid, 'SIGHUP');
      return none;
    }
  }
}
