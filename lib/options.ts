// Command line and AMBASSADOR_* environment → one validated, frozen Options, or a usage error.
// Pure: it reads only the argv and env it is given, and touches no file (paths are checked where they are used).

import mri from 'mri';
import { isIP } from 'node:net';
import { isHostName, parsePort } from './address.ts';
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from './log.ts';

export type Layout = 'instances' | 'patroni';

export interface Options {
  etcd: readonly string[];
  etcdPrefix: string;
  layout: Layout;
  port: number;
  // The second listener: every routable instance but the master.
  replicaPort: number | undefined;
  // Patroni: replicas whose WAL trails the leader's by more than this many bytes are left out.
  maxReplicaLag: number | undefined;
  bind: string;
  backendPort: number;
  masterOnly: boolean;
  public: boolean;
  haproxy: string;
  haproxyConfig: string;
  runtimeDir: string;
  hardStopAfter: string;
  apply: 'runtime' | 'reload';
  dryRun: boolean;
  once: boolean;
  status: { host: string; port: number } | undefined;
  maxStaleMs: number;
  // How often the etcd member watched on is checked against the cluster; 0: never.
  etcdCheckMs: number;
  etcdCa: string | undefined;
  etcdCert: string | undefined;
  etcdKey: string | undefined;
  etcdUser: string | undefined;
  etcdPassword: string | undefined;
  etcdPasswordFile: string | undefined;
  logFormat: LogFormat;
  logLevel: LogLevel;
}

export type ParsedCommandLine =
  | { kind: 'run'; options: Options; warnings: string[] }
  | { kind: 'help' }
  | { kind: 'version' }
  | { kind: 'usage-error'; message: string };

interface Flag {
  name: string;
  boolean?: true;
  value?: string;
  default?: string;
  help: string;
}

// The one table of flags: parsing, environment names and --help all come from it.
const FLAGS: readonly Flag[] = [
  { name: 'etcd', value: 'ENDPOINTS', default: '127.0.0.1:2379', help: 'etcd endpoints, comma-separated: host, host:port or http(s)://host:port (port 2379 if none)' },
  { name: 'etcd-prefix', value: 'PREFIX', help: "the service's key prefix, e.g. /services/mysql (required)" },
  { name: 'layout', value: 'instances|patroni', default: 'instances', help: "the keys under PREFIX: ambassador's instances/<name>/... layout, or Patroni's own (PREFIX=/service/<scope>)" },
  { name: 'port', value: 'PORT', help: 'port haproxy listens on (required): the master with --master-only, else every instance' },
  { name: 'replica-port', value: 'PORT', help: 'a second port, routed to every routable instance but the master (Patroni: running replicas)' },
  { name: 'max-replica-lag', value: 'SIZE', help: "with --layout=patroni: leave out replicas whose WAL trails the leader's by more, e.g. 16MB" },
  { name: 'bind', value: 'ADDRESS', default: '0.0.0.0', help: 'address haproxy listens on (an IPv4 or IPv6 literal)' },
  { name: 'backend-port', value: 'PORT', help: 'port on the instances when they have no port key (default: --port)' },
  { name: 'master-only', boolean: true, help: 'route --port only to the master: the instance named by <prefix>/master (Patroni: the leader)' },
  { name: 'public', boolean: true, help: 'use instances/<name>/public_ip instead of private_ip' },
  { name: 'haproxy', value: 'PATH', default: 'haproxy', help: 'haproxy executable' },
  { name: 'haproxy-config', value: 'FILE', help: 'where the rendered config is written (default: <runtime-dir>/haproxy.cfg)' },
  { name: 'runtime-dir', value: 'DIR', help: 'private directory for the config, admin sockets and pid files (default: $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, $TMPDIR or /tmp, + /ambassador-[<bind>-]<port>)' },
  { name: 'hard-stop-after', value: 'TIME', default: '5m', help: 'how long a replaced haproxy worker may keep its connections after a reload (e.g. 30s, 5m, 1h)' },
  { name: 'apply', value: 'runtime|reload', default: 'runtime', help: "how changes reach haproxy: runtime (its runtime API, a reload only for what that cannot do) or reload (always)" },
  { name: 'dry-run', boolean: true, help: 'print the config for the current etcd state (a diff if the config file exists) and the problems found, then exit' },
  { name: 'once', boolean: true, help: 'apply the current etcd state once (check, write, start or reload haproxy), then exit, leaving haproxy running' },
  { name: 'status', value: 'ADDR:PORT', help: 'serve /healthz, /metrics and /state over HTTP there, e.g. 127.0.0.1:9110 (off by default)' },
  { name: 'max-stale', value: 'TIME', default: '60s', help: 'how long the etcd watch may be down before /healthz says 503' },
  { name: 'etcd-check-interval', value: 'TIME', default: '1s', help: 'how often the etcd member watched is asked a linearizable question about the prefix, to leave one that lost its leader and catch a watch that fell behind (0: never)' },
  { name: 'etcd-ca', value: 'FILE', help: 'CA certificate to verify etcd (implies https)' },
  { name: 'etcd-cert', value: 'FILE', help: 'client certificate for etcd (with --etcd-key)' },
  { name: 'etcd-key', value: 'FILE', help: 'client private key for etcd (with --etcd-cert)' },
  { name: 'etcd-user', value: 'USER', help: 'etcd user name (with a password)' },
  { name: 'etcd-password', value: 'PASSWORD', help: 'etcd password; prefer --etcd-password-file or the environment, since flags show in ps' },
  { name: 'etcd-password-file', value: 'FILE', help: 'file holding the etcd password' },
  { name: 'log-format', value: 'text|json', default: 'text', help: 'log line format on stderr' },
  { name: 'log-level', value: 'LEVEL', default: 'info', help: 'least important level logged: debug, info, warn or error' },
  { name: 'help', boolean: true, help: 'show this help and exit' },
  { name: 'version', boolean: true, help: 'show the version and exit' },
];

