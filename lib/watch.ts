// Talks to etcd: a consistent snapshot of the prefix, then a watch from the next revision, kept as a key → value mirror.
// It tracks the revision itself and, on any trouble (disconnect, compaction, auth, a credential file gone bad),
// builds a new client and takes a fresh snapshot, since the etcd3 client's own resume can skip events.
// It knows nothing of the layout.

import { setTimeout as sleep } from 'node:timers/promises';
import { noop } from 'cockatiel';
import { Etcd3, type IOptions, type IWatchResponse, type Watcher } from 'etcd3';
import { CredentialError, readCredentials, type CredentialFiles, type Credentials } from './credentials.ts';
import type { Logger } from './log.ts';
import { Backoff, FailureStreak } from './retry.ts';

export interface EtcdSettings extends CredentialFiles {
  endpoints: readonly string[];
  prefix: string;
  user?: string | undefined;
  password?: string | undefined;
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

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  value: string;
  modRevision: bigint;
}

// One client's life: a snapshot, then a watch until it breaks. A fresh one is made after any trouble.
export interface EtcdConnection {
  snapshot(): Promise<{ mirror: Map<string, string>; revision: bigint }>;
  // Hands each batch of events on; resolves with why the watch ended, or with `interrupted`'s reason.
  follow(fromRevision: bigint, onEvents: (events: WatchEvent[]) => void, interrupted: Promise<string>): Promise<string>;
  close(): void;
}

export type Connect = (settings: EtcdSettings) => Promise<EtcdConnection>;

const CALL_DEADLINE_MS = 5000;
const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 2000;
// A watch that worked this long was a success: the backoff and the failure streak start over.
const HEALTHY_AFTER_MS = 10_000;
const RESYNC = 'resync requested';
const STOPPING = 'stopping';

// Applies a batch of watch events to the mirror: only those newer than the revision held (older ones were in
// the snapshot already). Returns the new revision and the keys of the events applied.
export function applyWatchEvents(mirror: Map<string, string>, revision: bigint, events: readonly WatchEvent[]): { revision: bigint; keys: string[] } {
  const keys: string[] = [];
  for (const event of events) {
    if (event.modRevision <= revision) continue;
    if (event.type === 'put') mirror.set(event.key, event.value);
    else mirror.delete(event.key);
    revision = event.modRevision;
    keys.push(event.key);
  }
  return { revision, keys };
}

// One consistent read of the prefix, for --dry-run and --once: gives up after `timeoutMs`.
export async function readSnapshot(settings: EtcdSettings, timeoutMs: number, connect: Connect = connectEtcd3): Promise<RegistryState> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let connection: EtcdConnection | undefined;
    try {
      connection = await connect(settings);
      return await connection.snapshot();
    } catch (err) {
      if (Date.now() + RETRY_MAX_MS > deadline) throw err;
      await sleep(RETRY_MAX_MS / 4);
    } finally {
      connection?.close();
    }
  }
}

