#!/usr/bin/env node
// ambassador: proxies a local port to the instances of one service registered in etcd, through an haproxy it owns.
// This file only wires the parts together and owns the process: options → watch → registry → render → haproxy,
// plus signals and exit codes (0 stopped cleanly, 1 failed, 2 usage error).

import packageJson from './package.json' with { type: 'json' };
import { readFile } from 'node:fs/promises';
import { hostPort } from './lib/common/address.ts';
import { CredentialError, readCredentials } from './lib/etcd/credentials.ts';
import { dryRunReport } from './lib/runner/dryrun.ts';
import { createFollower } from './lib/runner/follow.ts';
import { availableParallelism } from 'node:os';
import { findExecutable, haproxyVersion, maxServers, openFileLimit } from './lib/haproxy/config.ts';
import { createHaproxy } from './lib/haproxy/driver.ts';
import { fenceDrainsFirst } from './lib/haproxy/fence.ts';
import { applyOnce } from './lib/haproxy/once.ts';
import { createLogger } from './lib/common/log.ts';
import { parseCommandLine, usage } from './lib/options/parse.ts';
import { portTaken } from './lib/host/ports.ts';
import { MAX_PATRONI_VALUE_BYTES, patroniRoutingKeys, readCluster, selectPatroni } from './lib/service/patroni.ts';
import { MAX_KEY_BYTES, type Selection } from './lib/service/service.ts';
import { describeProblem } from './lib/service/problems.ts';
import { createServiceSelector, MAX_VALUE_BYTES, routingKeys } from './lib/service/instances.ts';
import { createRenderer, proxyNames, type RenderSettings } from './lib/render/render.ts';
import { claimRuntimeDir, prepareRuntimeDir, refuseIfOwned, releaseRuntimeDir, runtimeFiles, SetupError } from './lib/host/rundir.ts';
import { createStatus, type StatusSnapshot } from './lib/status/status.ts';
import { readSnapshot, watchPrefix, type WatchSettings } from './lib/etcd/watch.ts';

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
function usageError(message: string): never {
  process.stderr.write(`ambassador: ${message}\nTry 'ambassador --help' for the flags and their defaults.\n`);
  process.exit(2);
}
if (parsed.kind === 'usage-error') usageError(parsed.message);

const options = parsed.options;
const log = createLogger({ format: options.logFormat, level: options.logLevel });
for (const warning of parsed.warnings) log.warn(warning);

// The last resort, not the error path: whatever escapes is said in one line, and haproxy is stopped in order.
let running = false;
const lastResort = (kind: string) => (err: unknown) => {
  log.error(`internal error (${kind}): ${err instanceof Error ? err.message : String(err)}`);
  if (running) void stop(1, 'internal error');
  else process.exit(1);
};
process.on('uncaughtException', lastResort('uncaught exception'));
process.on('unhandledRejection', lastResort('unhandled rejection'));

const selectSettings = { prefix: options.etcdPrefix, masterOnly: options.masterOnly, replicas: options.replicaPort !== undefined };
const etcd: WatchSettings = {
  endpoints: options.etcd,
  checkEveryMs: options.etcdCheckMs,
  routingKeys: (mirror) => (options.layout === 'patroni' ? patroniRoutingKeys(mirror, options.etcdPrefix) : routingKeys(mirror, { ...selectSettings, public: options.public })),
  prefix: options.etcdPrefix,
  maxKeyBytes: MAX_KEY_BYTES,
  maxValueBytes: options.layout === 'patroni' ? MAX_PATRONI_VALUE_BYTES : MAX_VALUE_BYTES,
  ca: options.etcdCa,
  cert: options.etcdCert,
  key: options.etcdKey,
  user: options.etcdUser,
  password: options.etcdPassword,
  passwordFile: options.etcdPasswordFile,
};
// The files the flags name are checked before anything starts: a bad one is a usage error.
await readCredentials(etcd).catch((err: unknown) => {
  if (err instanceof CredentialError) usageError(err.message);
  throw err;
});
const registrySettings = { ...selectSettings, public: options.public, backendPort: options.backendPort };
const patroniSettings = { ...selectSettings, maxReplicaLag: options.maxReplicaLag };
const renderSettings: RenderSettings = {
  prefix: options.etcdPrefix,
  bind: options.bind,
  port: options.port,
  replicaPort: options.replicaPort,
  masterOnly: options.masterOnly,
  hardStopAfter: options.hardStopAfter,
  adminSocket: runtimeFiles(options.runtimeDir).adminSocket,
};

// The layout decides how keys become servers; everything after it is the same. A Patroni cluster has a few
// members and is read whole; the instances layout may have thousands and is read by the instances that changed.
const serviceSelector = createServiceSelector(registrySettings);
const select = (mirror: ReadonlyMap<string, string>, changed?: ReadonlySet<string>): Selection =>
  options.layout === 'patroni' ? selectPatroni(readCluster(mirror, options.etcdPrefix), patroniSettings) : serviceSelector.select(mirror, changed);

// --dry-run and --once: one consistent read of etcd, then the config it gives.
const readOnce = async () => {
  try {
    const { mirror, revision } = await readSnapshot(etcd, 5_000);
    const selection = select(mirror);
    for (const problem of selection.problems) log.warn(describeProblem(problem));
    return { revision, selection, config: createRenderer(renderSettings)(selection) };
  } catch (err) {
    log.error(`etcd unreachable: ${(err as Error).message}`, { endpoints: options.etcd.join(',') });
    process.exit(1);
  }
};

