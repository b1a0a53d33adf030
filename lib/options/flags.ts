// The one table of flags. Each row declares a flag once: its name, the kind that reads its text, the field of
// Options it fills (the Options type is made from the rows), its default and its help. Parsing (parse.ts),
// --help and the docs' table (held to it by test/docs) all come from it; so do the rules across flags. Pure.

import { LOG_FORMATS, LOG_LEVELS } from '../common/log.ts';
import * as kinds from './kinds.ts';
import type { Kind } from './kinds.ts';

type Env = Readonly<Record<string, string | undefined>>;

interface Row<F extends string, T> {
  name: string;
  field: F;
  kind: Kind<unknown>;
  // The placeholder --help shows: --port=PORT.
  value?: string;
  default?: string;
  required?: true;
  help: string;
  // The value, from what the kind read (undefined when the flag is not given and has no default), the options
  // (every field as read, those of earlier rows finished) and the environment: a default that depends on
  // other flags or the environment.
  finish(read: unknown, options: Readonly<Record<string, unknown>>, env: Env): T;
}

type Text = { name: string; value?: string; help: string };
const as = <T>(read: unknown) => read as T;

// Required: the flag must be given (or set in the environment).
const required = <const F extends string, T>(row: Text & { field: F; kind: Kind<T> }): Row<F, T> => ({ ...row, required: true, finish: as<T> });
const optional = <const F extends string, T>(row: Text & { field: F; kind: Kind<T> }): Row<F, T | undefined> => ({ ...row, finish: as<T | undefined> });
const withDefault = <const F extends string, T>(row: Text & { field: F; kind: Kind<T>; default: string }): Row<F, T> => ({ ...row, finish: as<T> });
const switched = <const F extends string>(row: Text & { field: F }): Row<F, boolean> => ({ ...row, kind: kinds.boolean, finish: (read) => (read as boolean | undefined) ?? false });
const derived = <const F extends string, R, T>(row: Text & { field: F; kind: Kind<R>; default?: string; finish: (read: R | undefined, options: Readonly<Record<string, unknown>>, env: Env) => T }): Row<F, T> => ({
  ...row,
  finish: (read, options, env) => row.finish(read as R | undefined, options, env),
});

// One dir per listener, so two ambassadors on one host never share a file. systemd's RuntimeDirectory= comes first.
function defaultRuntimeDir(env: Env, bind: string, port: number): string {
  const base = env.RUNTIME_DIRECTORY?.split(':')[0] || env.XDG_RUNTIME_DIR || env.TMPDIR || '/tmp';
  return `${base.replace(/\/+$/, '')}/ambassador-${bind === '0.0.0.0' ? '' : `${bind}-`}${port}`;
}

