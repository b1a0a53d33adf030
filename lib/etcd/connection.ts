// The etcd3 client, one member at a time: the members the --etcd endpoints name (a DNS name may name several),
// and a connection to one of them that reads the prefix, watches it on a stream of our own (the library's
// watcher can neither ask for progress nor survive the answer), reads a few keys linearizably, lists the
// prefix at a revision, and says why the member cannot serve. lib/etcd/watch.ts decides what to do; nothing here retries.

import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { InterceptingCall, type Interceptor } from '@grpc/grpc-js';
import { noop } from 'cockatiel';
import { Etcd3, EtcdAuthenticationFailedError, EtcdPermissionDeniedError, EtcdUserNotFoundError, GRPCResourceExhastedError, type IOptions, type IRangeRequest, type IRangeResponse } from 'etcd3';
import { openWatch, type Texts, type WatchMessage, type WatchStream } from './stream.ts';

export type { WatchEnd, WatchMessage, WatchStream } from './stream.ts';
import { readCredentials, type CredentialFiles, type Credentials } from './credentials.ts';
import type { KeyState } from './mirror.ts';
import { bytesOf, textOf } from '../common/text.ts';

export interface EtcdSettings extends CredentialFiles {
  endpoints: readonly string[];
  prefix: string;
  user?: string | undefined;
  password?: string | undefined;
  // The largest key (counted below the prefix) and value held as they are; larger ones are held as a stand-in
  // (lib/common/text.ts): a hostile write can neither fill the memory nor the log.
  maxKeyBytes: number;
  maxValueBytes: number;
}

// One member: the URL ambassador talks to, and the name its TLS certificate is checked against.
export interface Member {
  url: string;
  serverName: string;
}

// One client's life, on one member. A fresh one after any trouble.
export interface EtcdConnection {
  member: string;
  // The member's etcd version, from its status.
  version(withinMs: number): Promise<string>;
  snapshot(): Promise<{ entries: Map<string, KeyState>; revision: bigint }>;
  // A linearizable read of these exact keys in one round trip: the cluster's revision, and each key found.
  // Rejects when the member cannot answer within `withinMs` (no leader, paused, cut off).
  read(keys: readonly string[], withinMs: number): Promise<{ revision: bigint; found: Map<string, KeyState> }>;
  // The name and revision of every key under the prefix at `revision`; 'compacted' if etcd no longer has it.
  listAt(revision: bigint, withinMs: number): Promise<Map<string, bigint> | 'compacted'>;
  // Watches the prefix from `fromRevision` (inclusive), handing each response on as it comes.
  watch(fromRevision: bigint, onMessage: (message: WatchMessage) => void): Promise<WatchStream>;
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
    // A name that does not resolve now is kept as given, for gRPC to resolve at each connection.
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
  const streams = new Set<WatchStream>();
  const deadline = (withinMs: number) => ({ deadline: Date.now() + withinMs });
  const texts = textsOf(settings);
  const pages = (request: PageRequest, withinMs: number) => readPages(client, { key: Buffer.from(prefix), range_end: rangeEnd, ...request }, withinMs);
  return {
    member: member.url,
    version: async (withinMs) => (await client.maintenance.status(deadline(withinMs))).version,
    snapshot: async () => {
      const entries = new Map<string, KeyState>();
      const revision = await pages({}, SNAPSHOT_DEADLINE_MS)((kv) => entries.set(texts.key(kv.key), { value: texts.value(kv.value), modRevision: BigInt(kv.mod_revision) }));
      return { entries, revision };
    },
    read: async (keys, withinMs) => {
      // One key is a Range; several, a read-only transaction of exact-key Ranges. Either is one index lookup
      // per key, whatever the prefix holds.
      const ranges = keys.map((key) => ({ key: bytesOf(key) }));
      const found = new Map<string, KeyState>();
      const add = (kvs: { key: Buffer; value: Buffer; mod_revision: string }[] = []) => {
        for (const kv of kvs) found.set(texts.key(kv.key), { value: texts.value(kv.value), modRevision: BigInt(kv.mod_revision) });
      };
      if (ranges.length === 1) {
        const response = await client.kv.range(ranges[0]!, deadline(withinMs));
        add(response.kvs);
        return { revision: BigInt(response.header.revision), found };
      }
      const response = await client.kv.txn({ compare: [], success: ranges.map((range) => ({ request_range: range })), failure: [] }, deadline(withinMs));
      for (const part of response.responses) add(part.response_range?.kvs);
      return { revision: BigInt(response.header.revision), found };
    },
    listAt: async (revision, withinMs) => {
      const listed = new Map<string, bigint>();
      try {
        await pages({ keys_only: true, revision: String(revision), serializable: true }, withinMs)((kv) => listed.set(texts.key(kv.key), BigInt(kv.mod_revision)));
        return listed;
      } catch (err) {
        if (/compacted/i.test((err as Error).message)) return 'compacted';
        throw err;
      }
    },
    watch: async (fromRevision, onMessage) => {
      const stream = await openWatch(client, prefix, rangeEnd, fromRevision, texts, onMessage);
      streams.add(stream);
      void stream.ended.then(() => streams.delete(stream));
      return stream;
    },
    diagnose: async (withinMs) => {
      try {
        const status = await client.maintenance.status(deadline(withinMs));
        return status.leader === '0' ? 'no leader' : 'cannot confirm a read with its leader (cut off from the quorum?)';
      } catch (err) {
        const message = (err as Error).message;
        if (/no leader/i.test(message)) return 'no leader';
        if (/deadline/i.test(message)) return `not answering within ${withinMs} ms (paused, overloaded or silently unreachable)`;
        return `unreachable (${message.split('\n')[0]})`;
      }
    },
    // The client's close() leaves streams open (the process would not exit): they are cancelled first.
    close: () => {
      for (const stream of streams) stream.cancel();
      client.close();
    },
  };
}

