// Command line and AMBASSADOR_* environment → one validated, frozen Options, or a usage error.
// Pure: it reads only the argv and env it is given, and touches no file (paths are checked where they are used).

import mri from 'mri';
import { isIP } from 'node:net';
import { isHostName, parsePort } from './address.ts';
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from './log.ts';

type Layout = 'instances' | 'patroni';

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

type ParsedCommandLine =
  | { kind: 'run'; options: Options; warnings: string[] }
  | { kind: 'help' }
  | { kind: 'version' }
  | { kind: 'usage-error'; message: string };

// How a flag's value is read: each kind checks its text and gives the value Options holds, or says why not.
type Kind =
  | { kind: 'text' }
  // Read as it is: a password may hold any character.
  | { kind: 'secret' }
  | { kind: 'boolean' }
  | { kind: 'port' }
  | { kind: 'size' }
  // In ms; `least` > 0: shorter is refused, but 0 (off) when `off` says what 0 means.
  | { kind: 'duration'; example: string; least?: number; off?: string }
  // haproxy's time format, checked and kept as written (it goes into haproxy's config).
  | { kind: 'time'; example: string }
  | { kind: 'enum'; values: readonly string[] }
  // An IPv4 or IPv6 literal.
  | { kind: 'address' }
  // ADDR:PORT, the address a literal.
  | { kind: 'listen' }
  | { kind: 'prefix' }
  | { kind: 'endpoints' };

interface Flag {
  name: string;
  value?: string;
  default?: string;
  required?: true;
  help: string;
  read: Kind;
}

const text: Kind = { kind: 'text' };
const boolean: Kind = { kind: 'boolean' };
const port: Kind = { kind: 'port' };

