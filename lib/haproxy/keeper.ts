// The runtime dir kept usable while haproxy runs: one deleted, or whose mode was changed, is made right again
// (lib/host/rundir.ts), with the files haproxy reads, and haproxy's master made to listen on its socket again
// by a reload: a master re-creates its socket on every reload, even one that fails.
// Done before the next change needs it, and every RUNTIME_DIR_CHECK_MS while all is quiet; never during a start
// or a reload. The reload's new worker listens on its admin socket again; until it does (or if the reload
// fails), the worker is reached through the master (lib/haproxy/admin.ts).

import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../common/log.ts';
import { restoreRuntimeDir, runtimeFiles, writePrivate } from '../host/rundir.ts';
import { answeringWorker, newestWorker, showProc } from './admin.ts';
import type { HaproxyProcess } from './process.ts';
import { noteStopped, RESEND_AFTER_MS, retireReplaced } from './reload.ts';

const RUNTIME_DIR_CHECK_MS = 5_000;
// How long the reload has to bring a new worker that answers, through the master's socket made again.
const RELOAD_DONE_MS = 10_000;

interface KeeperParts {
  runtimeDir: string;
  log: Logger;
  // The haproxy master now, and whether a change is being made.
  child(): HaproxyProcess | undefined;
  busy(): boolean;
  // Writes again the files haproxy reads on a reload (the config, the hold's script), lost with the dir: from
  // haproxy 3.2 a master whose reload finds no config file exits.
  filesLost(): Promise<void>;
  // The proxies a worker says stopped once it no longer accepts.
  proxies: readonly string[];
}

export function createDirKeeper(parts: KeeperParts) {
  const { runtimeDir, log } = parts;
  const { masterSocket, adminSocket, haproxyPid } = runtimeFiles(runtimeDir);
  const control = { masterSocket, adminSocket };
  let restored = 0;
  let restoring: Promise<void> | undefined;

  const restoreOnce = async (child: HaproxyProcess) => {
    const was = await restoreRuntimeDir(runtimeDir);
    if (was !== 'as it was') {
      restored++;
      log.warn(`haproxy: runtime dir ${runtimeDir} ${was}`);
      if (child.pid !== undefined) await writePrivate(haproxyPid, `${child.pid}\n`);
    }
    if (!child.running() || existsSync(masterSocket)) return;
    log.warn('haproxy: its sockets are gone; it reloads, its config written again, to listen on them again');
    await parts.filesLost();
    // Done once a worker the reload started answers (a runtime change sent before would miss it, and it would
    // serve the config file's state: a fence half applied, the old master still in, the new one added), and
    // the worker it replaced no longer accepts (a change the new one takes would not reach it).
    const before = new Set(child.workers());
    const stopped = new Map<number, Set<string>>();
    const unsubscribe = child.onLine((line) => noteStopped(line, stopped));
    try {
      child.signal('SIGHUP');
      let sentAt = performance.now();
      for (const deadline = performance.now() + RELOAD_DONE_MS; performance.now() < deadline; await sleep(10)) {
        if (!child.running()) return;
        // A master that has forked no new worker within RESEND_AFTER_MS lost the SIGHUP: it came while the
        // master re-executed itself, as it does once its first worker runs (its socket is no sign: that
        // re-execution makes it again too).
        if (!child.workers().some((pid) => !before.has(pid)) && performance.now() - sentAt >= RESEND_AFTER_MS) {
          log.warn(`haproxy: the master did not reload within ${RESEND_AFTER_MS / 1000} s of a SIGHUP; sending it again`);
          child.signal('SIGHUP');
          sentAt = performance.now();
        }
        const worker = existsSync(masterSocket) ? await answeringWorker(control, 500) : undefined;
        if (worker === undefined || before.has(worker)) continue;
        // The worker it replaced: the newest of those before.
        const replaced = newestWorker((await showProc(masterSocket))?.workers.filter((w) => before.has(w.pid)) ?? []);
        if (replaced !== undefined) await retireReplaced(replaced, parts.proxies, stopped, log);
        return;
      }
      log.error(`haproxy: no new worker answered on ${masterSocket} within ${RELOAD_DONE_MS / 1000} s of the reload`);
    } finally {
      unsubscribe();
    }
  };

  // The dir made right again, one restore at a time.
  const restore = (): Promise<void> => {
    const child = parts.child();
    if (child === undefined) return Promise.resolve();
    return (restoring ??= restoreOnce(child)
      .catch((err: Error) => log.error(`haproxy: runtime dir ${runtimeDir} cannot be made right: ${err.message}`))
      .finally(() => (restoring = undefined)));
  };

  // Whether the dir or haproxy's socket in it is gone or barred (a stat each: a few microseconds).
  const lost = () => !existsSync(runtimeDir) || !existsSync(masterSocket);
  const looking = setInterval(() => {
    if (parts.child()?.running() && !parts.busy() && lost()) void restore();
  }, RUNTIME_DIR_CHECK_MS);
  looking.unref();

  return {
    // Before a change: the dir made right if it needs it.
    ensure: async () => {
      if (parts.child()?.running() && lost()) await restore();
    },
    restored: () => restored,
    stop: () => clearInterval(looking),
  };
}
