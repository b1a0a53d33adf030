// The etcd3 client, one member at a time: the members the --etcd endpoints name (a DNS name may name several),
// and a connection to one of them that reads the prefix, watches it, checks it against the cluster, and says
// why the member cannot serve. lib/watch.ts decides what to do with that; nothing here retries.

import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { InterceptingCall, type Interceptor } from '@grpc/grpc-js';
import { noop } from 'cockatiel';
import { Etcd3, type IOptions, type IWatchResponse, type Watcher } from 'etcd3';
import { readCredentials, type CredentialFiles, type Credentials } from './credentials.ts';

export interface EtcdSettings extends CredentialFiles {
  endpoints: readonly string[];
  prefix: string;
  user?: string | undefined;
  password?: string | undefined;
}

// One member: the URL ambassador talks to, and the name its TLS certificate is checked against.
export interface Member {
  url: string;
  serverName: string;
}

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  value: string;
  modRevision: bigint;
}

// A linearizable look at the prefix: the cluster's revision then, how many keys the prefix holds, and whether
// any was written after the revision asked about (newer: 0 or 1).
export interface PrefixCheck {
  revision: bigint;
  keys: number;
  newer: number;
}

// One client's life, on one member: a snapshot, then a watch until it breaks. A fresh one after any trouble.
export interface EtcdConnection {
  member: string;
  snapshot(): Promise<{ mirror: Map<string, string>; revision: bigint }>;
  // Hands each batch of events on; resolves with why the watch ended, or with `interrupted`'s reason.
  follow(fromRevision: bigint, onEvents: (events: WatchEvent[]) => void, interrupted: Promise<string>): Promise<string>;
  // Rejects when the member cannot answer a linearizable read within `withinMs` (no leader, paused, cut off).
  check(since: bigint, withinMs: number): Promise<PrefixCheck>;
  // Why this member cannot serve, in a few words, asked of the member itself within `withinMs`.
  diagnose(withinMs: number): Promise<string>;
  close(): void;
}

export type Connect = (settings: EtcdSettings, member: Member) => Promise<EtcdConnection>;

const CALL_DEADLINE_MS = 5000;

// The members the endpoints name, in order: an IP literal is one member, a DNS name is one per address it
// resolves to (asked again each time), so that leaving a member never means coming back to it by its name.
export async function resolveMembers(endpoints: readonly string[]): Promise<Member[]> {
  const members: Member[] = [];
  for (const endpoint of endpoints) {
    const url = new URL(endpoint);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    if (isIP(host) !== 0) {
      members.push({ url: endpoint, serverName: host });
      continue;
    }
    const addresses = await lookup(host, { all: true }).catch(() => []);
    if (addresses.length === 0) members.push({ url: endpoint, serverName: host });
    for (const { address, family } of addresses) {
      members.push({ url: `${url.protocol}//${family === 6 ? `[${address}]` : address}:${url.port}`, serverName: host });
    }
  }
  return members;
}

export async function connectEtcd3(settings: EtcdSettings, member: Member): Promise<EtcdConnection> {
  const client = new Etcd3(clientOptions(settings, member, await readCredentials(settings)));
  const prefix = keyPrefix(settings.prefix);
  const rangeEnd = prefixEnd(prefix);
  return {
    member: member.url,
    snapshot: async () => {
      const response = await client.getAll().prefix(prefix).exec();
      const mirror = new Map(response.kvs.map((kv) => [kv.key.toString(), kv.value.toString()]));
      return { mirror, revision: BigInt(response.header.revision) };
    },
    follow: (fromRevision, onEvents, interrupted) => follow(client, prefix, fromRevision, onEvents, interrupted),
    check: async (since, withinMs) => {
      // Both reads in one read-only transaction: one linearizable read, one round trip. etcd counts before
      // it filters by revision, so the second asks for one key (names only) written after `since`, if any.
      const range = (extra: object) => ({ request_range: { key: Buffer.from(prefix), range_end: rangeEnd, ...extra } });
      const success = [range({ count_only: true }), range({ keys_only: true, limit: 1, min_mod_revision: String(since + 1n) })];
      const response = await client.kv.txn({ compare: [], success, failure: [] }, { deadline: Date.now() + withinMs });
      const [all, newer] = response.responses.map((r) => r.response_range);
      return { revision: BigInt(response.header.revision), keys: Number(all?.count ?? 0), newer: newer?.kvs.length ?? 0 };
    },
    diagnose: async (withinMs) => {
      try {
        const status = await client.maintenance.status({ deadline: Date.now() + withinMs });
        return status.leader === '0' ? 'no leader' : 'cannot confirm a read with its leader (cut off from the quorum?)';
      } catch (err) {
        const message = (err as Error).message;
        if (/no leader/i.test(message)) return 'no leader';
        if (/deadline/i.test(message)) return `not answering within ${withinMs} ms (paused, overloaded or silently unreachable)`;
        return `unreachable (${message.split('\n')[0]})`;
      }
    },
    close: () => client.close(),
  };
}

// The prefix as a directory, so /services/mysql never matches /services/mysql2.
export function keyPrefix(prefix: string): string {
  return prefix + '/';
}

// etcd's range end for every key that starts with `prefix`: its last byte plus one.
function prefixEnd(prefix: string): Buffer {
  const end = Buffer.from(prefix);
  end[end.length - 1]!++;
  return end;
}

// etcd cancels a watch on a member that has lost its leader, and refuses a call there at once, only if the
// call asks for a leader: the metadata key `hasleader` (clientv3.WithRequireLeader). Without it a watch on a
// member cut off in a minority stays open and silent for as long as the partition lasts.
const requireLeader: Interceptor = (options, nextCall) =>
  new InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set('hasleader', 'true');
      next(metadata, listener);
    },
  });

function clientOptions(settings: EtcdSettings, member: Member, credentials: Credentials): IOptions {
  const options: IOptions = {
    hosts: [member.url],
    grpcOptions: {
      // Without keepalive a silent partition (no reset) is never noticed.
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      'grpc.max_receive_message_length': 64 << 20,
      // A member reached by address for a name: its certificate carries the name.
      ...(member.serverName !== new URL(member.url).hostname.replace(/^\[|\]$/g, '') ? { 'grpc.ssl_target_name_override': member.serverName, 'grpc.default_authority': member.serverName } : {}),
      interceptors: [requireLeader],
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
    await Promise.race([watcher.cancel().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 1000))]);
  }
}