// The one table of flags: parsing, environment names and --help all come from it (and docs/operating.md's
// table is held to it by test/docs.test.ts).
export const FLAGS: readonly Flag[] = [
  { name: 'etcd', value: 'ENDPOINTS', default: '127.0.0.1:2379', read: { kind: 'endpoints' }, help: 'etcd endpoints, comma-separated: host, host:port or http(s)://host:port (port 2379 if none)' },
  { name: 'etcd-prefix', value: 'PREFIX', required: true, read: { kind: 'prefix' }, help: "the service's key prefix, e.g. /services/mysql (required)" },
  { name: 'layout', value: 'instances|patroni', default: 'instances', read: { kind: 'enum', values: ['instances', 'patroni'] }, help: "the keys under PREFIX: ambassador's instances/<name>/... layout, or Patroni's own (PREFIX=/service/<scope>)" },
  { name: 'port', value: 'PORT', required: true, read: port, help: 'port haproxy listens on (required): the master with --master-only, else every instance' },
  { name: 'replica-port', value: 'PORT', read: port, help: 'a second port, routed to every routable instance but the master (Patroni: running replicas)' },
  { name: 'max-replica-lag', value: 'SIZE', read: { kind: 'size' }, help: "with --layout=patroni: leave out replicas whose WAL trails the leader's by more, e.g. 16MB" },
  { name: 'bind', value: 'ADDRESS', default: '0.0.0.0', read: { kind: 'address' }, help: 'address haproxy listens on (an IPv4 or IPv6 literal)' },
  { name: 'backend-port', value: 'PORT', read: port, help: 'port on the instances when they have no port key (default: --port)' },
  { name: 'master-only', read: boolean, help: 'route --port only to the master: the instance named by <prefix>/master (Patroni: the leader)' },
  { name: 'public', read: boolean, help: 'use instances/<name>/public_ip instead of private_ip' },
  { name: 'haproxy', value: 'PATH', default: 'haproxy', read: text, help: 'haproxy executable' },
  { name: 'haproxy-config', value: 'FILE', read: text, help: 'where the rendered config is written (default: <runtime-dir>/haproxy.cfg)' },
  { name: 'runtime-dir', value: 'DIR', read: text, help: 'private directory for the config, admin sockets and pid files (default: $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, $TMPDIR or /tmp, + /ambassador-[<bind>-]<port>)' },
  { name: 'hard-stop-after', value: 'TIME', default: '5m', read: { kind: 'time', example: '30s, 5m, 1h' }, help: 'how long a replaced haproxy worker may keep its connections after a reload (e.g. 30s, 5m, 1h)' },
  { name: 'apply', value: 'runtime|reload', default: 'runtime', read: { kind: 'enum', values: ['runtime', 'reload'] }, help: "how changes reach haproxy: runtime (its runtime API, a reload only for what that cannot do) or reload (always)" },
  { name: 'dry-run', read: boolean, help: 'print the config for the current etcd state (a diff if the config file exists) and the problems found, then exit' },
  { name: 'once', read: boolean, help: 'apply the current etcd state once (check, write, start or reload haproxy), then exit, leaving haproxy running' },
  { name: 'status', value: 'ADDR:PORT', read: { kind: 'listen' }, help: 'serve /healthz, /metrics and /state over HTTP there, e.g. 127.0.0.1:9110 (off by default)' },
  { name: 'max-stale', value: 'TIME', default: '60s', read: { kind: 'duration', example: '30s, 2m', least: 1 }, help: 'how long the etcd watch may be down before /healthz says 503' },
  {
    name: 'etcd-check-interval',
    value: 'TIME',
    default: '2s',
    read: { kind: 'duration', example: '2s, 500ms; 0 turns the check off', least: 100, off: 'the check is off' },
    help: 'how often the routing keys are read linearizably from the etcd member watched and its watch asked for progress: to leave a member that lost its quorum, and find a watch that stalled or lost a change (0: never)',
  },
  { name: 'etcd-ca', value: 'FILE', read: text, help: 'CA certificate to verify etcd (implies https)' },
  { name: 'etcd-cert', value: 'FILE', read: text, help: 'client certificate for etcd (with --etcd-key)' },
  { name: 'etcd-key', value: 'FILE', read: text, help: 'client private key for etcd (with --etcd-cert)' },
  { name: 'etcd-user', value: 'USER', read: text, help: 'etcd user name (with a password)' },
  { name: 'etcd-password', value: 'PASSWORD', read: { kind: 'secret' }, help: 'etcd password; prefer --etcd-password-file or the environment, since flags show in ps' },
  { name: 'etcd-password-file', value: 'FILE', read: text, help: 'file holding the etcd password' },
  { name: 'log-format', value: 'text|json', default: 'text', read: { kind: 'enum', values: LOG_FORMATS }, help: 'log line format on stderr' },
  { name: 'log-level', value: 'LEVEL', default: 'info', read: { kind: 'enum', values: LOG_LEVELS }, help: 'least important level logged: debug, info, warn or error' },
  { name: 'help', read: boolean, help: 'show this help and exit' },
  { name: 'version', read: boolean, help: 'show the version and exit' },
];

