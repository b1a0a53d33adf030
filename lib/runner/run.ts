// ambassador running: the parts made from their settings and tied together, data flowing one way — the etcd
// watch hands each state on to the follower, which selects, renders and hands the wanted state to the haproxy
// driver — and the status page reading all three. What ends the run (a signal, haproxy's exit) is ambassador.ts's
// to decide; this says how to stop and resync.

import { hostPort } from '../common/address.ts';
import type { Logger } from '../common/log.ts';
import { watchPrefix } from '../etcd/watch.ts';
import { createHaproxy, type HaproxyExit } from '../haproxy/driver.ts';
import { releaseRuntimeDir } from '../host/rundir.ts';
import { createRenderer } from '../render/render.ts';
import { chooseLayout } from '../service/layout.ts';
import { createStatus, type StatusSnapshot } from '../status/status.ts';
import { createFollower } from './follow.ts';
import type { HaproxySettings, Settings } from './settings.ts';

export interface Running {
  // Drops the etcd watch for a fresh snapshot, and tries the newest state again even if haproxy refused it.
  resync(): void;
  // Resolves when haproxy's master exits for any reason other than stop().
  haproxyExit: Promise<HaproxyExit>;
  // haproxy's master, while it runs: it must not outlive ambassador.
  haproxyPid(): number | undefined;
  stop(): Promise<void>;
}

// How long the watch may take to let go of etcd when stopping.
const WATCH_STOP_MS = 2_000;

export async function run(settings: Settings, haproxySettings: HaproxySettings, log: Logger, version: string): Promise<Running> {
  const layout = chooseLayout(settings.layout);
  const haproxy = createHaproxy(haproxySettings, log);
  const statusSnapshot = (): StatusSnapshot => {
    const { selection, revision } = follower.newest();
    const rejected = new Set(selection.problems.flatMap((problem) => (problem.notice ? [] : (problem.instance ?? []))));
    return {
      version,
      prefix: settings.layout.prefix,
      masterOnly: settings.masterOnly,
      revision,
      etcd: watch.stats(),
      haproxy: haproxy.stats(),
      servers: selection.servers,
      replicas: selection.replicas,
      instancesRejected: rejected.size,
      master: selection.master,
      problems: selection.problems,
      lastChange: follower.lastChange(),
    };
  };
  const status = settings.status === undefined ? undefined : createStatus(statusSnapshot, settings.status.maxStaleMs, () => haproxy.traffic());
  const follower = createFollower({
    routingKeys: layout.routingKeys,
    select: layout.select,
    render: createRenderer(settings.render),
    apply: (wanted) => haproxy.apply(wanted),
    idle: () => haproxy.idle(),
    log,
    masterOnly: settings.masterOnly,
    problemsFound: (count) => status?.problemsFound(count),
    changeApplied: (path, seconds) => status?.changeApplied(path, seconds),
  });
  const watch = watchPrefix({ ...settings.etcd, routingKeys: layout.routingKeys, maxValueBytes: layout.maxValueBytes }, log, (state, keys) => follower.changed(state, keys));
  const stop = async () => {
    await Promise.race([watch.stop(), new Promise((resolve) => setTimeout(resolve, WATCH_STOP_MS))]);
    await status?.close();
    await haproxy.stop();
    await releaseRuntimeDir(settings.host.runtimeDir);
  };
  if (status !== undefined && settings.status !== undefined) {
    try {
      await status.listen(settings.status.host, settings.status.port);
      log.info(`status: serving /healthz, /metrics and /state on http://${hostPort(settings.status.host, settings.status.port)}`);
    } catch (err) {
      await stop();
      throw new Error(`status: cannot listen on ${settings.status.host}:${settings.status.port}: ${(err as Error).message}`);
    }
  }
  return {
    resync: () => {
      watch.resync();
      haproxy.retryNow();
    },
    haproxyExit: haproxy.unexpectedExit,
    haproxyPid: () => haproxy.stats().masterPid,
    stop,
  };
}
