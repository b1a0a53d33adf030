// Talks to etcd: a consistent snapshot of the prefix, then a watch from the next revision, kept as a key → value mirror.
// It tracks the revision itself and, on any trouble (disconnect, compaction, auth), builds a new client and
// takes a fresh snapshot, since the etcd3 client's own resume can skip events. It knows nothing of the layout.

import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { noop } from 'cockatiel';
import { Etcd3, type IOptions, type IWatchResponse, type Watcher } from 'etcd3';
import type { Logger } from './log.ts';

export interface EtcdSettings {
  endpoints: readonly string[];
  prefix: string;
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
  user?: string | undefined;
  password?: string | undefined;
  passwordFile?: string | undefined;
}

export interface RegistryState {
  mirror: ReadonlyMap<string, string>;
  revision: bigint;
}

// How the watch is doing, for health and metrics.
export interface WatchStats {
  connected: boolean;
  // When the mirror stopped being known current (epoch ms); undefined while the watch is live.
  staleSince: number | undefined;
  lastEventAt: number | undefined;
  events: number;
  snapshots: number;
  // Watches lost after working (disconnect, compaction, auth...).
  watchesLost: number;
}

export interface PrefixWatch {
  // The newest state: a live view, to be read when notified, not kept.
  state(): RegistryState;
  stats(): WatchStats;
  // Drops the watch and takes a fresh snapshot, as after any trouble.
  resync(): void;
  stop(): Promise<void>;
}

const CALL_DEADLINE_MS = 5000;
const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 2000;
const OUTAGE_LOG_EVERY_MS = 30_000;

// The prefix as a directory, so /services/mysql never matches /services/mysql2.
function keyPrefix(prefix: string): string {
  return prefix + '/';
}

async function clientOptions(settings: EtcdSettings): Promise<IOptions> {
  const options: IOptions = {
    hosts: [...settings.endpoints],
    grpcOptions: {
      // Without keepalive a silent partition (no reset) is never noticed.
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      'grpc.max_receive_message_length': 64 << 20,
    },
    // Retries are ours: a fresh client and snapshot each time, so the library's own watch reconnect never runs,
    // and its default circuit breaker would refuse calls for seconds after etcd is back.
    faultHandling: { host: () => noop, global: noop },
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + CALL_DEADLINE_MS }),
  };
  if (settings.ca || settings.cert) {
    options.credentials = {
      rootCertificate: settings.ca ? await readFile(settings.ca) : (undefined as unknown as Buffer),
      ...(settings.cert && settings.key ? { certChain: await readFile(settings.cert), privateKey: await readFile(settings.key) } : {}),
    };
  }
  if (settings.user) {
    const password = settings.passwordFile ? (await readFile(settings.passwordFile, 'utf8')).replace(/\r?\n$/, '') : settings.password ?? '';
    options.auth = { username: settings.user, password };
  }
  return options;
}

// One consistent read of the prefix, for --dry-run: gives up after `timeoutMs`.
export async function readSnapshot(settings: EtcdSettings, timeoutMs: number): Promise<RegistryState> {
  const client = new Etcd3(await clientOptions(settings));
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      try {
        return await snapshot(client, settings.prefix);
      } catch (err) {
        if (Date.now() + RETRY_MAX_MS > deadline) throw err;
        await sleep(RETRY_MAX_MS / 4);
      }
    }
  } finally {
    client.close();
  }
}

async function snapshot(client: Etcd3, prefix: string): Promise<{ mirror: Map<string, string>; revision: bigint }> {
  const response = await client.getAll().prefix(keyPrefix(prefix)).exec();
  const mirror = new Map(response.kvs.map((kv) => [kv.key.toString(), kv.value.toString()]));
  return { mirror, revision: BigInt(response.header.revision) };
}

