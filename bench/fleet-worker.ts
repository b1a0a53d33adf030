// One process of simulated ambassadors for the fleet bench (bench/fleet.ts): each is the project's own watch
// (lib/etcd/watch.ts, with its checks and listings) on a client connection of its own, with the routing keys of
// --master-only, and no haproxy. Driven over IPC by bench/fleet.ts:
//   {start: {count, endpoints, prefix, checkMs, spreadMs}}  start `count` of them within spreadMs → {started}
//   {seen: master}     for each, when (CLOCK_MONOTONIC, ns) it first held that master → {seen: (string|null)[]}
//   {current: rev}     how many are connected, confirmed and hold revision ≥ rev → {current: n, members: {url: n}}
//   {stop: true}       stop them all → {stopped}

import { createLogger } from '../lib/common/log.ts';
import { MAX_KEY_BYTES } from '../lib/service/service.ts';
import { MAX_VALUE_BYTES, routingKeys } from '../lib/service/instances.ts';
import { watchPrefix, type PrefixWatch } from '../lib/etcd/watch.ts';

interface Start {
  count: number;
  endpoints: string[];
  prefix: string;
  checkMs: number;
  spreadMs: number;
}

type Command = { start: Start } | { seen: string } | { current: string } | { stop: true };

const watches: PrefixWatch[] = [];
// Per simulated ambassador: master value → when it first held it.
const seen: Map<string, bigint>[] = [];
const log = createLogger({ format: 'text', level: 'error', write: () => {} });
const send = (message: unknown) => process.send!(message, undefined, {}, () => {});

process.on('message', async (command: Command) => {
  if ('start' in command) {
    const { count, endpoints, prefix, checkMs, spreadMs } = command.start;
    const settings = { endpoints, prefix, maxKeyBytes: MAX_KEY_BYTES, maxValueBytes: MAX_VALUE_BYTES, checkEveryMs: checkMs, routingKeys: (mirror: ReadonlyMap<string, string>) => routingKeys(mirror, { prefix, public: false, masterOnly: true }) };
    for (let i = 0; i < count; i++) {
      const own = new Map<string, bigint>();
      seen.push(own);
      const watch: PrefixWatch = watchPrefix(settings, log, (state) => {
        const master = state.mirror.get(`${prefix}/master`);
        if (master !== undefined && !own.has(master)) own.set(master, process.hrtime.bigint());
      });
      watches.push(watch);
      await new Promise((resolve) => setTimeout(resolve, spreadMs / count));
    }
    send({ started: count });
  } else if ('seen' in command) {
    send({ seen: seen.map((own) => own.get(command.seen)?.toString() ?? null) });
  } else if ('current' in command) {
    const revision = BigInt(command.current);
    const members: Record<string, number> = {};
    let current = 0;
    for (const watch of watches) {
      const stats = watch.stats();
      if (stats.member !== undefined) members[stats.member] = (members[stats.member] ?? 0) + 1;
      if (stats.connected && stats.staleSince === undefined && watch.state().revision >= revision) current++;
    }
    send({ current, members });
  } else if ('stop' in command) {
    await Promise.all(watches.map((watch) => watch.stop()));
    send({ stopped: true });
    process.exit(0);
  }
});