if (options.dryRun) {
  const { revision, selection, config } = await readOnce();
  const current = await readFile(options.haproxyConfig, 'utf8').catch(() => undefined);
  const report = dryRunReport(options.haproxyConfig, current, config, revision, selection.servers.length, selection.problems.length);
  process.stdout.write(report.output);
  log.info(report.summary);
  process.exit(0);
}

log.info(`ambassador ${version} starting`, {
  prefix: options.etcdPrefix,
  layout: options.layout,
  listen: `${options.bind}:${options.port}`,
  replicas: options.replicaPort === undefined ? undefined : `${options.bind}:${options.replicaPort}`,
  master_only: options.masterOnly,
});
const setpriv = await findExecutable('setpriv', process.env);
if (!setpriv) log.warn('setpriv (util-linux) not found: if ambassador is killed, its haproxy keeps running until ambassador is restarted');
const haproxyBinary = options.haproxy.includes('/') ? options.haproxy : ((await findExecutable(options.haproxy, process.env)) ?? options.haproxy);
const fileLimit = await openFileLimit();
const haproxySettings = {
  binary: haproxyBinary,
  configPath: options.haproxyConfig,
  runtimeDir: options.runtimeDir,
  apply: options.apply,
  fence: options.masterOnly,
  drainBeforeFence: false,
  proxies: proxyNames(renderSettings),
  fileLimit,
  maxServers: maxServers(fileLimit, availableParallelism()),
  log,
  setpriv,
};
try {
  await prepareRuntimeDir(options.runtimeDir);
  const release = await haproxyVersion(haproxyBinary);
  haproxySettings.drainBeforeFence = fenceDrainsFirst(release);
  log.info(`using ${release}`, { haproxy: haproxyBinary, runtime_dir: options.runtimeDir, drain_before_fence: haproxySettings.drainBeforeFence || undefined });
  if (options.once) {
    await refuseIfOwned(options.runtimeDir);
    const { revision, selection, config } = await readOnce();
    const done = await applyOnce(haproxySettings, config);
    log.info(`once: revision ${revision} applied, haproxy ${done}`, { servers: selection.servers.length, config: options.haproxyConfig });
    process.exit(0);
  }
  await claimRuntimeDir(options.runtimeDir, options.haproxyConfig, log);
  for (const port of [options.port, options.replicaPort]) {
    const taken = port === undefined ? undefined : await portTaken(options.bind, port);
    if (taken !== undefined) throw new SetupError(taken);
  }
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

const status = options.status ? createStatus(statusSnapshot, options.maxStaleMs, () => haproxy.traffic()) : undefined;
const follower = createFollower({
  state: () => watch.state(),
  routingKeys: etcd.routingKeys,
  select,
  render: createRenderer(renderSettings),
  apply: (wanted) => haproxy.apply(wanted),
  idle: () => haproxy.idle(),
  log,
  masterOnly: options.masterOnly,
  problemsFound: (count) => status?.problemsFound(count),
  changeApplied: (path, seconds) => status?.changeApplied(path, seconds),
});
const watch = watchPrefix(etcd, log, (keys) => follower.changed(keys));

function statusSnapshot(): StatusSnapshot {
  const { selection, revision } = follower.newest();
  const rejected = new Set(selection.problems.flatMap((problem) => problem.instance ?? []));
  return {
    version,
    prefix: options.etcdPrefix,
    masterOnly: options.masterOnly,
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
}

running = true;
let stopping = false;
async function stop(code: number, reason: string): Promise<void> {
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
}

process.on('SIGTERM', () => void stop(0, 'SIGTERM'));
process.on('SIGINT', () => void stop(0, 'SIGINT'));
// A burst of SIGHUPs (a config tool that signals on every file it touches) is one resync: it waits for
// SIGHUP_QUIET_MS without another, or SIGHUP_MAX_WAIT_MS after the first.
const SIGHUP_QUIET_MS = 250;
const SIGHUP_MAX_WAIT_MS = 2_000;
let sighups = 0;
let sighupTimer: NodeJS.Timeout | undefined;
let firstSighupAt = 0;
process.on('SIGHUP', () => {
  if (sighups++ === 0) firstSighupAt = performance.now();
  clearTimeout(sighupTimer);
  const wait = Math.min(SIGHUP_QUIET_MS, firstSighupAt + SIGHUP_MAX_WAIT_MS - performance.now());
  sighupTimer = setTimeout(() => {
    log.info(`SIGHUP${sighups > 1 ? ` (${sighups} of them)` : ''}: resyncing from etcd and trying the newest state again`);
    sighups = 0;
    watch.resync();
    haproxy.retryNow();
  }, Math.max(0, wait));
});
void haproxy.unexpectedExit.then(({ code, signal, error, lastAlerts }) => {
  const how = error !== undefined ? `could not be started (${error})` : signal ? `was killed by ${signal}` : `exited with code ${code}`;
  const why = lastAlerts.length > 0 ? `: ${lastAlerts.join(' | ')}` : '';
  void stop(1, `haproxy master ${how}${why}`);
});

if (options.status && status) {
  const { host, port } = options.status;
  await status.listen(host, port).then(
    () => log.info(`status: serving /healthz, /metrics and /state on http://${hostPort(host, port)}`),
    (err: Error) => stop(1, `status: cannot listen on ${host}:${port}: ${err.message}`),
  );
}
