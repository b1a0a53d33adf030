#!/usr/bin/env node
// ambassador: proxies a local port to the instances of one service registered in etcd, through an haproxy it owns.
// This file only wires the parts together and owns the process: options → watch → registry → render → haproxy,
// plus signals and exit codes (0 stopped cleanly, 1 failed, 2 usage error).

import packageJson from './package.json' with { type: 'json' };
import { readFile } from 'node:fs/promises';
import { createTwoFilesPatch } from 'diff';
import { applyOnce, createHaproxy, findExecutable, haproxyVersion } from './lib/haproxy.ts';
import { createLogger, type Logger } from './lib/log.ts';
import { parseCommandLine, usage } from './lib/options.ts';
import { serverTable } from './lib/plan.ts';
import { describeChange, describeProblem, readService, selectServers, type Problem, type Selection } from './lib/registry.ts';
import { renderConfig, type RenderSettings } from './lib/render.ts';
import { claimRuntimeDir, prepareRuntimeDir, refuseIfOwned, releaseRuntimeDir, runtimeFiles, SetupError } from './lib/rundir.ts';
import { createStatus, type StatusSnapshot } from './lib/status.ts';
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
  adminSocket: runtimeFiles(options.runtimeDir).adminSocket,
};

const select = (mirror: ReadonlyMap<string, string>): Selection => selectServers(readService(mirror, registrySettings), registrySettings);

// --dry-run and --once: one consistent read of etcd, then the config it gives.
const readOnce = async () => {
  try {
    const { mirror, revision } = await readSnapshot(etcd, 5_000);
    const selection = select(mirror);
    for (const problem of selection.problems) log.warn(describeProblem(problem));
    return { revision, selection, config: renderConfig(renderSettings, selection.servers) };
  } catch (err) {
    log.error(`etcd unreachable: ${(err as Error).message}`, { endpoints: options.etcd.join(',') });
    process.exit(1);
  }
};

if (options.dryRun) {
  const { revision, selection, config } = await readOnce();
  const current = await readFile(options.haproxyConfig, 'utf8').catch(() => undefined);
  if (current === undefined) process.stdout.write(config);
  else if (current !== config) process.stdout.write(createTwoFilesPatch(options.haproxyConfig, `${options.haproxyConfig} (revision ${revision})`, current, config));
  const compared = current === undefined ? '' : current === config ? `; ${options.haproxyConfig} is already this config` : `; diff against ${options.haproxyConfig}`;
  log.info(`dry run: revision ${revision}, ${selection.servers.length} server(s), ${selection.problems.length} problem(s)${compared}`);
  process.exit(0);
}

log.info(`ambassador ${version} starting`, { prefix: options.etcdPrefix, listen: `${options.bind}:${options.port}`, master_only: options.masterOnly });
const setpriv = await findExecutable('setpriv', process.env);
if (!setpriv) log.warn('setpriv (util-linux) not found: if ambassador is killed, its haproxy keeps running until ambassador is restarted');
const haproxyBinary = options.haproxy.includes('/') ? options.haproxy : ((await findExecutable(options.haproxy, process.env)) ?? options.haproxy);
const haproxySettings = {
  binary: haproxyBinary,
  configPath: options.haproxyConfig,
  runtimeDir: options.runtimeDir,
  apply: options.apply,
  fence: options.masterOnly,
  log,
  setpriv,
};
try {
  await prepareRuntimeDir(options.runtimeDir, log);
  log.info(`using ${await haproxyVersion(haproxyBinary)}`, { haproxy: haproxyBinary, runtime_dir: options.runtimeDir });
  if (options.once) {
    await refuseIfOwned(options.runtimeDir);
    const { revision, selection, config } = await readOnce();
    const done = await applyOnce(haproxySettings, config);
    log.info(`once: revision ${revision} applied, haproxy ${done}`, { servers: selection.servers.length, config: options.haproxyConfig });
    process.exit(0);
  }
  await claimRuntimeDir(options.runtimeDir, options.haproxyConfig, log);
} catch (err) {
  log.error(err instanceof SetupError ? err.message : `cannot set up ${options.runtimeDir}: ${(err as Error).message}`);
  process.exit(1);
}

const haproxy = createHaproxy(haproxySettings);
// Whatever ends this process, haproxy must not outlive it holding the port.
process.on('exit', () => {
  const pid = haproxy.stats().masterPid;
  if (pid !== undefined) process.kill(pid, 'SIGTERM');
});

const status = options.status ? createStatus(statusSnapshot, options.maxStaleMs) : undefined;
const reportProblems = problemReporter(log);
let newest: { revision: bigint; selection: Selection } = { revision: 0n, selection: { servers: [], master: undefined, problems: [] } };
let applied: Selection | undefined;
let lastChange: StatusSnapshot['lastChange'];
let changeSeenAt: number | undefined;

// Runs once per burst of etcd events (they arrive within one tick), always on the newest state.
const update = () => {
  const seenAt = changeSeenAt ?? performance.now();
  changeSeenAt = undefined;
  const { mirror, revision } = watch.state();
  const selection = select(mirror);
  newest = { revision, selection };
  const newProblems = reportProblems(selection.problems);
  status?.problemsFound(newProblems);
  const wanted = { config: renderConfig(renderSettings, selection.servers), servers: serverTable(selection.servers) };
  void haproxy.apply(wanted).then(({ outcome, path, ms }) => {
    if (outcome !== 'applied' || path === undefined) return;
    const description = describeChange(applied, selection, options.masterOnly);
    log.info(`applied revision ${revision}: ${description} (${path}, ${ms} ms)`, { servers: selection.servers.length });
    applied = selection;
    lastChange = { revision, at: new Date().toISOString(), path, description };
    status?.changeApplied(path, (performance.now() - seenAt) / 1000);
  });
};
const watch = watchPrefix(etcd, log, () => {
  if (changeSeenAt !== undefined) return;
  changeSeenAt = performance.now();
  setImmediate(update);
});


function statusSnapshot(): StatusSnapshot {
  const { selection, revision } = newest;
  const rejected = new Set(selection.problems.flatMap((problem) => problem.instance ?? []));
  return {
    version,
    prefix: options.etcdPrefix,
    masterOnly: options.masterOnly,
    revision,
    etcd: watch.stats(),
    haproxy: haproxy.stats(),
    servers: selection.servers,
    instancesRejected: rejected.size,
    master: selection.master,
    problems: selection.problems,
    lastChange,
  };
}

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
  await status?.close();
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

if (options.status && status) {
  const { host, port } = options.status;
  await status.listen(host, port).then(
    () => log.info(`status: serving /healthz, /metrics and /state on http://${host.includes(':') ? `[${host}]` : host}:${port}`),
    (err: Error) => shutdown(1, `status: cannot listen on ${host}:${port}: ${err.message}`),
  );
}

// Each problem is logged when it appears and when it is gone, never once per change. Returns how many are new.
function problemReporter(log: Logger): (problems: readonly Problem[]) => number {
  let known = new Map<string, Problem>();
  return (problems) => {
    const current = new Map(problems.map((problem) => [describeProblem(problem), problem]));
    const appeared = [...current.keys()].filter((text) => !known.has(text));
    for (const text of appeared) log.warn(text);
    for (const [text, problem] of known) if (!current.has(text)) log.info(`resolved: ${problem.key} (${problem.reason})`);
    known = current;
    return appeared.length;
  };
}