function envName(flag: string): string {
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
    'The executable also takes, anywhere on its command line:',
    `  ${'--node-options=FLAGS'.padEnd(30)} flags for its own Node, e.g. --node-options="--max-old-space-size=256" (NODE_OPTIONS is not read)`,
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

// Each flag's value as its kind reads it (undefined when it is not set), and where it came from.
type Values = Record<string, unknown>;
interface Read {
  values: Values;
  given: ReadonlySet<string>;
  source(name: string): string;
}

// Rules across flags, checked once each flag is read: a message when broken.
const RULES: ((read: Read) => string | undefined)[] = [
  ({ values: v }) => (v['dry-run'] && v.once ? '--dry-run and --once exclude each other: pick one' : undefined),
  ({ values: v }) => (v['replica-port'] !== undefined && v['replica-port'] === v.port ? `--replica-port and --port are both ${v.port}: give the replicas a port of their own` : undefined),
  ({ values: v }) => (v['max-replica-lag'] !== undefined && v.layout !== 'patroni' ? "--max-replica-lag needs --layout=patroni (replication lag is read from Patroni's keys)" : undefined),
  ({ values: v }) => (v['max-replica-lag'] !== undefined && v['replica-port'] === undefined ? '--max-replica-lag needs --replica-port: it chooses the replicas that port routes to' : undefined),
  ({ values: v, given }) => {
    const meaningless = v.layout === 'patroni' ? ['public', 'backend-port'].find((flag) => given.has(flag)) : undefined;
    return meaningless && `--${meaningless} means nothing with --layout=patroni: each member's address and port come from its conn_url`;
  },
  ({ values: v }) => ((v['etcd-cert'] === undefined) !== (v['etcd-key'] === undefined) ? '--etcd-cert and --etcd-key go together: give both or neither' : undefined),
  ({ values: v }) => (v['etcd-password'] !== undefined && v['etcd-password-file'] !== undefined ? 'give --etcd-password or --etcd-password-file, not both' : undefined),
  ({ values: v }) => ((v['etcd-password'] !== undefined || v['etcd-password-file'] !== undefined) && v['etcd-user'] === undefined ? 'an etcd password needs --etcd-user' : undefined),
  ({ values: v }) =>
    v['etcd-user'] !== undefined && v['etcd-password'] === undefined && v['etcd-password-file'] === undefined
      ? `--etcd-user needs a password: --etcd-password-file, ${envName('etcd-password')} or --etcd-password`
      : undefined,
];

function parse(argv: readonly string[], env: Readonly<Record<string, string | undefined>>): ParsedCommandLine {
  const args = withoutOwnPath(argv);
  const parsed = mri([...args], {
    boolean: FLAGS.filter((f) => f.read.kind === 'boolean').map((f) => f.name),
    string: FLAGS.filter((f) => f.read.kind !== 'boolean').map((f) => f.name),
    // mri knows a flag (and calls `unknown` for the others) by its alias entry.
    alias: Object.fromEntries(FLAGS.map((f) => [f.name, f.name === 'help' ? ['h'] : []])),
    unknown: (flag: string) => {
      throw new UsageError(unknownFlagMessage(flag));
    },
  }) as Record<string, unknown> & { _: unknown[] };
  if (parsed._.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(String(parsed._[0]))} (flags take the form --name=value)`);
  if (parsed.help === true) return { kind: 'help' };
  if (parsed.version === true) return { kind: 'version' };

  const given = new Set(args.filter((a) => a.startsWith('-')).map((a) => a.replace(/^-+(no-)?/, '').split('=')[0]!));
  // A flag's text, from the command line, then the environment, then its default.
  const raw = (flag: Flag): string | undefined => {
    if (given.has(flag.name)) {
      const value = parsed[flag.name];
      if (Array.isArray(value)) throw new UsageError(`--${flag.name} is given more than once`);
      if (flag.read.kind === 'boolean') return value === false ? 'false' : 'true';
      if (typeof value !== 'string' || value === '') throw new UsageError(`--${flag.name} needs a value: --${flag.name}=${flag.value}`);
      return value;
    }
    const fromEnv = env[envName(flag.name)];
    return fromEnv !== undefined && fromEnv !== '' ? fromEnv : flag.default;
  };
  const source = (name: string) => (given.has(name) ? `--${name}` : env[envName(name)] ? envName(name) : `--${name}`);
  const values: Values = {};
  for (const flag of FLAGS) {
    const value = raw(flag);
    if (value === undefined && flag.required) throw new UsageError(`--${flag.name} is required (or ${envName(flag.name)})`);
    values[flag.name] = value === undefined ? (flag.read.kind === 'boolean' ? false : undefined) : readValue(flag, value, source(flag.name));
  }
  for (const rule of RULES) {
    const broken = rule({ values, given, source });
    if (broken) throw new UsageError(broken);
  }
  const warnings = given.has('etcd-password') ? ['--etcd-password is visible to every user in ps; use --etcd-password-file or AMBASSADOR_ETCD_PASSWORD'] : [];
  return { kind: 'run', options: Object.freeze(optionsOf(values, env)), warnings };
}

// One flag's text, read as its kind says: the value, or a usage error that names where it came from.
function readValue(flag: Flag, value: string, source: string): unknown {
  const bad = (what: string) => new UsageError(`${source}=${JSON.stringify(value)} ${what}`);
  const kind = flag.read;
  if (kind.kind !== 'secret' && /[\u0000-\u001f\u007f]/.test(value)) throw new UsageError(`${source} holds a control character (newline, tab, ...)`);
  switch (kind.kind) {
    case 'text':
    case 'secret':
      return value;
    case 'boolean':
      if (/^(1|true|yes|on)$/i.test(value)) return true;
      if (/^(0|false|no|off)$/i.test(value)) return false;
      throw bad('is not a boolean (use true or false)');
    case 'port': {
      const number = parsePort(value);
      if (number === undefined) throw bad('is not a port (1-65535)');
      return number;
    }
    case 'size': {
      const match = /^(\d{1,12})\s*(B|kB|KB|MB|GB)?$/.exec(value);
      if (!match) throw bad('is not a size (e.g. 16MB, 1048576)');
      return Number(match[1]) * { B: 1, kB: 1024, KB: 1024, MB: 1 << 20, GB: 1 << 30 }[match[2] ?? 'B']!;
    }
    case 'duration': {
      const ms = durationMs(value);
      if (ms === undefined || (kind.least !== undefined && kind.off === undefined && ms < kind.least)) throw bad(`is not a duration (e.g. ${kind.example})`);
      if (kind.least !== undefined && ms > 0 && ms < kind.least) throw bad(`is too often for etcd: ${kind.least}ms at least (or 0, off)`);
      return ms;
    }
    case 'time':
      if (durationMs(value) === undefined) throw bad(`is not a duration (e.g. ${kind.example})`);
      return value;
    case 'enum':
      if (!kind.values.includes(value)) throw bad(`is not one of ${kind.values.join(', ')}`);
      return value;
    case 'address':
      if (isIP(value) === 0) throw bad('is not an IPv4 or IPv6 address');
      return value;
    case 'listen': {
      const match = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(value);
      const host = match?.[1] ?? match?.[2];
      const number = parsePort(match?.[3] ?? '');
      if (host === undefined || isIP(host) === 0 || number === undefined) throw bad('is not ADDR:PORT (e.g. 127.0.0.1:9110 or [::1]:9110)');
      return { host, port: number };
    }
    case 'prefix': {
      const prefix = value.replace(/\/+$/, '');
      if (prefix === '') throw new UsageError(`${source} must name a prefix below the root, e.g. /services/mysql`);
      return prefix;
    }
    case 'endpoints':
      // Checked now; made URLs once the TLS flags are read (a CA or a certificate means https).
      parseEndpoints(value, false, source);
      return value;
  }
}

// Options from the values read.
function optionsOf(v: Values, env: Readonly<Record<string, string | undefined>>): Options {
  const str = (name: string) => v[name] as string | undefined;
  const port = v.port as number;
  const bind = str('bind')!;
  const runtimeDir = str('runtime-dir') ?? defaultRuntimeDir(env, bind, port);
  const tls = v['etcd-ca'] !== undefined || v['etcd-cert'] !== undefined;
  return {
    etcd: parseEndpoints(str('etcd')!, tls, '--etcd'),
    etcdPrefix: str('etcd-prefix')!,
    layout: str('layout') as Layout,
    port,
    replicaPort: v['replica-port'] as number | undefined,
    maxReplicaLag: v['max-replica-lag'] as number | undefined,
    bind,
    backendPort: (v['backend-port'] as number | undefined) ?? port,
    masterOnly: v['master-only'] as boolean,
    public: v.public as boolean,
    haproxy: str('haproxy')!,
    haproxyConfig: str('haproxy-config') ?? `${runtimeDir}/haproxy.cfg`,
    runtimeDir,
    hardStopAfter: str('hard-stop-after')!,
    apply: str('apply') as Options['apply'],
    dryRun: v['dry-run'] as boolean,
    once: v.once as boolean,
    status: v.status as Options['status'],
    maxStaleMs: v['max-stale'] as number,
    etcdCheckMs: v['etcd-check-interval'] as number,
    etcdCa: str('etcd-ca'),
    etcdCert: str('etcd-cert'),
    etcdKey: str('etcd-key'),
    etcdUser: str('etcd-user'),
    etcdPassword: str('etcd-password'),
    etcdPasswordFile: str('etcd-password-file'),
    logFormat: str('log-format') as LogFormat,
    logLevel: str('log-level') as LogLevel,
  };
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