export function envName(flag: string): string {
  return 'AMBASSADOR_' + flag.toUpperCase().replaceAll('-', '_');
}

export function usage(): string {
  const rows = FLAGS.map((flag) => {
    const left = `  --${flag.name}${flag.value ? `=${flag.value}` : ''}`;
    const dflt = flag.default ? ` (default: ${flag.default})` : '';
    return `${left.padEnd(32)} ${flag.help}${dflt}`;
  });
  return [
    'Usage: ambassador --etcd-prefix=PREFIX --port=PORT [flags]',
    '',
    'Proxies PORT to the instances of the service registered under PREFIX in etcd,',
    'through an haproxy that follows every change.',
    '',
    'Flags (each also read from AMBASSADOR_<FLAG>, e.g. AMBASSADOR_ETCD_PREFIX; the flag wins):',
    ...rows,
    '',
    'Keys read under PREFIX (--layout=instances):',
    '  master                       name of the master instance (with --master-only)',
    '  instances/<name>/private_ip  address of an instance (public_ip with --public)',
    '  instances/<name>/port        port of an instance (optional)',
    "With --layout=patroni, Patroni's own: leader, members/<name> (JSON: conn_url, role, state, tags), status.",
    '',
    'Exit codes: 0 stopped cleanly, 1 failed (haproxy or etcd), 2 usage error.',
  ].join('\n');
}

class UsageError extends Error {}

export function parseCommandLine(argv: readonly string[], env: Readonly<Record<string, string | undefined>>): ParsedCommandLine {
  try {
    return parse(argv, env);
  } catch (err) {
    if (err instanceof UsageError) return { kind: 'usage-error', message: err.message };
    throw err;
  }
}

