// The fuzzer's rounds, drawn from a seed: hostile registries and write bursts, each ending with a write of the
// master, and what every write should leave routed. Pure: the same seed gives the same rounds.
// What a state should route is read from a model of the registry kept here, by rules of its own over values
// drawn from tables that say what each one is (docs/operating.md, "Key layout" and "Bounds"), never by lib/.

import { random } from '../soak/schedule.ts';

export const PREFIX = '/fuzz/services/db';
// The instances that answer, by the name they greet with, and where they listen (the port is the world's).
// `localhost` is a DNS name: it answers on 127.0.0.1 and ::1, whichever haproxy resolves it to.
export const BACKENDS = { a: '127.0.0.41', b: '127.0.0.42', c: '127.0.0.43' } as const;
type Backend = keyof typeof BACKENDS | 'localhost';

// What a value is, as the tables below say: routes to a backend, routes to nothing that answers (an address
// nothing listens on, a name that does not resolve), or is refused.
type Meaning = { valid: true; answers: Backend | '' } | { valid: false };

// One key's write: its bytes, and what the model makes of it.
export type Op = { kind: 'put'; key: Buffer; value: Buffer } | { kind: 'delete'; key: Buffer } | { kind: 'delete-prefix' };

export type RoundKind = 'sizes' | 'encoding' | 'count' | 'master' | 'addresses' | 'burst' | 'wipe';
export const ROUND_KINDS: readonly RoundKind[] = ['sizes', 'encoding', 'count', 'master', 'addresses', 'burst', 'wipe'];

export interface Round {
  n: number;
  kind: RoundKind;
  // Written in order; `together` runs are written at once (distinct keys, whose order does not matter).
  steps: { ops: Op[]; together: boolean }[];
}

const MB = 1 << 20;
const utf8 = (text: string) => Buffer.from(text);
const key = (...parts: (string | Buffer)[]) => Buffer.concat([utf8(`${PREFIX}/`), ...parts.map((part) => (typeof part === 'string' ? utf8(part) : part))]);
const instanceKey = (name: Buffer, field: 'private_ip' | 'port') => key('instances/', name, `/${field}`);
const NOT_UTF8 = [Buffer.from([0xff]), Buffer.from([0xc0, 0x2e]), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0x80])];

// Addresses of a backend, in every form the layout takes for it, and forms it refuses.
function addressForms(backend: keyof typeof BACKENDS): [string | Buffer, Meaning][] {
  const ip = BACKENDS[backend];
  const last = Number(ip.split('.')[3]);
  const routes: Meaning = { valid: true, answers: backend };
  const refused: Meaning = { valid: false };
  return [
    [ip, routes],
    [` ${ip}\n`, routes],
    [`::ffff:${ip}`, routes],
    [`[::ffff:${ip}]`, routes],
    [`::FFFF:7f00:${last.toString(16)}`, routes],
    [`127.0.0.0${last}`, refused],
    [`${ip} x`, refused],
    [`${ip}\n    server evil 127.0.0.43:5432\n#`, refused],
    [`::ffff:${ip}%lo`, refused],
    ['fe80::1%lo', refused],
    [`${ip}:5432`, refused],
    [`\uff11\uff12\uff17.0.0.${last}`, refused],
    ['-bad-.example', refused],
    ['a..b', refused],
    ['x_y.example', refused],
    [`${'h'.repeat(64)}.example`, refused],
    ['', refused],
    [Buffer.concat([utf8(ip), NOT_UTF8[0]!]), refused],
    [Buffer.alloc(MB, 0x31), refused],
    [Buffer.alloc(513, 0x61), refused],
    [`127.0.0.${last}${' '.repeat(490)}`, routes],
  ];
}

const HOSTNAMES: [string, Meaning][] = [
  ['localhost', { valid: true, answers: 'localhost' }],
  ['nohost.invalid', { valid: true, answers: '' }],
];

// Ports: none written (the backend port), the backend port in forms the layout takes, and refused ones.
function portForms(port: number): [string | Buffer | undefined, boolean][] {
  return [[undefined, true], [String(port), true], [` ${port} `, true], ['0', false], ['65536', false], [`${port} x`, false], ['-1', false], ['', false], [Buffer.from([0x35, 0xff]), false], [Buffer.alloc(600, 0x35), false]];
}