// Calls onChange with the keys an event changed, or with none after a fresh snapshot (anything may have changed).
export function watchPrefix(settings: EtcdSettings, log: Logger, onChange: (keys?: readonly string[]) => void, connect: Connect = connectEtcd3): PrefixWatch {
  let mirror = new Map<string, string>();
  let revision = 0n;
  let stopped = false;
  const stats: WatchStats = { connected: false, staleSince: Date.now(), lastEventAt: undefined, events: 0, snapshots: 0, watchesLost: 0 };
  const setLive = (live: boolean) => {
    if (live) stats.staleSince = undefined;
    else stats.staleSince ??= Date.now();
    stats.connected = live;
  };
  let interrupt: (reason: string) => void = () => {};
  const backoff = new Backoff(RETRY_FIRST_MS, RETRY_MAX_MS);
  const streak = new FailureStreak();
  let outageSince: number | undefined;
  // A failure was logged and its end not yet.
  let saidDown = false;
  // The next snapshot is worth a line of its own: the first, and one a resync asked for.
  let announce = true;

  const onEvents = (events: WatchEvent[]) => {
    const result = applyWatchEvents(mirror, revision, events);
    revision = result.revision;
    if (result.keys.length === 0) return;
    stats.events += result.keys.length;
    stats.lastEventAt = Date.now();
    onChange(result.keys);
  };

  const failed = (what: string, facts: Record<string, string | number | bigint>) => {
    setLive(false);
    outageSince ??= Date.now();
    const { log: say, count } = streak.failed(what);
    if (!say) return;
    saidDown = true;
    log.warn(`etcd: ${what}`, { ...facts, attempts: count, down_s: ((Date.now() - outageSince) / 1000).toFixed(1) });
  };

  const run = async () => {
    while (!stopped) {
      const interrupted = new Promise<string>((resolve) => (interrupt = resolve));
      let connection: EtcdConnection | undefined;
      try {
        connection = await connect(settings);
        const fresh = await connection.snapshot();
        if (stopped) break;
        mirror = fresh.mirror;
        revision = fresh.revision;
        stats.snapshots++;
        setLive(true);
        if (saidDown) {
          log.info('etcd: reachable again, resynced', { after_s: ((Date.now() - (outageSince ?? Date.now())) / 1000).toFixed(1), revision, keys: mirror.size });
        } else if (announce) {
          log.info('etcd: snapshot taken', { endpoints: settings.endpoints.join(','), revision, keys: mirror.size });
        }
        saidDown = false;
        announce = false;
        outageSince = undefined;
        onChange();
        const watchedAt = Date.now();
        const reason = await connection.follow(revision + 1n, onEvents, interrupted);
        if (stopped) break;
        if (Date.now() - watchedAt >= HEALTHY_AFTER_MS || reason === RESYNC) {
          backoff.reset();
          streak.ended();
        }
        if (reason === RESYNC) {
          log.info('etcd: resync requested', { revision });
          announce = true;
          continue;
        }
        stats.watchesLost++;
        failed(`${reason}; keeping the last state and resyncing`, { revision });
      } catch (err) {
        if (stopped) break;
        const serving = revision > 0n ? `keeping the last state (revision ${revision})` : 'nothing is served until the first snapshot';
        failed(`unreachable (${describe(err)}); ${serving}; retrying`, { endpoints: settings.endpoints.join(',') });
      } finally {
        connection?.close();
      }
      if (stopped) break;
      const reason = await Promise.race([sleep(backoff.next()).then(() => ''), interrupted]);
      if (reason === RESYNC) {
        backoff.reset();
        announce = true;
      }
    }
  };

  const running = run();
  return {
    state: () => ({ mirror, revision }),
    stats: () => ({ ...stats }),
    resync: () => interrupt(RESYNC),
    stop: async () => {
      stopped = true;
      interrupt(STOPPING);
      await running;
    },
  };
}

// ---- the etcd3 client ----

async function connectEtcd3(settings: EtcdSettings): Promise<EtcdConnection> {
  const client = new Etcd3(clientOptions(settings, await readCredentials(settings)));
  const prefix = keyPrefix(settings.prefix);
  return {
    snapshot: async () => {
      const response = await client.getAll().prefix(prefix).exec();
      const mirror = new Map(response.kvs.map((kv) => [kv.key.toString(), kv.value.toString()]));
      return { mirror, revision: BigInt(response.header.revision) };
    },
    follow: (fromRevision, onEvents, interrupted) => follow(client, prefix, fromRevision, onEvents, interrupted),
    close: () => client.close(),
  };
}

// The prefix as a directory, so /services/mysql never matches /services/mysql2.
function keyPrefix(prefix: string): string {
  return prefix + '/';
}

function clientOptions(settings: EtcdSettings, credentials: Credentials): IOptions {
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
  if (credentials.ca || credentials.cert) {
    options.credentials = {
      rootCertificate: credentials.ca ?? (undefined as unknown as Buffer),
      ...(credentials.cert && credentials.key ? { certChain: credentials.cert, privateKey: credentials.key } : {}),
    };
  }
  if (settings.user) options.auth = { username: settings.user, password: credentials.password ?? settings.password ?? '' };
  return options;
}

// Follows the watch until it breaks. The watcher is cancelled on the way out, since the client's close() leaves
// watch streams open (the process would not exit), but never waited on for long.
async function follow(client: Etcd3, prefix: string, fromRevision: bigint, onEvents: (events: WatchEvent[]) => void, interrupted: Promise<string>): Promise<string> {
  const watcher: Watcher = client.watch().prefix(prefix).startRevision(String(fromRevision)).watcher();
  const onData = (response: IWatchResponse) =>
    onEvents(
      response.events.map((event) => ({
        type: event.type === 'Put' ? 'put' : 'delete',
        key: event.kv.key.toString(),
        value: event.kv.value.toString(),
        modRevision: BigInt(event.kv.mod_revision),
      })),
    );
  try {
    return await Promise.race([
      interrupted,
      new Promise<string>((resolve) => {
        watcher.on('data', onData);
        watcher.on('disconnected', (err: Error) => resolve(`disconnected (${err.message})`));
        watcher.on('error', (err: Error) => resolve(`watch failed (${err.message || err.name})`));
        watcher.on('end', () => resolve('watch ended'));
      }),
    ]);
  } finally {
    watcher.off('data', onData);
    await Promise.race([watcher.cancel().catch(() => {}), sleep(1000)]);
  }
}

function describe(err: unknown): string {
  if (err instanceof CredentialError) return err.message;
  if (err instanceof Error) return `${err.name}: ${err.message.split('\n')[0]}`;
  return String(err);
}