// Keys and values as the mirror holds them (lib/common/text.ts): a key's stand-in keeps the prefix and a little more.
function textsOf(settings: EtcdSettings): Texts {
  const prefixBytes = Buffer.byteLength(keyPrefix(settings.prefix));
  return {
    key: (bytes) => textOf(bytes, prefixBytes + settings.maxKeyBytes, prefixBytes + 48),
    value: (bytes) => textOf(bytes, settings.maxValueBytes),
  };
}

// A whole read of the prefix may be larger than one gRPC message (64 MiB), and a hostile registry makes it so:
// it is read in pages, every page at the revision of the first, each about PAGE_TARGET_BYTES (the next page's
// key count follows the last page's size), a page refused as too large read again in quarters. This long for
// the whole read.
const SNAPSHOT_DEADLINE_MS = 30_000;
const PAGE_FIRST_KEYS = 100;
const PAGE_MAX_KEYS = 10_000;
const PAGE_TARGET_BYTES = 2 << 20;

type PageRequest = Pick<IRangeRequest, 'keys_only' | 'revision' | 'serializable'>;
type RangeKv = IRangeResponse['kvs'][number];

// Reads the range page by page, handing each key on; resolves to the revision every page was read at.
function readPages(client: Etcd3, request: IRangeRequest, withinMs: number) {
  return async (each: (kv: RangeKv) => void): Promise<bigint> => {
    const end = Date.now() + withinMs;
    let key = request.key!;
    let revision = request.revision === undefined ? undefined : String(request.revision);
    let limit = PAGE_FIRST_KEYS;
    for (;;) {
      // Pages after the first are read at its revision, from the member that answered it: a serializable read
      // there is as current as the first.
      const page = { ...request, key, limit, ...(revision === undefined ? {} : { revision, serializable: true }) };
      let response: IRangeResponse;
      try {
        response = await client.kv.range(page, { deadline: end });
      } catch (err) {
        if (!tooLarge(err) || limit === 1) throw err;
        limit = Math.max(1, Math.floor(limit / 4));
        continue;
      }
      revision ??= response.header.revision;
      let bytes = 0;
      for (const kv of response.kvs) {
        bytes += kv.key.length + kv.value.length;
        each(kv);
      }
      const last = response.kvs.at(-1);
      if (!response.more || last === undefined) return BigInt(revision);
      key = Buffer.concat([last.key, Buffer.of(0)]);
      limit = Math.max(1, Math.min(PAGE_MAX_KEYS, Math.floor((limit * PAGE_TARGET_BYTES) / Math.max(bytes, 1))));
    }
  };
}

// etcd refused the user's credentials: a wrong user or password, or no permission on the prefix. Asking again
// at once, or another member, gets the same answer.
export function refusedCredentials(err: unknown): boolean {
  return err instanceof EtcdAuthenticationFailedError || err instanceof EtcdPermissionDeniedError || err instanceof EtcdUserNotFoundError;
}

// gRPC refused a message over its size limit.
function tooLarge(err: unknown): boolean {
  return err instanceof GRPCResourceExhastedError || /RESOURCE_EXHAUSTED|larger than max/i.test((err as Error).message);
}

// The prefix as a directory, so /services/mysql never matches /services/mysql2.
function keyPrefix(prefix: string): string {
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
    // Retries are ours, with a fresh client each time; the library's default circuit breaker would refuse
    // calls for seconds after etcd is back.
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