// Instance names: plain, odd and hostile. A name is refused past 255 bytes or when not UTF-8; a key past 512
// bytes below the prefix is refused whatever it holds.
function nameForms(next: () => number): [Buffer, boolean][] {
  const tag = Math.floor(next() * 1e6).toString(36);
  return [
    [utf8(`i${tag}`), true],
    [utf8(`i ${tag}\n`), true],
    [utf8(`名前${tag}`), true],
    [utf8(`${tag}${'n'.repeat(255 - tag.length)}`), true],
    [utf8(`${tag}${'n'.repeat(256 - tag.length)}`), false],
    [Buffer.concat([utf8(tag), NOT_UTF8[Math.floor(next() * NOT_UTF8.length)]!]), false],
    [utf8(`${tag}${'k'.repeat(600)}`), false],
  ];
}

// The registry as written: each instance's address and port (with what each means), the master value.
interface Instance {
  address?: Meaning & { bytes: Buffer };
  port?: { bytes: Buffer; valid: boolean };
}

export interface Model {
  instances: Map<string, Instance>;
  master: Buffer | undefined;
}

export const emptyModel = (): Model => ({ instances: new Map(), master: undefined });

// What new connections to the master port should be answered by in this state: a backend's name, or '' for
// refused (or answered by nothing). The master value is trimmed of ASCII whitespace, must be UTF-8 and at most
// 512 bytes, and must name an instance whose name, key, address and port are all taken.
export function expectedAnswer(model: Model): string {
  const instance = masterInstance(model);
  if (instance === undefined) return '';
  const { address } = instance;
  return address?.valid ? address.answers : '';
}

function masterInstance(model: Model): Instance | undefined {
  const master = model.master;
  if (master === undefined || master.length > 512 || !isUtf8(master)) return undefined;
  const name = master.toString().replace(/^[ \t\n\r\v\f]+|[ \t\n\r\v\f]+$/g, '');
  const instance = model.instances.get(Buffer.from(name).toString('hex'));
  return instance !== undefined && routable(Buffer.from(name), instance) ? instance : undefined;
}

function isUtf8(bytes: Buffer): boolean {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    return true;
  } catch {
    return false;
  }
}

function routable(name: Buffer, instance: Instance): boolean {
  const keyBytes = instanceKey(name, 'private_ip').length - Buffer.byteLength(`${PREFIX}/`);
  const nameOk = name.length > 0 && name.length <= 255 && isUtf8(name) && !name.includes(0x2f) && keyBytes <= 512;
  return nameOk && instance.address?.valid === true && (instance.port === undefined || instance.port.valid);
}

// Instances the layout routes (each a server, on the one port): what the file-limit bound counts.
export function routableCount(model: Model): number {
  let count = 0;
  for (const [hex, instance] of model.instances) if (routable(Buffer.from(hex, 'hex'), instance)) count++;
  return count;
}

// Applies one write to the model.
export function applyOp(model: Model, op: Op, meanings: Map<string, Meaning>, ports: Map<string, boolean>): void {
  if (op.kind === 'delete-prefix') {
    model.instances.clear();
    model.master = undefined;
    return;
  }
  const relative = op.key.subarray(Buffer.byteLength(`${PREFIX}/`));
  if (relative.equals(utf8('master'))) {
    model.master = op.kind === 'put' ? op.value : undefined;
    return;
  }
  const text = relative.toString('latin1');
  const match = /^instances\/([^/]+)\/(private_ip|port)$/s.exec(text);
  if (!match) return;
  const hex = Buffer.from(match[1]!, 'latin1').toString('hex');
  const instance = model.instances.get(hex) ?? {};
  if (match[2] === 'private_ip') {
    if (op.kind === 'put') instance.address = { bytes: op.value, ...(meanings.get(op.value.toString('hex')) ?? { valid: false }) };
    else delete instance.address;
  } else if (op.kind === 'put') {
    instance.port = { bytes: op.value, valid: ports.get(op.value.toString('hex')) ?? false };
  } else {
    delete instance.port;
  }
  if (instance.address === undefined && instance.port === undefined) model.instances.delete(hex);
  else model.instances.set(hex, instance);
}

