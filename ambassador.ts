#!/usr/bin/env node
// ambassador: proxies a local port to the instances of one service registered in etcd, through an haproxy it owns.
// This file only wires the parts together and owns the process: options → watch → registry → render → haproxy,
// plus signals and exit codes (0 stopped cleanly, 1 failed, 2 usage error).

import packageJson from './package.json' with { type: 'json' };
import { createHaproxy, claimRuntimeDir, findSetpriv, haproxyVersion, prepareRuntimeDir, releaseRuntimeDir, SetupError } from './lib/haproxy.ts';
import { createLogger, quote, type Logger } from './lib/log.ts';
import { parseCommandLine, usage } from './lib/options.ts';
import { serverTable } from './lib/plan.ts';
import { readService, selectServers, type Problem, type Selection } from './lib/registry.ts';
import { renderConfig, type RenderSettings } from './lib/render.ts';
import { readSnapshot, watchPrefix, type EtcdSettings } from './lib/watch.ts';

// Set by the build (build/build.ts); absent when run from source.
declare const BUILD_COMMIT: string | undefined;
const version = `${packageJson.version} (${typeof BUILD_COMMIT === 'string' ? BUILD_COMMIT : 'source'})`;

const parsed = parseCommandLine(process.argv.slice(2), process.env);
if (parsed.kind === 'help') {
  process.stdout.write(usage() + '\n');
  process.exit(0);
}
if (parsed.kind === 'version') {
  process.stdout.write(`ambassador ${version}\n`);
  process.exit(0);
}
if (parsed.kind === 'usage-error') {
  process.stderr.write(`ambassador: ${parsed.message}\nTry 'ambassador --help' for the flags and their defaults.\n`);
  process.exit(2);
}

const options = parsed.options;
const log = createLogger({ format: options.logFormat, level: options.logLevel });
for (const warning of parsed.warnings) log.warn(warning);

const etcd: EtcdSettings = {
  endpoints: options.etcd,
  prefix: options.etcdPrefix,
  ca: options.etcdCa,
  cert: options.etcdCert,
  key: options.etcdKey,
  user: options.etcdUser,
  password: options.etcdPassword,
  passwordFile: options.etcdPasswordFile,
};
const registrySettings = { prefix: options.etcdPrefix, public: options.public, backendPort: options.backendPort, masterOnly: options.masterOnly };
const renderSettings: RenderSettings = {
  prefix: options.etcdPrefix,
  bind: options.bind,
  port: options.port,
  hardStopAfter: options.hardStopAfter,
  adminSocket: `${options.runtimeDir}/admin.sock`,
};

const select = (mirror: ReadonlyMap<string, string>): Selection => selectServers(readService(mirror, registrySettings), registrySettings);

if (options.dryRun) {
  try {
    const { mirror, revision } = await readSnapshot(etcd, 5_000);
    const selection = select(mirror);
    process.stdout.write(renderConfig(renderSettings, selection.servers));
    for (const problem of selection.problems) log.warn(problemText(problem));
    log.info(`dry run: revision ${revision}, ${selection.servers.length} server(s), ${selection.problems.length} problem(s)`);
    process.exit(0);
  } catch (err) {
    log.error(`dry run: etcd unreachable: ${(err as Error).message}`, { endpoints: options.etcd.join(',') });
    process.exit(1);
  }
}

log.info(`ambassador ${version} starting`, { prefix: options.etcdPrefix, listen: `${options.bind}:${options.port}`, master_only: options.masterOnly });
const setpriv = await findSetpriv(process.env);
if (!setpriv) log.warn('setpriv (util-linux) not found: if ambassador is killed, its haproxy keeps running until ambassador is restarted');
const haproxySettings = {
  binary: options.haproxy,
  configPath: options.haproxyConfig,
  runtimeDir: options.runtimeDir,
  adminSocket: renderSettings.adminSocket,
  apply: options.apply,
  fence: options.masterOnly,
  log,
  setpriv,
};
try {
  await prepareRuntimeDir(options.runtimeDir, log);
  log.info(`using ${await haproxyVersion(options.haproxy)}`, { runtime_dir: options.runtimeDir });
  await claimRuntimeDir(haproxySettings);
} catch (err) {
  log.error(err instanceof SetupError ? err.message : `cannot set up ${options.runtimeDir}: ${(err as Error).message}`);
  process.exit(1);
}

