#!/usr/bin/env node
// ambassador: proxies a local port to the instances of one service registered in etcd, through an haproxy it owns.
// This file owns the process: the command line, the host's facts, signals and exit codes (0 stopped cleanly,
// 1 failed, 2 usage error); lib/runner/ ties the parts together: options → etcd → service → render → haproxy.

import packageJson from './package.json' with { type: 'json' };
import { createLogger, type Logger } from './lib/common/log.ts';
import { CredentialError, readCredentials } from './lib/etcd/credentials.ts';
import { hostFacts } from './lib/runner/facts.ts';
import { portTaken } from './lib/host/ports.ts';
import { claimRuntimeDir, prepareRuntimeDir, SetupError } from './lib/host/rundir.ts';
import { parseCommandLine, usage } from './lib/options/parse.ts';
import { dryRun, once } from './lib/runner/oneshot.ts';
import { run, type Running } from './lib/runner/run.ts';
import { haproxySettingsOf, settingsOf, type Settings } from './lib/runner/settings.ts';

// Set by the build (build/build.ts); absent when run from source.
declare const BUILD_COMMIT: string | undefined;
const version = `${packageJson.version} (${typeof BUILD_COMMIT === 'string' ? BUILD_COMMIT : 'source'})`;

// A burst of SIGHUPs (a config tool that signals on every file it touches) is one resync: it waits for
// SIGHUP_QUIET_MS without another, or SIGHUP_MAX_WAIT_MS after the first.
const SIGHUP_QUIET_MS = 250;
const SIGHUP_MAX_WAIT_MS = 2_000;
const STOP_WITHIN_MS = 15_000;

function usageError(message: string): never {
  process.stderr.write(`ambassador: ${message}\nTry 'ambassador --help' for the flags and their defaults.\n`);
  process.exit(2);
}

// The runtime dir made ambassador's (or refused), then the ports: a port held by anything is refused.
async function claimHost(settings: Settings, log: Logger): Promise<void> {
  await claimRuntimeDir(settings.host.runtimeDir, settings.host.configPath, log);
  for (const port of settings.host.ports) {
    const taken = await portTaken(settings.host.bind, port);
    if (taken !== undefined) throw new SetupError(taken);
  }
}

// Signals: SIGTERM and SIGINT stop, a burst of SIGHUPs resyncs once; an exit of haproxy's master ends the run.
// Returns how to stop it.
function own(running: Running, log: Logger): (code: number, reason: string) => Promise<void> {
  let stopping = false;
  const stop = async (code: number, reason: string) => {
    if (stopping) return;
    stopping = true;
    (code === 0 ? log.info : log.error)(`stopping: ${reason}`);
    setTimeout(() => (log.error(`stopping took over ${STOP_WITHIN_MS / 1000} s; exiting now`), process.exit(code || 1)), STOP_WITHIN_MS).unref();
    await running.stop();
    log.info('stopped', { exit_code: code });
    process.exit(code);
  };
  process.on('SIGTERM', () => void stop(0, 'SIGTERM'));
  process.on('SIGINT', () => void stop(0, 'SIGINT'));
  let [sighups, firstAt, timer] = [0, 0, undefined as NodeJS.Timeout | undefined];
  process.on('SIGHUP', () => {
    if (sighups++ === 0) firstAt = performance.now();
    clearTimeout(timer);
    timer = setTimeout(() => {
      log.info(`SIGHUP${sighups > 1 ? ` (${sighups} of them)` : ''}: resyncing from etcd and trying the newest state again`);
      sighups = 0;
      running.resync();
    }, Math.max(0, Math.min(SIGHUP_QUIET_MS, firstAt + SIGHUP_MAX_WAIT_MS - performance.now())));
  });
  void running.haproxyExit.then(({ code, signal, error, lastAlerts }) => {
    const how = error !== undefined ? `could not be started (${error})` : signal ? `was killed by ${signal}` : `exited with code ${code}`;
    void stop(1, `haproxy master ${how}${lastAlerts.length > 0 ? `: ${lastAlerts.join(' | ')}` : ''}`);
  });
  // Whatever ends this process, haproxy must not outlive it holding the port.
  process.on('exit', () => {
    const pid = running.haproxyPid();
    if (pid !== undefined) process.kill(pid, 'SIGTERM');
  });
  return stop;
}

async function main(): Promise<void> {
  const parsed = parseCommandLine(process.argv.slice(2), process.env);
  if (parsed.kind === 'help' || parsed.kind === 'version') {
    process.stdout.write(parsed.kind === 'help' ? usage() + '\n' : `ambassador ${version}\n`);
    process.exit(0);
  }
  if (parsed.kind === 'usage-error') usageError(parsed.message);
  const { options } = parsed;
  const settings = settingsOf(options);
  const log = createLogger(settings.log);
  for (const warning of parsed.warnings) log.warn(warning);
  let stop: ((code: number, reason: string) => Promise<void>) | undefined;
  for (const event of ['uncaughtException', 'unhandledRejection'] as const) {
    process.on(event, (err: unknown) => {
      // The last resort, not the error path: whatever escapes is said in one line, and haproxy stopped in order.
      log.error(`internal error (${event}): ${err instanceof Error ? err.message : String(err)}`);
      void (stop ? stop(1, 'internal error') : process.exit(1));
    });
  }
  // The files the flags name are checked before anything starts: a bad one is a usage error.
  await readCredentials(settings.etcd).catch((err: unknown) => (err instanceof CredentialError ? usageError(err.message) : Promise.reject(err)));
  try {
    if (options.dryRun) return void (await dryRun(settings, log), process.exit(0));
    log.info(`ambassador ${version} starting`, { prefix: options.etcdPrefix, layout: options.layout, listen: `${options.bind}:${options.port}`, replicas: options.replicaPort === undefined ? undefined : `${options.bind}:${options.replicaPort}`, master_only: options.masterOnly });
    await prepareRuntimeDir(settings.host.runtimeDir);
    const facts = await hostFacts(options.haproxy, options.holdMs, log);
    const haproxy = haproxySettingsOf(options, facts);
    log.info(`using ${facts.haproxyRelease}`, { haproxy: facts.haproxy, runtime_dir: settings.host.runtimeDir, drain_before_fence: haproxy.drainBeforeFence || undefined });
    if (options.once) return void (await once(settings, haproxy, log), process.exit(0));
    await claimHost(settings, log);
    stop = own(await run(settings, haproxy, log, version), log);
  } catch (err) {
    log.error(err instanceof SetupError ? err.message : `cannot start: ${(err as Error).message}`);
    process.exit(1);
  }
}

await main();
