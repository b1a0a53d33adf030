// The runtime path: a change carried out through haproxy's runtime API as lib/render/plan.ts plans it, step by
// step, each confirmed — the fence (lib/haproxy/fence.ts), the changes, the moved addresses read back, the
// enables — with no reload. What haproxy runs is kept in `Live`, which the driver's other parts share.

import { setTimeout as sleep } from 'node:timers/promises';
import { hostPort } from '../common/address.ts';
import type { Logger } from '../common/log.ts';
import { afterFence, fencedTable, planChange, type ServerAddress, type ServerTable } from '../render/plan.ts';
import { runtimeCommands, serverAddresses, type WorkerControl } from './admin.ts';
import type { createFence } from './fence.ts';
import type { Wanted } from './queue.ts';

// What the driver knows haproxy runs, and what it counts of the runtime path.
export interface Live {
  servers: ServerTable;
  runtimeFallbacks: number;
  // Until when a "no server available" from haproxy is the echo of a fence we made, not news.
  fenceEchoUntil: number;
}

interface RuntimeParts {
  control: WorkerControl;
  fence: ReturnType<typeof createFence>;
  log: Logger;
  // Master-only: a server that stops being the master is fenced first.
  fencing: boolean;
  // A replica that leaves the replica port has its sessions shut down.
  cutReplicas: boolean;
  // A reload to this config (checked and installed first): true once haproxy runs it.
  reloadTo(config: string): Promise<boolean>;
  // Deletes drained servers soon.
  sweepSoon(): void;
  // New connections are held (lib/render/hold.ts): a fence closes their gate first.
  holding: boolean;
}

// Small enough for haproxy's command line buffer; a failover's few commands always go in one.
const COMMANDS_PER_REQUEST = 40;
const POLL_MS = 1;
// haproxy's task applies an address within a turn of its loop.
const ADDRESS_CONFIRM_MS = 2_000;
// A fence leaves the proxy without a server for the instant before the enable that follows it in the same
// request; haproxy's alert about it arrives within a few ms.
const FENCE_ECHO_MS = 250;
// After the gate closes, long enough for a connection that found the proxy open just before to be given its
// server (microseconds, on a thread haproxy does not preempt).
const GATE_SETTLE_MS = 10;

// Makes `target` live at run time. False when it needs a reload instead (a fence it needed is made first).
// `configOf` renders a table, for the reload that ends a frozen fence.
export function createRuntimePath(live: Live, parts: RuntimeParts) {
  const { control, fence, log } = parts;

  const sendCommands = async (commands: readonly string[]): Promise<boolean> => {
    for (let i = 0; i < commands.length; i += COMMANDS_PER_REQUEST) {
      const batch = commands.slice(i, i + COMMANDS_PER_REQUEST);
      const failure = await runtimeCommands(control, batch);
      if (failure !== undefined) {
        log.warn(`haproxy: runtime commands failed, reloading instead: ${batch.join('; ')}`, { answer: failure });
        live.runtimeFallbacks++;
        return false;
      }
      for (const command of batch) log.debug(`haproxy: ${command}`);
    }
    return true;
  };

  // Waits until haproxy runs each moved server at its new address (from 2.9 it applies one after answering),
  // within ADDRESS_CONFIRM_MS; false if it does not, for a reload to make sure.
  const confirmAddresses = async (moved: readonly ServerAddress[]): Promise<boolean> => {
    const deadline = performance.now() + ADDRESS_CONFIRM_MS;
    const proxies = [...new Set(moved.map(({ id }) => id.slice(0, id.indexOf('/'))))];
    for (;;) {
      const running = new Map<string, string>();
      // An answer that cannot be read is asked again until the bound, like one that is not there yet.
      for (const proxy of proxies) for (const [id, at] of await serverAddresses(control, proxy).catch(() => new Map<string, string>())) running.set(id, at);
      const pending = moved.filter(({ id, address, port }) => running.get(id) !== hostPort(address, port));
      if (pending.length === 0) return true;
      if (performance.now() >= deadline) {
        log.warn(`haproxy: ${pending.map(({ id }) => id).join(', ')} not at the new address ${ADDRESS_CONFIRM_MS} ms after the change; reloading instead`);
        live.runtimeFallbacks++;
        return false;
      }
      await sleep(POLL_MS);
    }
  };

  // Holds every new connection to these proxies (close), or lets them on (open). A gate that cannot be set is
  // said and the fence goes on: connections are then held only while no server is usable.
  const gate = async (proxies: readonly string[], state: 'close' | 'open') => {
    if (proxies.length === 0) return;
    const failure = await runtimeCommands(control, proxies.map((proxy) => `ambassador gate ${proxy} ${state}`));
    if (failure !== undefined) log.warn(`haproxy: cannot ${state} the hold's gate of ${proxies.join(', ')}: ${failure}`);
    else if (state === 'close') await sleep(GATE_SETTLE_MS);
  };

  const applyAtRuntime = async (target: ServerTable, configOf: Wanted['configOf']): Promise<boolean> => {
    const plan = planChange(live.servers, target, { fence: parts.fencing, cutReplicas: parts.cutReplicas });
    if (plan.kind === 'none') return true;
    const gated = parts.holding ? [...new Set(plan.fenced.map(({ id }) => id.slice(0, id.indexOf('/'))))] : [];
    await gate(gated, 'close');
    try {
      return await carryOut(plan, target, configOf);
    } finally {
      await gate(gated, 'open');
    }
  };

  const carryOut = async (plan: Exclude<ReturnType<typeof planChange>, { kind: 'none' }>, target: ServerTable, configOf: Wanted['configOf']): Promise<boolean> => {
    const served = [...target.proxies.values()].some((servers) => servers.some((server) => server.enabled));
    live.fenceEchoUntil = plan.fence.length > 0 && served ? performance.now() + FENCE_ECHO_MS : 0;
    const fenced = await fence.run(plan.fence, plan.fenced, sendCommands);
    if (fenced === 'failed') return false;
    if (fenced === 'frozen') {
      // A reload to the fenced state (the new master still closed) leaves the frozen streams to the old worker,
      // which the fence stops; then the rest of the change, from there.
      const closed = fencedTable(target);
      if (!(await parts.reloadTo(configOf(closed)))) return false;
      live.servers = closed;
      await fence.confirm(plan.fenced);
      return applyAtRuntime(target, configOf);
    }
    if (plan.kind === 'reload') {
      live.servers = afterFence(live.servers, plan.fenced);
      log.info(`haproxy: reloading, the runtime API cannot do this change: ${plan.reason}`);
      return false;
    }
    if (!(await sendCommands(plan.changes))) return false;
    if (plan.moved.length > 0 && !(await confirmAddresses(plan.moved))) return false;
    if (!(await sendCommands(plan.enables))) return false;
    live.servers = plan.next;
    if (live.servers.draining.size > 0) parts.sweepSoon();
    return true;
  };

  return applyAtRuntime;
}
