// The world an integration suite runs in: one real etcd, three named backends on 127.0.0.11-13,
// a fresh key prefix per test, and every ambassador a test starts stopped after it.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAmbassador, type RunningAmbassador, type StartOptions } from './ambassador.ts';
import { startEtcd, type TestEtcd } from './etcd.ts';
import { answeredBy, freePort, startBackend, whoAnswers, eventually, type Backend } from './net.ts';
import { limitedSuite, TIME_SCALE } from './limits.ts';
import { stopAll } from './processes.ts';

export interface World {
  etcd: TestEtcd;
  // A temp dir for the suite's files, removed at close.
  tempDir: string;
  backends: Backend[];
  backendPort: number;
  // A prefix no other test has used, e.g. /t7/services/mysql.
  prefix(): string;
  // Writes the seed layout (instances 1..3 on the backends, master 2) under the prefix.
  writeSeed(prefix: string, master?: string): Promise<void>;
  // Starts ambassador on a free port against this etcd (or, with replaceEtcd, the --etcd among `flags`).
  start(flags: string[], options?: StartOptions & { port?: number; replaceEtcd?: boolean }): Promise<RunningAmbassador & { port: number }>;
  // Waits until a new connection through `port` is answered by `name` ('' for refused).
  routesTo(port: number, name: string, timeoutMs?: number): Promise<void>;
  // Waits until new connections through `port` are answered by exactly `names`, between them.
  servedBy(port: number, names: string[]): Promise<void>;
  afterEach(): Promise<void>;
  // Stops everything; fails if any process a test started is left running. Safe to call twice.
  close(): Promise<void>;
}

export async function createWorld(): Promise<World> {
  const etcd = await startEtcd();
  const backendPort = await freePort('127.0.0.11');
  const backends = await Promise.all([1, 2, 3].map((i) => startBackend(`node-${i}`, `127.0.0.1${i}`, backendPort)));
  const running: RunningAmbassador[] = [];
  const tempDir = mkdtempSync(join(tmpdir(), 'ambassador-world-'));
  let prefixes = 0;
  let closing: Promise<void> | undefined;

  return {
    etcd,
    tempDir,
    backends,
    backendPort,
    prefix: () => `/t${++prefixes}/services/mysql`,
    writeSeed: async (prefix, master = '2') => {
      for (const i of [1, 2, 3]) await etcd.put(`${prefix}/instances/${i}/private_ip`, `127.0.0.1${i}`);
      await etcd.put(`${prefix}/master`, master);
    },
    start: async (flags, options = {}) => {
      const port = options.port ?? (await freePort());
      const etcdFlag = options.replaceEtcd ? [] : [`--etcd=${etcd.endpoint}`];
      const bindFlag = flags.some((flag) => flag.startsWith('--bind=')) ? [] : ['--bind=127.0.0.1'];
      // Patroni's members say their own ports.
      const backendFlag = flags.includes('--layout=patroni') ? [] : [`--backend-port=${backendPort}`];
      const ambassador = await startAmbassador([...etcdFlag, `--port=${port}`, ...bindFlag, ...backendFlag, ...flags], options);
      running.push(ambassador);
      return Object.assign(ambassador, { port });
    },
    routesTo: async (port, name, timeoutMs = 10_000 * TIME_SCALE) => {
      await eventually(() => whoAnswers(port), (answer) => answer === name, timeoutMs, `port ${port} to be answered by ${JSON.stringify(name)}`);
    },
    servedBy: async (port, names) => {
      const expected = [...names].sort().join();
      await eventually(() => answeredBy(port, 12), (seen) => seen.join() === expected, 10_000 * TIME_SCALE, `port ${port} to be answered by ${expected} alone`);
    },
    afterEach: async () => {
      await Promise.all(running.splice(0).map((ambassador) => ambassador.cleanup()));
    },
    close: () =>
      (closing ??= (async () => {
        await Promise.all(running.splice(0).map((ambassador) => ambassador.cleanup()));
        await Promise.all(backends.map((backend) => backend.close()));
        await etcd.stop();
        rmSync(tempDir, { recursive: true, force: true });
        await stopAll();
      })()),
  };
}

// An integration suite: its world made before the first test and closed after the last, the ambassadors a
// test started stopped after it, every test bounded in time, and a last test that fails if any process it
// started is still running.
// `prepare` adds to the context before the world is made; `finish` undoes it before the last check, and
// after a failed prepare too.
export function worldSuite<Extra extends object = object>(name: string, prepare?: (context: Extra) => void | Promise<void>, finish?: (context: Partial<Extra>) => Promise<void>) {
  const test = limitedSuite<{ world: World } & Extra>(name);
  test.before(async (context) => {
    try {
      await prepare?.(context);
      context.world = await createWorld();
    } catch (err) {
      // uvu counts the suite's tests as failed but prints nothing of a hook's error.
      process.stderr.write(`\n  ${name}: setting up failed: ${(err as Error).stack ?? String(err)}\n`);
      throw err;
    }
  });
  test.after.each(async ({ world }) => world.afterEach());
  test.after(async (context) => {
    await finish?.(context).catch(() => {});
    await context.world?.close().catch(() => {});
  });
  // `closeLimitMs`: how long `finish` and the world's close may take together.
  const run = (closeLimitMs?: number) => {
    test('leaves no process it started running', async (context) => {
      await finish?.(context);
      await context.world.close();
    }, closeLimitMs);
    test.run();
  };
  return { test, run };
}
