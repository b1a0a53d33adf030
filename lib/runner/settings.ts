// Every part's settings, made once from the options (and, for haproxy, what was found on the host): pure, frozen,
// so that nothing is changed after it is made and each part gets only what it needs.

import type { HostFacts } from './facts.ts';
import { runtimeFiles } from '../host/rundir.ts';
import { maxServers } from '../haproxy/config.ts';
import { fenceDrainsFirst } from '../haproxy/fence.ts';
import type { Options } from '../options/parse.ts';
import { proxyNames, type RenderSettings } from '../render/render.ts';
import type { LayoutSettings } from '../service/layout.ts';
import { MAX_KEY_BYTES } from '../service/service.ts';

// The settings of every part but haproxy's, which also needs the host's facts (haproxySettingsOf).
export function settingsOf(options: Options) {
  const layout: LayoutSettings = {
    kind: options.layout,
    prefix: options.etcdPrefix,
    masterOnly: options.masterOnly,
    replicas: options.replicaPort !== undefined,
    public: options.public,
    backendPort: options.backendPort,
    replicaSelection: { ...options.replicaSelection, lag: options.replicaSelection.lag ?? options.maxReplicaLag },
    replicaFallback: options.replicaFallback,
  };
  const etcd = {
    endpoints: options.etcd,
    prefix: options.etcdPrefix,
    checkEveryMs: options.etcdCheckMs,
    maxKeyBytes: MAX_KEY_BYTES,
    ca: options.etcdCa,
    cert: options.etcdCert,
    key: options.etcdKey,
    user: options.etcdUser,
    password: options.etcdPassword,
    passwordFile: options.etcdPasswordFile,
  };
  const render: RenderSettings = {
    prefix: options.etcdPrefix,
    bind: options.bind,
    port: options.port,
    replicaPort: options.replicaPort,
    masterOnly: options.masterOnly,
    hardStopAfter: options.hardStopAfter,
    adminSocket: runtimeFiles(options.runtimeDir).adminSocket,
    holdMs: options.holdMs,
    holdScript: runtimeFiles(options.runtimeDir).holdScript,
    replicaSessions: options.replicaSessions,
  };
  const status = options.status === undefined ? undefined : { ...options.status, maxStaleMs: options.maxStaleMs };
  const ports = [options.port, ...(options.replicaPort === undefined ? [] : [options.replicaPort])];
  const host = { runtimeDir: options.runtimeDir, configPath: options.haproxyConfig, bind: options.bind, ports };
  return deepFreeze({ layout, etcd, render, status, host, masterOnly: options.masterOnly, log: { format: options.logFormat, level: options.logLevel } });
}

export type Settings = ReturnType<typeof settingsOf>;

export function haproxySettingsOf(options: Options, facts: HostFacts) {
  return Object.freeze({
    binary: facts.haproxy,
    configPath: options.haproxyConfig,
    runtimeDir: options.runtimeDir,
    apply: options.apply,
    fence: options.masterOnly,
    drainBeforeFence: fenceDrainsFirst(facts.haproxyRelease),
    proxies: proxyNames({ replicaPort: options.replicaPort }),
    fileLimit: facts.fileLimit,
    maxServers: maxServers(facts.fileLimit, facts.threads),
    setpriv: facts.setpriv,
    holdScript: options.holdMs > 0 ? runtimeFiles(options.runtimeDir).holdScript : undefined,
    cutReplicas: options.layout === 'patroni' && options.replicaSessions === 'cut',
  });
}

export type HaproxySettings = ReturnType<typeof haproxySettingsOf>;

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}