function parse(argv: readonly string[], env: Readonly<Record<string, string | undefined>>): ParsedCommandLine {
  const args = withoutOwnPath(argv);
  const parsed = mri([...args], {
    boolean: FLAGS.filter((f) => f.boolean).map((f) => f.name),
    string: FLAGS.filter((f) => !f.boolean).map((f) => f.name),
    alias: Object.fromEntries([...FLAGS.map((f) => [f.name, f.name === 'help' ? ['h'] : []])]),
    unknown: (flag: string) => {
      throw new UsageError(unknownFlagMessage(flag));
    },
  }) as Record<string, unknown> & { _: unknown[] };
  if (parsed._.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(String(parsed._[0]))} (flags take the form --name=value)`);
  if (parsed.help === true) return { kind: 'help' };
  if (parsed.version === true) return { kind: 'version' };
  if (parsed['dry-run'] === true && parsed.once === true) throw new UsageError('--dry-run and --once exclude each other: pick one');

  const given = new Set(args.filter((a) => a.startsWith('-')).map((a) => a.replace(/^-+(no-)?/, '').split('=')[0]));
  const warnings: string[] = [];
  const raw = (name: string): string | undefined => {
    const flag = FLAGS.find((f) => f.name === name)!;
    if (given.has(name)) {
      const value = parsed[name];
      if (Array.isArray(value)) throw new UsageError(`--${name} is given more than once`);
      if (flag.boolean) return value === false ? 'false' : 'true';
      if (typeof value !== 'string' || value === '') throw new UsageError(`--${name} needs a value: --${name}=${flag.value}`);
      return value;
    }
    const fromEnv = env[envName(name)];
    if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
    return flag.default;
  };
  const source = (name: string) => (given.has(name) ? `--${name}` : env[envName(name)] ? `${envName(name)}` : `--${name}`);
  const bool = (name: string): boolean => {
    const value = raw(name);
    if (value === undefined) return false;
    if (/^(1|true|yes|on)$/i.test(value)) return true;
    if (/^(0|false|no|off)$/i.test(value)) return false;
    throw new UsageError(`${source(name)}=${JSON.stringify(value)} is not a boolean (use true or false)`);
  };
  const text = (name: string): string | undefined => {
    const value = raw(name);
    if (value !== undefined && /[\u0000-\u001f\u007f]/.test(value)) {
      throw new UsageError(`${source(name)} holds a control character (newline, tab, ...)`);
    }
    return value;
  };
  const required = (name: string): string => {
    const value = text(name);
    if (value === undefined) throw new UsageError(`--${name} is required (or ${envName(name)})`);
    return value;
  };
  const bytes = (name: string, value: string): number => {
    const match = /^(\d{1,12})\s*(B|kB|KB|MB|GB)?$/.exec(value);
    if (!match) throw new UsageError(`${source(name)}=${JSON.stringify(value)} is not a size (e.g. 16MB, 1048576)`);
    return Number(match[1]) * { B: 1, kB: 1024, KB: 1024, MB: 1 << 20, GB: 1 << 30 }[match[2] ?? 'B']!;
  };
  const port = (name: string, value: string): number => {
    const number = parsePort(value);
    if (number === undefined) throw new UsageError(`${source(name)}=${JSON.stringify(value)} is not a port (1-65535)`);
    return number;
  };

  const etcdPrefix = required('etcd-prefix').replace(/\/+$/, '');
  const layout = required('layout');
  if (layout !== 'instances' && layout !== 'patroni') throw new UsageError(`${source('layout')}=${JSON.stringify(layout)} is not one of instances, patroni`);
  if (etcdPrefix === '') throw new UsageError(`${source('etcd-prefix')} must name a prefix below the root, e.g. /services/mysql`);
  const listenPort = port('port', required('port'));
  const replicaPortText = text('replica-port');
  const replicaPort = replicaPortText === undefined ? undefined : port('replica-port', replicaPortText);
  if (replicaPort === listenPort) throw new UsageError(`--replica-port and --port are both ${listenPort}: give the replicas a port of their own`);
  const maxReplicaLagText = text('max-replica-lag');
  const maxReplicaLag = maxReplicaLagText === undefined ? undefined : bytes('max-replica-lag', maxReplicaLagText);
  if (maxReplicaLag !== undefined && layout !== 'patroni') throw new UsageError('--max-replica-lag needs --layout=patroni (replication lag is read from Patroni\'s keys)');
  if (maxReplicaLag !== undefined && replicaPort === undefined) throw new UsageError('--max-replica-lag needs --replica-port: it chooses the replicas that port routes to');
  if (layout === 'patroni') {
    for (const flag of ['public', 'backend-port']) {
      if (given.has(flag) || env[envName(flag)]) throw new UsageError(`--${flag} means nothing with --layout=patroni: each member's address and port come from its conn_url`);
    }
  }
  const backendPortText = text('backend-port');
  const bind = required('bind');
  if (isIP(bind) === 0) throw new UsageError(`${source('bind')}=${JSON.stringify(bind)} is not an IPv4 or IPv6 address`);
  const hardStopAfter = required('hard-stop-after');
  if (durationMs(hardStopAfter) === undefined) {
    throw new UsageError(`${source('hard-stop-after')}=${JSON.stringify(hardStopAfter)} is not a duration (e.g. 30s, 5m, 1h)`);
  }
  const statusText = text('status');
  const statusMatch = statusText === undefined ? null : /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(statusText);
  const statusHost = statusMatch?.[1] ?? statusMatch?.[2];
  const statusPort = parsePort(statusMatch?.[3] ?? '');
  if (statusText !== undefined && (statusHost === undefined || isIP(statusHost) === 0 || statusPort === undefined)) {
    throw new UsageError(`${source('status')}=${JSON.stringify(statusText)} is not ADDR:PORT (e.g. 127.0.0.1:9110 or [::1]:9110)`);
  }
  const maxStale = durationMs(required('max-stale'));
  if (maxStale === undefined || maxStale <= 0) throw new UsageError(`${source('max-stale')}=${JSON.stringify(raw('max-stale'))} is not a duration (e.g. 30s, 2m)`);
  const etcdCheck = durationMs(required('etcd-check-interval'));
  if (etcdCheck === undefined) throw new UsageError(`${source('etcd-check-interval')}=${JSON.stringify(raw('etcd-check-interval'))} is not a duration (e.g. 1s, 500ms; 0 turns the check off)`);
  if (etcdCheck > 0 && etcdCheck < 100) throw new UsageError(`${source('etcd-check-interval')}=${JSON.stringify(raw('etcd-check-interval'))} is too often for etcd: 100ms at least (or 0, off)`);
  const apply = required('apply');
  if (apply !== 'runtime' && apply !== 'reload') throw new UsageError(`${source('apply')}=${JSON.stringify(apply)} is not one of runtime, reload`);
  const logFormat = required('log-format');
  if (!(LOG_FORMATS as readonly string[]).includes(logFormat)) {
    throw new UsageError(`${source('log-format')}=${JSON.stringify(logFormat)} is not one of ${LOG_FORMATS.join(', ')}`);
  }
  const logLevel = required('log-level');
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new UsageError(`${source('log-level')}=${JSON.stringify(logLevel)} is not one of ${LOG_LEVELS.join(', ')}`);
  }

  const etcdCa = text('etcd-ca');
  const etcdCert = text('etcd-cert');
  const etcdKey = text('etcd-key');
  if ((etcdCert === undefined) !== (etcdKey === undefined)) throw new UsageError('--etcd-cert and --etcd-key go together: give both or neither');
  const etcdUser = text('etcd-user');
  const etcdPassword = raw('etcd-password');
  const etcdPasswordFile = text('etcd-password-file');
  if (etcdPassword !== undefined && etcdPasswordFile !== undefined) throw new UsageError('give --etcd-password or --etcd-password-file, not both');
  if ((etcdPassword !== undefined || etcdPasswordFile !== undefined) && etcdUser === undefined) throw new UsageError('an etcd password needs --etcd-user');
  if (etcdUser !== undefined && etcdPassword === undefined && etcdPasswordFile === undefined) {
    throw new UsageError(`--etcd-user needs a password: --etcd-password-file, ${envName('etcd-password')} or --etcd-password`);
  }
  if (given.has('etcd-password')) warnings.push('--etcd-password is visible to every user in ps; use --etcd-password-file or AMBASSADOR_ETCD_PASSWORD');
  const tls = etcdCa !== undefined || etcdCert !== undefined;
  const runtimeDir = text('runtime-dir') ?? defaultRuntimeDir(env, bind, listenPort);

  const options: Options = {
    etcd: parseEndpoints(required('etcd'), tls, source('etcd')),
    etcdPrefix,
    layout,
    port: listenPort,
    replicaPort,
    maxReplicaLag,
    bind,
    backendPort: backendPortText === undefined ? listenPort : port('backend-port', backendPortText),
    masterOnly: bool('master-only'),
    public: bool('public'),
    haproxy: required('haproxy'),
    haproxyConfig: text('haproxy-config') ?? `${runtimeDir}/haproxy.cfg`,
    runtimeDir,
    hardStopAfter,
    apply,
    dryRun: bool('dry-run'),
    once: bool('once'),
    status: statusHost !== undefined && statusPort !== undefined ? { host: statusHost, port: statusPort } : undefined,
    maxStaleMs: maxStale,
    etcdCheckMs: etcdCheck,
    etcdCa,
    etcdCert,
    etcdKey,
    etcdUser,
    etcdPassword,
    etcdPasswordFile,
    logFormat: logFormat as LogFormat,
    logLevel: logLevel as LogLevel,
  };
  return { kind: 'run', options: Object.freeze(options), warnings };
}