const haproxy = createHaproxy(haproxySettings);
// Whatever ends this process, haproxy must not outlive it holding the port.
process.on('exit', () => {
  const pid = haproxy.masterPid();
  if (pid !== undefined) process.kill(pid, 'SIGTERM');
});

const reportProblems = problemReporter(log);
let applied: Selection | undefined;
let updateQueued = false;

// Runs once per burst of etcd events (they arrive within one tick), always on the newest state.
const update = () => {
  updateQueued = false;
  const { mirror, revision } = watch.state();
  const selection = select(mirror);
  reportProblems(selection.problems);
  const wanted = { config: renderConfig(renderSettings, selection.servers), servers: serverTable(selection.servers) };
  void haproxy.apply(wanted).then(({ outcome, path, ms }) => {
    if (outcome !== 'applied') return;
    log.info(`applied revision ${revision}: ${describeChange(applied, selection)} (${path}, ${ms} ms)`, { servers: selection.servers.length });
    applied = selection;
  });
};
const watch = watchPrefix(etcd, log, () => {
  if (updateQueued) return;
  updateQueued = true;
  setImmediate(update);
});

let stopping = false;
const shutdown = async (code: number, reason: string) => {
  if (stopping) return;
  stopping = true;
  (code === 0 ? log.info : log.error)(`stopping: ${reason}`);
  setTimeout(() => {
    log.error('stopping took over 15 s; exiting now');
    process.exit(code || 1);
  }, 15_000).unref();
  await Promise.race([watch.stop(), new Promise((resolve) => setTimeout(resolve, 2000))]);
  await haproxy.stop();
  await releaseRuntimeDir(options.runtimeDir);
  log.info('stopped', { exit_code: code });
  process.exit(code);
};

process.on('SIGTERM', () => void shutdown(0, 'SIGTERM'));
process.on('SIGINT', () => void shutdown(0, 'SIGINT'));
process.on('SIGHUP', () => {
  log.info('SIGHUP: resyncing from etcd');
  watch.resync();
});
void haproxy.unexpectedExit.then(({ code, signal, lastAlerts }) => {
  const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
  const why = lastAlerts.length > 0 ? `: ${lastAlerts.join(' | ')}` : '';
  void shutdown(1, `haproxy master ${how}${why}`);
});

// What an applied change did, in a few words: "master 2 -> 3", "added 4, removed 1", "moved 2".
function describeChange(before: Selection | undefined, after: Selection): string {
  const master = (selection: Selection | undefined) => selection?.servers.find((server) => server.enabled)?.name ?? 'none';
  const shownMaster = registrySettings.masterOnly ? `master ${before ? `${master(before)} -> ` : ''}${master(after)}` : '';
  if (!before) return [`${after.servers.length} server(s)`, shownMaster].filter(Boolean).join(', ');
  const address = (selection: Selection) => new Map(selection.servers.map((server) => [server.name, `${server.address}:${server.port}`]));
  const old = address(before);
  const now = address(after);
  const list = (names: string[]) => names.slice(0, 5).join(',') + (names.length > 5 ? `,… (${names.length})` : '');
  const added = [...now.keys()].filter((name) => !old.has(name));
  const removed = [...old.keys()].filter((name) => !now.has(name));
  const moved = [...now].filter(([name, at]) => old.has(name) && old.get(name) !== at).map(([name]) => name);
  const parts = [
    master(before) !== master(after) ? shownMaster : '',
    added.length ? `added ${list(added)}` : '',
    removed.length ? `removed ${list(removed)}` : '',
    moved.length ? `moved ${list(moved)}` : '',
  ].filter(Boolean);
  return parts.join(', ') || 'servers unchanged';
}

function problemText(problem: Problem): string {
  const value = problem.value === undefined ? '' : `=${quote(problem.value)}`;
  return `rejected ${problem.key}${value}: ${problem.reason}`;
}

// Each problem is logged when it appears and when it is gone, never once per change.
function problemReporter(log: Logger): (problems: readonly Problem[]) => void {
  let known = new Map<string, Problem>();
  return (problems) => {
    const current = new Map(problems.map((problem) => [problemText(problem), problem]));
    for (const [text] of current) if (!known.has(text)) log.warn(text);
    for (const [text, problem] of known) if (!current.has(text)) log.info(`resolved: ${problem.key} (${problem.reason})`);
    known = current;
  };
}
