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
import { request } from './admin.ts';
import type { HaproxyProcess } from './process.ts';

const RUNTIME_DIR_CHECK_MS = 5_000;
// How long the master has to answer on its socket again after a SIGHUP.
const MASTER_SOCKET_BACK_MS = 5_000;

interface KeeperParts {
  runtimeDir: string;
  log: Logger;
  // The haproxy master now, and whether a change is being made.
  child(): HaproxyProcess | undefined;
  busy(): boolean;
  // Writes again the files haproxy reads on a reload (the config, the hold's script), lost with the dir: from
  // haproxy 3.2 a master whose reload finds no config file exits.
  filesLost(): Promise<void>;
}

export function createDirKeeper(parts: KeeperParts) {
  const { runtimeDir, log } = parts;
  const { masterSocket, haproxyPid } = runtimeFiles(runtimeDir);
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
    child.signal('SIGHUP');
    for (const deadline = performance.now() + MASTER_SOCKET_BACK_MS; performance.now() < deadline; await sleep(10)) {
      if (await request(masterSocket, 'show proc', 500).then(() => true, () => false)) return;
    }
    log.error(`haproxy: the master did not listen on ${masterSocket} again within ${MASTER_SOCKET_BACK_MS / 1000} s`);
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
