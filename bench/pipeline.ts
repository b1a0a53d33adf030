// The pure pipeline one etcd change goes through (select → problems → render → server table → plan →
// description), in process, from source: what one change costs with N instances registered, in the steady
// state (the first WARM_UP changes, while V8 compiles the code, are not counted). Run by bench.ts in a child
// node with the flags it needs; prints one JSON line.
//
// node --expose-gc bench/pipeline.ts <instances> <changes> bytes: heap bytes allocated per change, read as the
//   growth of the heap in use over one change, with a young generation big enough that no GC runs inside it.
// node bench/pipeline.ts <instances> <changes> time: CPU time per change (GC included) under the executable's
//   own heap flags.

import { planChange, serverTable, type ServerTable } from '../lib/render/plan.ts';
import { type Problem, type Selection } from '../lib/service/service.ts';
import { describeChange, problemChanges } from '../lib/service/problems.ts';
import { createServiceSelector } from '../lib/service/instances.ts';
import { createRenderer } from '../lib/render/render.ts';

const [instances, changes, what] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
const prefix = '/services/db';
const settings = { prefix, public: false, backendPort: 5432, masterOnly: true, replicas: false };
const render = createRenderer({ prefix, bind: '127.0.0.1', port: 5432, replicaPort: undefined, masterOnly: true, hardStopAfter: '1h', adminSocket: '/run/admin.sock', holdMs: 5000, holdScript: '/run/ambassador/hold.lua', replicaSessions: 'cut' });
const mirror = new Map<string, string>([[`${prefix}/master`, 'i0']]);
for (let i = 0; i < instances; i++) mirror.set(`${prefix}/instances/i${i}/private_ip`, `10.1.${i >> 8}.${i & 255}`);

const selector = createServiceSelector(settings);
let applied: Selection = selector.select(mirror, undefined);
let live: ServerTable = serverTable(applied);
let liveConfig = render(applied);
let known = new Map<string, Problem>();

// One change as ambassador makes it: every even one a failover (two servers change), every odd one an
// instance moved to a new address.
function change(n: number): void {
  const key = n % 2 === 0 ? `${prefix}/master` : `${prefix}/instances/i${(n * 7919) % instances}/private_ip`;
  mirror.set(key, n % 2 === 0 ? `i${(n / 2) % 2 === 0 ? 1 : 0}` : `10.2.${n & 255}.${(n >> 8) & 255}`);
  const selection = selector.select(mirror, new Set([key]));
  known = problemChanges(known, selection.problems).current;
  const config = render(selection);
  const plan = planChange(live, serverTable(selection), { fence: true });
  if (plan.kind !== 'runtime' || config === liveConfig) throw new Error(`change ${n} was not a runtime change: ${JSON.stringify(plan).slice(0, 200)}`);
  if (describeChange(applied, selection, true) === '') throw new Error('no description');
  live = plan.next;
  liveConfig = config;
  applied = selection;
}

const WARM_UP = 100;
for (let n = 0; n < WARM_UP; n++) change(n);

const samples: number[] = [];
const used = () => process.memoryUsage().heapUsed;
for (let n = WARM_UP; n < WARM_UP + changes; n++) {
  if (what === 'bytes') {
    (globalThis as { gc?: () => void }).gc!();
    const before = used();
    change(n);
    samples.push(used() - before);
  } else {
    const began = process.cpuUsage();
    change(n);
    const spent = process.cpuUsage(began);
    samples.push((spent.user + spent.system) / 1000);
  }
}
samples.sort((a, b) => a - b);
const at = (p: number) => samples[Math.min(samples.length - 1, Math.ceil((p / 100) * samples.length) - 1)]!;
console.log(JSON.stringify({ instances, changes, what, median: at(50), p99: at(99), max: samples.at(-1), configBytes: Buffer.byteLength(liveConfig) }));