// A fuzz run's rounds and the tables that give each written value its meaning.
export interface Plan {
  seed: number;
  rounds: Round[];
  meanings: Map<string, Meaning>;
  ports: Map<string, boolean>;
}

// What a plan's writes are drawn with: the seeded random source, the tables it fills with what each written
// value means, and what the rounds so far have left in the registry.
class Draw {
  readonly meanings = new Map<string, Meaning>();
  readonly ports = new Map<string, boolean>();
  // While a `count` round has put the registry past the server bound, haproxy keeps its last good config and
  // only the master moves, at run time: a master by DNS name (which needs a reload) is not drawn then.
  pastBound = false;
  // The `count` instances the registry holds: each such round writes the same names from n0 on.
  counted = 0;
  // The instances (by name, hex) whose address is a DNS name now. A server moved to or from a DNS name needs a
  // reload too, so none is moved off one while past the bound.
  readonly hostnamed = new Set<string>();

  readonly next: () => number;
  readonly backendPort: number;
  readonly serverBound: number;

  constructor(next: () => number, backendPort: number, serverBound: number) {
    [this.next, this.backendPort, this.serverBound] = [next, backendPort, serverBound];
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }

  address(form: [string | Buffer, Meaning]): Buffer {
    const value = bytesOf(form[0]);
    this.meanings.set(value.toString('hex'), form[1]);
    return value;
  }

  anyAddress(): Buffer {
    return this.address(!this.pastBound && this.next() < 0.2 ? this.pick(HOSTNAMES) : this.pick(addressForms(this.pick(['a', 'b', 'c'] as const))));
  }

  ipAddress(backend: keyof typeof BACKENDS): Buffer {
    return this.address(this.pick(addressForms(backend).filter(([, meaning]) => meaning.valid)));
  }

  instance(name: Buffer, value: Buffer, port?: [string | Buffer | undefined, boolean]): Op[] {
    const ops: Op[] = [{ kind: 'put', key: instanceKey(name, 'private_ip'), value }];
    if (HOSTNAMES.some(([hostname]) => value.equals(utf8(hostname)))) this.hostnamed.add(name.toString('hex'));
    else this.hostnamed.delete(name.toString('hex'));
    if (port?.[0] !== undefined) {
      const portBytes = bytesOf(port[0]);
      this.ports.set(portBytes.toString('hex'), port[1]);
      ops.push({ kind: 'put', key: instanceKey(name, 'port'), value: portBytes });
    }
    return ops;
  }

  // The master named, sometimes with the whitespace the layout trims.
  masterOf(name: Buffer): Op {
    return masterWrite(this.next() < 0.2 ? Buffer.concat([utf8(' '), name, utf8('\n')]) : name);
  }

  // The steady instances a, b, c at their plain addresses.
  base(): Op[] {
    return (['a', 'b', 'c'] as const).flatMap((name) => this.instance(utf8(name), this.address([BACKENDS[name], { valid: true, answers: name }])));
  }
}

const bytesOf = (value: string | Buffer) => (typeof value === 'string' ? utf8(value) : value);
const masterWrite = (value: string | Buffer): Op => ({ kind: 'put', key: key('master'), value: bytesOf(value) });

type Add = (ops: Op[], together?: boolean) => void;