// haproxy's time format: a number with an optional unit (milliseconds by default).
function durationMs(text: string): number | undefined {
  const match = /^(\d{1,9})(ms|s|m|h|d)?$/.exec(text);
  if (!match) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2] ?? 'ms']!;
  return Number(match[1]) * unit;
}

// One dir per listener, so two ambassadors on one host never share a file. systemd's RuntimeDirectory= comes first.
function defaultRuntimeDir(env: Readonly<Record<string, string | undefined>>, bind: string, port: number): string {
  const base = env.RUNTIME_DIRECTORY?.split(':')[0] || env.XDG_RUNTIME_DIR || env.TMPDIR || '/tmp';
  return `${base.replace(/\/+$/, '')}/ambassador-${bind === '0.0.0.0' ? '' : `${bind}-`}${port}`;
}

// `docker run image /bin/ambassador --flags` passes the executable's own path as the first argument.
function withoutOwnPath(argv: readonly string[]): readonly string[] {
  return argv.length > 0 && /(^|\/)ambassador$/.test(argv[0]!) ? argv.slice(1) : argv;
}

// Each endpoint becomes a URL with a scheme and a port; a bare host means port 2379.
function parseEndpoints(list: string, tls: boolean, source: string): string[] {
  const endpoints = list.split(',').map((e) => e.trim()).filter((e) => e !== '');
  if (endpoints.length === 0) throw new UsageError(`${source} names no endpoint`);
  return endpoints.map((endpoint) => {
    const match = /^(?:(https?):\/\/)?(\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+)(?::(\d{1,5}))?\/?$/.exec(endpoint);
    const host = match?.[2];
    const hostOk = host !== undefined && (host.startsWith('[') ? isIP(host.slice(1, -1)) === 6 : isIP(host) === 4 || isHostName(host));
    const port = parsePort(match?.[3] ?? '2379');
    if (!match || !hostOk || port === undefined) {
      throw new UsageError(`${source}: ${JSON.stringify(endpoint)} is not an etcd endpoint (host, host:port or http(s)://host:port)`);
    }
    const scheme = match[1] ?? (tls ? 'https' : 'http');
    return `${scheme}://${host}:${port}`;
  });
}

function unknownFlagMessage(flag: string): string {
  const name = flag.replace(/^-+/, '').replace(/^no-/, '');
  const nearest = FLAGS.map((f) => ({ name: f.name, distance: editDistance(name, f.name) }))
    .sort((a, b) => a.distance - b.distance)[0]!;
  const hint = nearest.distance <= Math.max(2, Math.floor(name.length / 4)) ? ` (did you mean --${nearest.name}?)` : ' (see --help)';
  return `unknown flag ${flag}${hint}`;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}
