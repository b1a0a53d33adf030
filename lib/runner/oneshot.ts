// --dry-run and --once: one consistent read of etcd, the config it gives, and then the report of it, or that
// config applied once. A failure is a SetupError: ambassador says it in one line and exits 1.

import { readFile } from 'node:fs/promises';
import type { Logger } from '../common/log.ts';
import { readSnapshot } from '../etcd/watch.ts';
import { applyOnce } from '../haproxy/once.ts';
import { refuseIfOwned, SetupError } from '../host/rundir.ts';
import { createRenderer } from '../render/render.ts';
import { chooseLayout } from '../service/layout.ts';
import { describeProblem } from '../service/problems.ts';
import { dryRunReport } from './dryrun.ts';
import type { HaproxySettings, Settings } from './settings.ts';

const READ_WITHIN_MS = 5_000;

async function readOnce(settings: Settings, log: Logger) {
  const layout = chooseLayout(settings.layout);
  const state = await readSnapshot({ ...settings.etcd, maxValueBytes: layout.maxValueBytes }, READ_WITHIN_MS).catch((err: Error) => {
    throw new SetupError(`etcd unreachable: ${err.message} (endpoints ${settings.etcd.endpoints.join(',')})`);
  });
  const selection = layout.select(state.mirror);
  for (const problem of selection.problems) log.warn(describeProblem(problem));
  return { revision: state.revision, selection, config: createRenderer(settings.render)(selection) };
}

// The config for the current state on stdout (a diff against the file in place), and a summary line.
export async function dryRun(settings: Settings, log: Logger): Promise<void> {
  const { revision, selection, config } = await readOnce(settings, log);
  const path = settings.host.configPath;
  // No file there yet is what a first run finds: the whole config is printed.
  const current = await readFile(path, 'utf8').catch(() => undefined);
  const report = dryRunReport(path, current, config, revision, selection.servers.length, selection.problems.length);
  process.stdout.write(report.output);
  log.info(report.summary);
}

export async function once(settings: Settings, haproxy: HaproxySettings, log: Logger): Promise<void> {
  await refuseIfOwned(settings.host.runtimeDir);
  const { revision, selection, config } = await readOnce(settings, log);
  const done = await applyOnce({ ...haproxy, log }, config);
  log.info(`once: revision ${revision} applied, haproxy ${done}`, { servers: selection.servers.length, config: settings.host.configPath });
}