const ROWS = [
  derived({
    name: 'etcd',
    field: 'etcd',
    value: 'ENDPOINTS',
    default: '127.0.0.1:2379',
    kind: kinds.endpoints,
    help: 'etcd endpoints, comma-separated: host, host:port or http(s)://host:port (port 2379 if none)',
    // A CA or a client certificate means https for the bare ones.
    finish: (read, options) => kinds.endpointUrls(read!, options.etcdCa !== undefined || options.etcdCert !== undefined),
  }),
  required({ name: 'etcd-prefix', field: 'etcdPrefix', value: 'PREFIX', kind: kinds.prefix, help: "the service's key prefix, e.g. /services/mysql (required)" }),
  withDefault({ name: 'layout', field: 'layout', value: 'instances|patroni', default: 'instances', kind: kinds.oneOf(['instances', 'patroni']), help: "the keys under PREFIX: ambassador's instances/<name>/... layout, or Patroni's own (PREFIX=/service/<scope>)" }),
  required({ name: 'port', field: 'port', value: 'PORT', kind: kinds.port, help: 'port haproxy listens on (required): the master with --master-only, else every instance' }),
  optional({ name: 'replica-port', field: 'replicaPort', value: 'PORT', kind: kinds.port, help: 'a second port, routed to every routable instance but the master (Patroni: running replicas)' }),
  withDefault({
    name: 'replicas',
    field: 'replicaSelection',
    value: 'ENDPOINT',
    default: '/replica',
    kind: kinds.replicaSelection,
    help: "with --layout=patroni: the members --replica-port routes to, as Patroni's REST check answers 200: /replica, /async, /sync, /quorum, /read-only or /read-only-sync, with lag=, replication_state=, tag_<key>= (e.g. /replica?lag=16MB&replication_state=streaming)",
  }),
  optional({ name: 'max-replica-lag', field: 'maxReplicaLag', value: 'SIZE', kind: kinds.size, help: "with --layout=patroni: leave out replicas whose replay trails the leader's WAL by more, e.g. 16MB (the same as --replicas=/replica?lag=16MB)" }),
  switched({ name: 'replica-fallback', field: 'replicaFallback', help: 'with --layout=patroni: while no replica qualifies, the replica port routes to the primary, and leaves it as soon as one does' }),
  withDefault({ name: 'replica-sessions', field: 'replicaSessions', value: 'cut|keep', default: 'cut', kind: kinds.oneOf(['cut', 'keep']), help: "with --layout=patroni: sessions on a replica that stops qualifying (lag, the sync standby moved): cut, as Patroni's haproxy recipe does, or kept until they end" }),
  withDefault({
    name: 'hold',
    field: 'holdMs',
    value: 'TIME',
    default: '10s',
    kind: kinds.upTo('10s, 500ms; 0 closes them at once', 600_000),
    help: 'how long a new connection waits for a routable master (or, on --replica-port, replica) before it is closed; it goes on the moment one is open (0: closed at once)',
  }),
  withDefault({ name: 'bind', field: 'bind', value: 'ADDRESS', default: '0.0.0.0', kind: kinds.address, help: 'address haproxy listens on (an IPv4 or IPv6 literal)' }),
  derived({ name: 'backend-port', field: 'backendPort', value: 'PORT', kind: kinds.port, help: 'port on the instances when they have no port key (default: --port)', finish: (read, options) => read ?? (options.port as number) }),
  switched({ name: 'master-only', field: 'masterOnly', help: 'route --port only to the master: the instance named by <prefix>/master (Patroni: the leader)' }),
  switched({ name: 'public', field: 'public', help: 'use instances/<name>/public_ip instead of private_ip' }),
  withDefault({ name: 'haproxy', field: 'haproxy', value: 'PATH', default: 'haproxy', kind: kinds.text, help: 'haproxy executable' }),
  derived({
    name: 'runtime-dir',
    field: 'runtimeDir',
    value: 'DIR',
    kind: kinds.text,
    help: 'private directory for the config, admin sockets and pid files (default: $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, $TMPDIR or /tmp, + /ambassador-[<bind>-]<port>)',
    finish: (read, options, env) => read ?? defaultRuntimeDir(env, options.bind as string, options.port as number),
  }),
  derived({ name: 'haproxy-config', field: 'haproxyConfig', value: 'FILE', kind: kinds.text, help: 'where the rendered config is written (default: <runtime-dir>/haproxy.cfg)', finish: (read, options) => read ?? `${options.runtimeDir as string}/haproxy.cfg` }),
  withDefault({ name: 'hard-stop-after', field: 'hardStopAfter', value: 'TIME', default: '5m', kind: kinds.time('30s, 5m, 1h'), help: 'how long a replaced haproxy worker may keep its connections after a reload (e.g. 30s, 5m, 1h)' }),
  withDefault({ name: 'apply', field: 'apply', value: 'runtime|reload', default: 'runtime', kind: kinds.oneOf(['runtime', 'reload']), help: 'how changes reach haproxy: runtime (its runtime API, a reload only for what that cannot do) or reload (always)' }),
  switched({ name: 'dry-run', field: 'dryRun', help: 'print the config for the current etcd state (a diff if the config file exists) and the problems found, then exit' }),
  switched({ name: 'once', field: 'once', help: 'apply the current etcd state once (check, write, start or reload haproxy), then exit, leaving haproxy running' }),
  optional({ name: 'status', field: 'status', value: 'ADDR:PORT', kind: kinds.listen, help: 'serve /healthz, /metrics and /state over HTTP there, e.g. 127.0.0.1:9110 (off by default)' }),
  withDefault({ name: 'max-stale', field: 'maxStaleMs', value: 'TIME', default: '60s', kind: kinds.duration('30s, 2m', 1), help: 'how long the etcd watch may be down before /healthz says 503' }),
  withDefault({
    name: 'etcd-check-interval',
    field: 'etcdCheckMs',
    value: 'TIME',
    default: '2s',
    kind: kinds.duration('2s, 500ms; 0 turns the check off', 100, 'the check is off'),
    help: 'how often the routing keys are read linearizably from the etcd member watched and its watch asked for progress: to leave a member that lost its quorum, and find a watch that stalled or lost a change (0: never)',
  }),
  optional({ name: 'etcd-ca', field: 'etcdCa', value: 'FILE', kind: kinds.text, help: 'CA certificate to verify etcd (implies https)' }),
  optional({ name: 'etcd-cert', field: 'etcdCert', value: 'FILE', kind: kinds.text, help: 'client certificate for etcd (with --etcd-key)' }),
  optional({ name: 'etcd-key', field: 'etcdKey', value: 'FILE', kind: kinds.text, help: 'client private key for etcd (with --etcd-cert)' }),
  optional({ name: 'etcd-user', field: 'etcdUser', value: 'USER', kind: kinds.text, help: 'etcd user name (with a password)' }),
  optional({ name: 'etcd-password', field: 'etcdPassword', value: 'PASSWORD', kind: kinds.secret, help: 'etcd password; prefer --etcd-password-file or the environment, since flags show in ps' }),
  optional({ name: 'etcd-password-file', field: 'etcdPasswordFile', value: 'FILE', kind: kinds.text, help: 'file holding the etcd password' }),
  withDefault({ name: 'log-format', field: 'logFormat', value: 'text|json', default: 'text', kind: kinds.oneOf(LOG_FORMATS), help: 'log line format on stderr' }),
  withDefault({ name: 'log-level', field: 'logLevel', value: 'LEVEL', default: 'info', kind: kinds.oneOf(LOG_LEVELS), help: 'least important level logged: debug, info, warn or error' }),
] as const;