export function watchPrefix(settings: EtcdSettings, log: Logger, onChange: () => void): PrefixWatch {
  let mirror = new Map<string, string>();
  let revision = 0n;
  let stopped = false;
  const stats: WatchStats = { connected: false, staleSince: Date.now(), lastEventAt: undefined, events: 0, snapshots: 0, watchesLost: 0 };
  const setLive = (live: boolean) => {
    if (live) stats.staleSince = undefined;
    else stats.staleSince ??= Date.now();
    stats.connected = live;
  };
  let wakeUp: (reason: string) => void = () => {};

  // Applies one watch response; events at or below the revision held were in the snapshot already.
  const applyEvents = (response: IWatchResponse) => {
    let changed = false;
    for (const event of response.events) {
      const modRevision = BigInt(event.kv.mod_revision);
      if (modRevision <= revision) continue;
      const key = event.kv.key.toString();
      if (event.type === 'Put') mirror.set(key, event.kv.value.toString());
      else mirror.delete(key);
      revision = modRevision;
      changed = true;
      stats.events++;
    }
    if (changed) {
      stats.lastEventAt = Date.now();
      onChange();
    }
  };

  // Follows the watch until it breaks; resolves with the reason. The watcher is cancelled on the way out, since
  // the client's close() leaves watch streams open (the process would not exit), but never waited on for long.
  const follow = async (client: Etcd3): Promise<string> => {
    const watcher: Watcher = client.watch().prefix(keyPrefix(settings.prefix)).startRevision(String(revision + 1n)).watcher();
    try {
      return await new Promise<string>((resolve) => {
        wakeUp = resolve;
        watcher.on('connected', () => log.debug('etcd: watching', { prefix: settings.prefix, from_revision: revision + 1n }));
        watcher.on('data', applyEvents);
        watcher.on('disconnected', (err: Error) => resolve(`disconnected (${err.message})`));
        watcher.on('error', (err: Error) => resolve(`watch failed (${err.message || err.name})`));
        watcher.on('end', () => resolve('watch ended'));
      });
    } finally {
      wakeUp = () => {};
      watcher.off('data', applyEvents);
      await Promise.race([watcher.cancel().catch(() => {}), sleep(1000)]);
    }
  };

  const run = async () => {
    let failures = 0;
    let outageSince: number | undefined;
    let lastOutageLog = 0;
    while (!stopped) {
      const client = new Etcd3(await clientOptions(settings));
      try {
        const fresh = await snapshot(client, settings.prefix);
        if (stopped) break;
        mirror = fresh.mirror;
        revision = fresh.revision;
        stats.snapshots++;
        setLive(true);
        if (outageSince !== undefined) {
          log.info('etcd: reachable again, resynced', { after_s: ((Date.now() - outageSince) / 1000).toFixed(1), revision, keys: mirror.size });
        } else {
          log.info('etcd: snapshot taken', { endpoints: settings.endpoints.join(','), revision, keys: mirror.size });
        }
        outageSince = undefined;
        failures = 0;
        onChange();
        const reason = await follow(client);
        if (stopped) break;
        if (reason === 'resync requested') {
          log.info('etcd: resync requested', { revision });
          continue;
        }
        setLive(false);
        stats.watchesLost++;
        log.warn(`etcd: ${reason}; keeping the last state and resyncing`, { revision });
        outageSince = Date.now();
        lastOutageLog = Date.now();
      } catch (err) {
        setLive(false);
        if (stopped) break;
        failures++;
        const now = Date.now();
        if (outageSince === undefined) outageSince = now;
        if (failures === 1 || now - lastOutageLog >= OUTAGE_LOG_EVERY_MS) {
          const serving = revision > 0n ? `keeping the last state (revision ${revision})` : 'nothing is served until the first snapshot';
          log.warn(`etcd: unreachable (${describe(err)}); ${serving}; retrying`, {
            endpoints: settings.endpoints.join(','),
            attempts: failures,
            down_s: ((now - outageSince) / 1000).toFixed(1),
          });
          lastOutageLog = now;
        }
      } finally {
        client.close();
      }
      if (stopped) break;
      const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** Math.max(0, failures - 1));
      await Promise.race([sleep(delay * (0.8 + Math.random() * 0.4)), new Promise((resolve) => (wakeUp = resolve))]);
    }
  };

  const running = run();
  return {
    state: () => ({ mirror, revision }),
    stats: () => ({ ...stats }),
    resync: () => wakeUp('resync requested'),
    stop: async () => {
      stopped = true;
      wakeUp('stopping');
      await running;
    },
  };
}

function describe(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message.split('\n')[0]}`;
  return String(err);
}
