// The reload protocol, confirmed by haproxy itself rather than read off the timing of log lines, the same way on
// haproxy 2.6 to 3.4: SIGHUP only once the master CLI answers; the master's `show proc` must show its reload
// counter move; then the reload is done when a worker that was not there before answers on the admin socket
// (a worker answers there only once its config is loaded: from 3.1 the master lists the new worker before
// that), and refused when the master counts the reload failed (or, from 3.1, has no current worker left). The
// worker it replaced counts as gone once it says its proxies stopped, or has exited.

import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../common/log.ts';
import { answeringWorker, newestWorker, showProc, type ProcessList, type WorkerControl } from './admin.ts';
import { isAlive } from './process.ts';

export type Load = { kind: 'loaded' } | { kind: 'refused'; reason: string } | { kind: 'failed'; reason: string };

// The haproxy master being reloaded: our child, or a daemon an earlier --once started (whose output is not ours).
interface ReloadTarget {
  masterSocket: string;
  control: WorkerControl;
  signal(name: NodeJS.Signals): void;
  running(): boolean;
  onLine?(listener: (line: string) => void): () => void;
}

// haproxy drops a SIGHUP that comes while it loads, or in the few ms after a load while its master
// re-executes itself (all of 60 sent 0-5 ms after "Loading success"; none once the CLI answers; the test
// "reloads back to back lose no SIGHUP" in test/e2e/runtime.test.ts): a SIGHUP waits until the master CLI answers.
const MASTER_READY_MS = 5_000;
// A master that answers with an unmoved counter this long after a SIGHUP did not get it: send it again.
export const RESEND_AFTER_MS = 1_000;
// 10,000 servers load in ~0.7 s here.
const LOAD_TIMEOUT_MS = 60_000;
// For a few ms after the new worker is up, the one it replaces can still accept connections on the old state,
// until the master's soft-stop reaches it (in the same ms here, under load too). A change made on the new
// worker meanwhile would not reach it, so a reload is done only once it says its proxies stopped; one that
// never says so is not waited on longer than this.
const OLD_WORKER_STOP_MS = 2_000;
const POLL_MS = 5;

// haproxy may put the context of the last thing its thread did between the pid and the message
// ("(4242) : CLI : Proxy service stopped", after a runtime command on that thread).
const PROXY_STOPPED = /^\[WARNING\]\s+\((\d+)\) : (?:.* : )?Proxy (\S+) stopped \(/;

export async function reload(target: ReloadTarget, proxies: readonly string[], log: Logger): Promise<Load> {
  const before = await masterAnswer(target, MASTER_READY_MS);
  if (before === undefined) return { kind: 'failed', reason: `the haproxy master CLI did not answer within ${MASTER_READY_MS / 1000} s` };
  const known = new Set(before.workers.map((worker) => worker.pid));
  const replaced = newestWorker(before.workers.filter((worker) => !worker.leaving));
  const stopped = new Map<number, Set<string>>();
  const alerts: string[] = [];
  const unsubscribe = target.onLine?.((line) => {
    if (line.startsWith('[ALERT]')) alerts.push(line);
    noteStopped(line, stopped);
  });
  try {
    const loaded = await load(target, before, known, log);
    if (loaded.kind === 'refused') return { kind: 'refused', reason: alerts.slice(-5).join(' | ') || loaded.reason };
    if (loaded.kind === 'failed') return loaded;
    if (replaced !== undefined && target.onLine) await retireReplaced(replaced, proxies, stopped, log);
    return loaded;
  } finally {
    unsubscribe?.();
  }
}

// The first load of a master just started: done when a worker answers on the admin socket.
export async function firstLoad(target: ReloadTarget): Promise<Load> {
  const deadline = performance.now() + LOAD_TIMEOUT_MS;
  while (performance.now() < deadline) {
    if (!target.running()) return { kind: 'failed', reason: 'haproxy exited while starting' };
    if ((await answeringWorker(target.control, 500)) !== undefined) return { kind: 'loaded' };
    await sleep(POLL_MS);
  }
  return { kind: 'failed', reason: `haproxy did not start a worker within ${LOAD_TIMEOUT_MS / 1000} s` };
}

async function load(target: ReloadTarget, before: ProcessList, known: Set<number>, log: Logger): Promise<Load> {
  target.signal('SIGHUP');
  let sentAt = performance.now();
  let reexecuted = false;
  const deadline = sentAt + LOAD_TIMEOUT_MS;
  while (performance.now() < deadline) {
    if (!target.running()) return { kind: 'failed', reason: 'the haproxy master exited during the reload' };
    // While the master re-executes itself, it does not answer; undefined then.
    const list = await showProc(target.masterSocket, 500);
    if (list !== undefined && list.reloads > before.reloads) {
      reexecuted = true;
      const current = list.workers.filter((worker) => !worker.leaving);
      if (list.failedReloads > before.failedReloads || (list.failedReloads > 0 && current.length === 0)) {
        return { kind: 'refused', reason: 'haproxy could not load the config' };
      }
    } else if (list !== undefined && !reexecuted && performance.now() - sentAt >= RESEND_AFTER_MS) {
      log.warn(`haproxy: the master answers but did not reload within ${RESEND_AFTER_MS / 1000} s of a SIGHUP; sending it again`);
      target.signal('SIGHUP');
      sentAt = performance.now();
    }
    if (reexecuted) {
      const answering = await answeringWorker(target.control, 500);
      if (answering !== undefined && !known.has(answering)) return { kind: 'loaded' };
    }
    await sleep(POLL_MS);
  }
  return { kind: 'failed', reason: `haproxy did not finish loading within ${LOAD_TIMEOUT_MS / 1000} s` };
}

// A worker's line saying one of its proxies stopped, noted in `stopped` (pid → proxies).
export function noteStopped(line: string, stopped: Map<number, Set<string>>): void {
  const match = PROXY_STOPPED.exec(line);
  if (match) stopped.set(Number(match[1]), (stopped.get(Number(match[1])) ?? new Set()).add(match[2]!));
}

// Done once the worker a reload replaced has stopped its proxies (no longer accepts), or exited.
export async function retireReplaced(replaced: number, proxies: readonly string[], stopped: ReadonlyMap<number, Set<string>>, log: Logger): Promise<void> {
  const gone = () => proxies.every((proxy) => stopped.get(replaced)?.has(proxy)) || !isAlive(replaced);
  const bound = performance.now() + OLD_WORKER_STOP_MS;
  while (!gone() && performance.now() < bound) await sleep(POLL_MS);
  if (!gone()) log.warn(`haproxy: the worker ${replaced} the reload replaced has not said its proxies stopped ${OLD_WORKER_STOP_MS / 1000} s after the new one answered; a change made now may not reach what it still accepts`);
}

async function masterAnswer(target: ReloadTarget, withinMs: number): Promise<ProcessList | undefined> {
  const deadline = performance.now() + withinMs;
  while (performance.now() < deadline && target.running()) {
    const list = await showProc(target.masterSocket, 500);
    if (list !== undefined) return list;
    await sleep(POLL_MS);
  }
  return undefined;
}
