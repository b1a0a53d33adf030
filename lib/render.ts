// The servers to route to → haproxy.cfg text.
// Pure and deterministic: the same input gives the same bytes, so an unchanged config is seen by comparing text.
// Every value it writes was validated by registry.ts or options.ts; it never formats raw etcd data.

import type { Server } from './registry.ts';

export interface RenderSettings {
  prefix: string;
  bind: string;
  port: number;
  hardStopAfter: string;
  adminSocket: string;
}

// The name haproxy knows the proxy by, e.g. in `set server service/<name> ...`.
export const PROXY_NAME = 'service';

// Health checks: a dead instance is marked down within ~4 s and its sessions are cut, so clients reconnect
// elsewhere instead of hanging on it; the same cut fences a master put in maintenance. Servers added at run
// time ignore default-server, so lib/plan.ts spells these out on each one.
export const SERVER_CHECKS = 'check inter 2s fall 2 rise 2 on-marked-down shutdown-sessions';
// A DNS name that does not resolve leaves its server down instead of failing the whole config.
const SERVER_DEFAULTS = `${SERVER_CHECKS} init-addr libc,none`;

// Servers not enabled (master-only standbys) are written `disabled`, so a failover is a state change at run time.
export function renderConfig(settings: RenderSettings, servers: readonly Server[]): string {
  const lines = [
    `# haproxy config for etcd prefix ${settings.prefix}, written by ambassador on every change: edits are lost.`,
    'global',
    `    stats socket ${settings.adminSocket} mode 600 level admin`,
    // A reload leaves the old worker serving its open connections; this bounds how long it may.
    `    hard-stop-after ${settings.hardStopAfter}`,
    '',
    'defaults',
    '    mode tcp',
    '    timeout connect 2s',
    // Database clients hold idle pooled connections for hours; MySQL itself waits 8 h before closing one.
    '    timeout client 8h',
    '    timeout server 8h',
    '    timeout check 2s',
    '    retries 2',
    '    option redispatch',
    '    option clitcpka',
    '    option srvtcpka',
    '',
    `listen ${PROXY_NAME}`,
    `    bind ${hostPort(settings.bind, settings.port)}`,
    // Long-lived database sessions spread better by count than by turn.
    '    balance leastconn',
    `    default-server ${SERVER_DEFAULTS}`,
    ...servers.map((server) => `    server ${server.server} ${hostPort(server.address, server.port)}${server.enabled ? '' : ' disabled'}`),
  ];
  return lines.join('\n') + '\n';
}

export function hostPort(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}
