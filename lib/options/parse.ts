// Command line and AMBASSADOR_* environment → one validated, frozen Options, or a usage error; and --help, all
// from the table in flags.ts. Pure: it reads only the argv and env it is given, and touches no file (paths are
// checked where they are used).

import mri from 'mri';
import { ACTIONS, envName, FLAGS, OPTION_ROWS, RULES, type Options } from './flags.ts';
import { Refusal } from './kinds.ts';

export type { Options } from './flags.ts';

type Env = Readonly<Record<string, string | undefined>>;

type ParsedCommandLine =
  | { kind: 'run'; options: Options; warnings: string[] }
  | { kind: 'help' }
  | { kind: 'version' }
  | { kind: 'usage-error'; message: string };

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

export function parseCommandLine(argv: readonly string[], env: Env): ParsedCommandLine {
  try {
    return parse(argv, env);
  } catch (err) {
    if (err instanceof UsageError) return { kind: 'usage-error', message: err.message };
    throw err;
  }
}

function parse(argv: readonly string[], env: Env): ParsedCommandLine {
  const args = withoutOwnPath(argv);
  const parsed = mri([...args], {
    boolean: [...OPTION_ROWS.filter((row) => row.kind.boolean).map((row) => row.name), ...ACTIONS.map((action) => action.name)],
    string: OPTION_ROWS.filter((row) => !row.kind.boolean).map((row) => row.name),
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
  // Every field as its kind reads it, then each finished in table order.
  const options: Record<string, unknown> = {};
  for (const row of OPTION_ROWS) options[row.field] = readRow(row, given, parsed, env);
  for (const row of OPTION_ROWS) options[row.field] = row.finish(options[row.field], options, env);
  for (const rule of RULES) {
    const broken = rule(options as Options, given);
    if (broken) throw new UsageError(broken);
  }
  const warnings = given.has('etcd-password') ? ['--etcd-password is visible to every user in ps; use --etcd-password-file or AMBASSADOR_ETCD_PASSWORD'] : [];
  return { kind: 'run', options: Object.freeze(options) as Options, warnings };
}

// One row's value as its kind reads its text, from the command line, then the environment, then its default;
// undefined when none.
function readRow(row: (typeof OPTION_ROWS)[number], given: ReadonlySet<string>, parsed: Record<string, unknown>, env: Env): unknown {
  let text: string | undefined;
  let source = `--${row.name}`;
  if (given.has(row.name)) {
    const value = parsed[row.name];
    if (Array.isArray(value)) throw new UsageError(`--${row.name} is given more than once`);
    if (row.kind.boolean) text = value === false ? 'false' : 'true';
    else if (typeof value !== 'string' || value === '') throw new UsageError(`--${row.name} needs a value: --${row.name}=${row.value}`);
    else text = value;
  } else if (env[envName(row.name)]) {
    [text, source] = [env[envName(row.name)], envName(row.name)];
  } else {
    text = row.default;
  }
  if (text === undefined) {
    if (row.required) throw new UsageError(`--${row.name} is required (or ${envName(row.name)})`);
    return undefined;
  }
  if (!row.kind.anyText && /[\u0000-\u001f\u007f]/.test(text)) throw new UsageError(`${source} holds a control character (newline, tab, ...)`);
  const value = row.kind.read(text);
  if (value instanceof Refusal) throw new UsageError(value.withValue ? `${source}=${JSON.stringify(text)} ${value.message}` : `${source}${value.message.startsWith(':') ? '' : ' '}${value.message}`);
  return value;
}

// `docker run image /bin/ambassador --flags` passes the executable's own path as the first argument.
function withoutOwnPath(argv: readonly string[]): readonly string[] {
  return argv.length > 0 && /(^|\/)ambassador$/.test(argv[0]!) ? argv.slice(1) : argv;
}

function unknownFlagMessage(flag: string): string {
  const name = flag.replace(/^-+/, '').replace(/^no-/, '');
  const nearest = FLAGS.map((f) => ({ name: f.name, distance: editDistance(name, f.name) })).sort((a, b) => a.distance - b.distance)[0]!;
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