// Each round kind's writes, the last of them the master's.
const ROUNDS: Record<RoundKind, (draw: Draw, n: number, add: Add) => void> = {
  // Values, names and keys at their bounds and past them; the master among them or not.
  sizes: (draw, _n, add) => {
    const names = nameForms(draw.next);
    for (const [name] of names) add(draw.instance(name, draw.next() < 0.5 ? draw.ipAddress(draw.pick(['a', 'b', 'c'] as const)) : draw.anyAddress(), draw.pick(portForms(draw.backendPort))));
    add([{ kind: 'put', key: key('instances/huge/private_ip'), value: Buffer.alloc(MB, 0x78) }, { kind: 'put', key: key('z'.repeat(MB)), value: utf8('x') }]);
    add([draw.masterOf(draw.pick(names)[0])]);
  },
  encoding: (draw, n, add) => {
    const name = Buffer.concat([utf8('e'), draw.pick(NOT_UTF8), utf8(String(n))]);
    add(draw.instance(name, draw.ipAddress('b')));
    add(draw.instance(utf8(`ctl${n}`), draw.address([`127.0.0.42\u0000`, { valid: false }])));
    add(draw.instance(utf8(`tab\t${n}`), draw.ipAddress('c')));
    add([draw.masterOf(draw.pick([name, utf8(`ctl${n}`), utf8(`tab\t${n}`), Buffer.concat([utf8('a'), draw.pick(NOT_UTF8)])]))]);
  },
  // Many instances at once, below the server bound or past it; the master an address haproxy can open at run
  // time either way (not a DNS name). The same names each time: the registry never holds more than one such
  // round's (the bench bounds memory at 10,000 instances).
  count: (draw, _n, add) => {
    const count = draw.next() < 0.5 ? draw.serverBound + 200 + Math.floor(draw.next() * 500) : 200 + Math.floor(draw.next() * 800);
    draw.counted = Math.max(draw.counted, count);
    draw.pastBound = draw.counted > draw.serverBound;
    const ops: Op[] = [];
    for (let i = 0; i < count; i++) ops.push(...draw.instance(utf8(`n${i}`), draw.address([`127.1.${(i >> 8) & 255}.${i & 255}`, { valid: true, answers: '' }])));
    add(ops, true);
    add([masterWrite(draw.pick(['a', 'b', 'c']))]);
  },
  // Masters that name a missing instance, a refused one, a path, or a good one.
  master: (draw, n, add) => {
    add(draw.instance(utf8(`m${n}`), draw.anyAddress(), draw.pick(portForms(draw.backendPort))));
    add([masterWrite(draw.pick([`m${n}`, `missing${n}`, 'instances/a', '', 'a/b', Buffer.alloc(1_400_000, 0x6d), 'x'.repeat(300), `m${n}`]))]);
  },
  addresses: (draw, _n, add) => {
    for (const name of ['a', 'b', 'c'] as const) {
      if (draw.next() >= 0.7 || (draw.pastBound && draw.hostnamed.has(utf8(name).toString('hex')))) continue;
      add(draw.instance(utf8(name), draw.next() < 0.3 ? draw.anyAddress() : draw.address(draw.pick(addressForms(name)))));
    }
    add([masterWrite(draw.pick(['a', 'b', 'c']))]);
  },
  // Master changes back to back, among good instances and bad values.
  burst: (draw, _n, add) => {
    const ops: Op[] = [];
    for (let i = 0, writes = 20 + Math.floor(draw.next() * 60); i < writes; i++) {
      ops.push(masterWrite(draw.next() < 0.8 ? draw.pick(['a', 'b', 'c']) : draw.pick([`missing${i}`, Buffer.alloc(2000, 0x6d), Buffer.concat([utf8('b'), draw.pick(NOT_UTF8)])])));
    }
    add(ops);
  },
  wipe: (draw, _n, add) => {
    [draw.pastBound, draw.counted] = [false, 0];
    draw.hostnamed.clear();
    add([{ kind: 'delete-prefix' }]);
    if (draw.next() < 0.7) add([...draw.base(), masterWrite(draw.pick(['a', 'b', 'c']))]);
  },
};

// `count` rounds write either well below `serverBound` instances or well above it, never near it.
export function makePlan(seed: number, roundCount: number, backendPort: number, serverBound: number): Plan {
  const draw = new Draw(random(seed), backendPort, serverBound);
  const rounds: Round[] = [{ n: 0, kind: 'wipe', steps: [{ ops: [...draw.base(), masterWrite('a')], together: false }] }];
  // Every kind once, in a shuffled order, then drawn.
  const deck = [...ROUND_KINDS].sort(() => draw.next() - 0.5);
  for (let n = 1; n < roundCount; n++) {
    const kind = deck.shift() ?? draw.pick(ROUND_KINDS);
    const steps: Round['steps'] = [];
    ROUNDS[kind](draw, n, (ops, together = false) => steps.push({ ops, together }));
    rounds.push({ n, kind, steps });
  }
  return { seed, rounds, meanings: draw.meanings, ports: draw.ports };
}
