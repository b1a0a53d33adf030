// The servers to route to → haproxy.cfg text.
// Pure and deterministic: the same input gives the same bytes, so an unchanged config is seen by comparing text.
// Every value it writes was validated by lib/service/ or lib/options/; it never formats raw etcd data.

import { hostPort } from '../common/address.ts';
import type { PortServers, Server } from '../service/service.ts';
import { HOLD_GLOBAL, holdLines } from './hold.ts';

export interface RenderSettings {
  prefix: string;
  bind: string;
  port: number;
  replicaPort: number | undefined;
  // --port routes to the master alone.
  masterOnly: boolean;
  hardStopAfter: string;
  adminSocket: string;
  // How long a new connection waits for a usable server (0: not at all), and the script that makes it wait.
  holdMs: number;
  holdScript: string;
  // Sessions on a replica that leaves the replica port (its check fails): cut, or kept until they end.
  replicaSessions: 'cut' | 'keep';
}

// The names haproxy knows the proxies by, e.g. in `set server service/<name> ...`: --port's and --replica-port's.
export const PROXY_NAME = 'service';
export const REPLICA_PROXY_NAME = 'replicas';

// The proxies a config has, for those who talk to haproxy about them.
export function proxyNames(settings: Pick<RenderSettings, 'replicaPort'>): string[] {
  return settings.replicaPort === undefined ? [PROXY_NAME] : [PROXY_NAME, REPLICA_PROXY_NAME];
}

// Health checks: a dead instance is marked down within ~4 s and its sessions are cut, so clients reconnect
// elsewhere instead of hanging on it; the same cut fences a master put in maintenance. Servers added at run
// time ignore default-server, so lib/render/plan.ts spells these out on each one.
export const SERVER_CHECKS = 'check inter 2s fall 2 rise 2 on-marked-down shutdown-sessions';
// A DNS name that does not resolve leaves its server down instead of failing the whole config.
const SERVER_DEFAULTS = `${SERVER_CHECKS} init-addr libc,none`;
// A replica whose check asks Patroni's REST API (lib/service/replicas.ts) leaves after 3 failures and comes
// back after 3 passes: a replica near a lag bound does not flap with each check.
const REST_CHECKS = 'check inter 2s fall 3 rise 3';

// Servers not enabled (master-only standbys) are written `disabled`, so a failover is a state change at run time.
export function renderConfig(settings: RenderSettings, selection: PortServers): string {
  return createRenderer(settings)(selection);
}

// renderConfig for a stream of selections: the line of a server object seen before is not made again, so a
// change formats only the servers it changed (see createServiceSelector).
export function createRenderer(settings: RenderSettings): (selection: PortServers) => string {
  const serverLines = new WeakMap<Server, string>();
  const serverLine = (server: Server) => {
    let line = serverLines.get(server);
    if (line === undefined) {
      const check = server.restCheck === 'off' ? ' no-check' : server.restCheck ? ` check addr ${server.restCheck.address} port ${server.restCheck.port}` : '';
      line = `    server ${server.server} ${hostPort(server.address, server.port)}${check}${server.enabled ? '' : ' disabled'}`;
      serverLines.set(server, line);
    }
    return line;
  };
  const listen = (lines: string[], name: string, port: number, servers: readonly Server[], singleServer: boolean) => {
    lines.push('', `listen ${name}`, `    bind ${hostPort(settings.bind, port)}`);
    // With one server routed, a retry can only go back to the server that just refused, after haproxy's
    // 1 s turn-around: a client held that long while its old primary shuts down. Let it fail at once
    // (measured on Patroni switchovers: the write gap through ambassador went from floor + ~760 ms to the floor).
    if (singleServer) lines.push('    retries 0');
    lines.push(...holdLines(name, settings.holdMs));
    // Long-lived database sessions spread better by count than by turn.
    lines.push('    balance leastconn');
    const rest = servers.find((server) => typeof server.restCheck === 'object')?.restCheck;
    if (typeof rest === 'object') lines.push(`    option httpchk GET ${rest.path}`, '    http-check expect status 200');
    const kept = name === REPLICA_PROXY_NAME && settings.replicaSessions === 'keep';
    const defaults = typeof rest === 'object' ? `${REST_CHECKS} on-marked-down shutdown-sessions init-addr libc,none` : SERVER_DEFAULTS;
    lines.push(`    default-server ${kept ? defaults.replace(' on-marked-down shutdown-sessions', '') : defaults}`);
    for (const server of servers) lines.push(serverLine(server));
  };
  const head = [
    `# haproxy config for etcd prefix ${settings.prefix}, written by ambassador on every change: edits are lost.`,
    'global',
    `    stats socket ${settings.adminSocket} mode 600 level admin`,
    // The port is ours alone: with SO_REUSEPORT a second process on it (another ambassador's haproxy) would
    // share its new connections, and clients would reach two databases. A reload hands the listeners over.
    '    noreuseport',
    // A reload leaves the old worker serving its open connections; this bounds how long it may.
    `    hard-stop-after ${settings.hardStopAfter}`,
    // That bound, not a count: from haproxy 3.3 a worker that outlived 50 reloads is stopped, sessions and all.
    '    mworker-max-reloads 1000000',
    ...(settings.holdMs > 0 ? HOLD_GLOBAL.map((line) => line.replace('SCRIPT', settings.holdScript)) : []),
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
  ];
  return (selection) => {
    const lines = head.slice();
    listen(lines, PROXY_NAME, settings.port, selection.servers, settings.masterOnly);
    if (settings.replicaPort !== undefined) listen(lines, REPLICA_PROXY_NAME, settings.replicaPort, selection.replicas ?? [], false);
    lines.push('');
    return lines.join('\n');
  };
}