// What the rows make: each field, with the type its row gives it.
export type Options = { readonly [R in (typeof ROWS)[number] as R['field']]: ReturnType<R['finish']> };

export const OPTION_ROWS: readonly Row<keyof Options, unknown>[] = ROWS;

// Flags that are not options: they answer at once, before anything else is checked.
export const ACTIONS = [
  { name: 'help', help: 'show this help and exit' },
  { name: 'version', help: 'show the version and exit' },
] as const;

// Every flag, for --help and the docs.
export const FLAGS: readonly { name: string; value?: string; default?: string; help: string }[] = [...ROWS, ...ACTIONS];

export function envName(flag: string): string {
  return 'AMBASSADOR_' + flag.toUpperCase().replaceAll('-', '_');
}

// Rules across flags, checked once every flag is read: a message when broken. `given`: the flags on the
// command line.
export const RULES: ((options: Options, given: ReadonlySet<string>) => string | undefined)[] = [
  (o) => (o.dryRun && o.once ? '--dry-run and --once exclude each other: pick one' : undefined),
  (o) => (o.replicaPort !== undefined && o.replicaPort === o.port ? `--replica-port and --port are both ${o.port}: give the replicas a port of their own` : undefined),
  (o, given) => {
    const patroniOnly = ['replicas', 'max-replica-lag', 'replica-fallback', 'replica-sessions'].find((flag) => given.has(flag));
    if (patroniOnly === undefined) return undefined;
    if (o.layout !== 'patroni') return `--${patroniOnly} needs --layout=patroni (it reads Patroni's keys)`;
    return o.replicaPort === undefined ? `--${patroniOnly} needs --replica-port: it chooses what that port routes to` : undefined;
  },
  (o) => (o.maxReplicaLag !== undefined && o.replicaSelection.lag !== undefined ? 'give the lag once: --max-replica-lag or lag= in --replicas' : undefined),
  (o, given) => {
    const meaningless = o.layout === 'patroni' ? ['public', 'backend-port'].find((flag) => given.has(flag)) : undefined;
    return meaningless && `--${meaningless} means nothing with --layout=patroni: each member's address and port come from its conn_url`;
  },
  (o) => ((o.etcdCert === undefined) !== (o.etcdKey === undefined) ? '--etcd-cert and --etcd-key go together: give both or neither' : undefined),
  (o) => (o.etcdPassword !== undefined && o.etcdPasswordFile !== undefined ? 'give --etcd-password or --etcd-password-file, not both' : undefined),
  (o) => ((o.etcdPassword !== undefined || o.etcdPasswordFile !== undefined) && o.etcdUser === undefined ? 'an etcd password needs --etcd-user' : undefined),
  (o) => (o.etcdUser !== undefined && o.etcdPassword === undefined && o.etcdPasswordFile === undefined ? `--etcd-user needs a password: --etcd-password-file, ${envName('etcd-password')} or --etcd-password` : undefined),
];
