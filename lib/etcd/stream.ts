// The watch stream of one member: one watcher on a gRPC stream of ambassador's own, handing each response on
// (its events turned into mirror text), and asked for progress replies, which the library's watcher cannot do.

import { WatchClient, type Etcd3, type IWatchResponse } from 'etcd3';
import type { WatchEvent } from './mirror.ts';

// etcd's watch_id of a reply that belongs to no watcher: the answer to a progress request.
const STREAM_REPLY = '-1';

// What a watch stream hands on: a response's events, or a progress reply (the member's revision then).
export type WatchMessage = { kind: 'events'; events: WatchEvent[] } | { kind: 'progress'; revision: bigint };

// How a watch stream ended: the revision it started from was compacted, or it failed or was ended.
export type WatchEnd = { kind: 'compacted'; compactRevision: bigint } | { kind: 'failed'; reason: string };

export interface WatchStream {
  // Asks the member for a progress reply on this stream.
  requestProgress(): void;
  ended: Promise<WatchEnd>;
  cancel(): void;
}

// Keys and values as the mirror holds them (lib/common/text.ts).
export interface Texts {
  key(bytes: Buffer): string;
  value(bytes: Buffer): string;
}

// One watcher on one gRPC stream of our own, through the client's connection (its TLS, token and
// require-leader metadata): etcd answers a progress request per stream, and a second watcher on the stream
// would make it wait for the slower (etcd issue 20242). Keys and values are turned into mirror text as they
// arrive, so that no large value is held.
export async function openWatch(client: Etcd3, prefix: string, rangeEnd: Buffer, fromRevision: bigint, texts: Texts, onMessage: (message: WatchMessage) => void): Promise<WatchStream> {
  // The library keeps its connection pool to itself; the watch client is built on it as the library does.
  const pool = (client as unknown as { pool: ConstructorParameters<typeof WatchClient>[0] }).pool;
  const stream = await new WatchClient(pool).watch();
  let open = true;
  let resolveEnded: (how: WatchEnd) => void = () => {};
  const ended = new Promise<WatchEnd>((resolve) => (resolveEnded = resolve));
  const end = (how: WatchEnd) => {
    open = false;
    resolveEnded(how);
  };
  // The events of a response etcd split in fragments (each under its request size limit), until the last.
  let fragments: WatchEvent[] = [];
  stream.on('data', (response: IWatchResponse) => {
    if (response.canceled) {
      const compactRevision = BigInt(response.compact_revision || '0');
      end(compactRevision > 0n ? { kind: 'compacted', compactRevision } : { kind: 'failed', reason: `watch canceled (${response.cancel_reason || 'no reason given'})` });
    } else if (response.events.length > 0) {
      for (const event of response.events) {
        fragments.push({ type: event.type === 'Put' ? 'put' : 'delete', key: texts.key(event.kv.key), value: texts.value(event.kv.value), modRevision: BigInt(event.kv.mod_revision) });
      }
      if (response.fragment) return;
      onMessage({ kind: 'events', events: fragments });
      fragments = [];
    } else if (response.watch_id === STREAM_REPLY || !response.created) {
      onMessage({ kind: 'progress', revision: BigInt(response.header.revision) });
    }
  });
  stream.on('error', (err: Error) => end({ kind: 'failed', reason: `disconnected (${err.message.split('\n')[0]})` }));
  stream.on('end', () => end({ kind: 'failed', reason: 'watch ended' }));
  // Fragmented: a catch-up of many large revisions in one response would pass gRPC's message limit, and the
  // stream would fail at the same revision on every try.
  stream.write({ create_request: { key: Buffer.from(prefix), range_end: rangeEnd, start_revision: String(fromRevision), fragment: true } });
  const cancel = () => {
    end({ kind: 'failed', reason: 'cancelled' });
    stream.cancel();
  };
  return { requestProgress: () => open && stream.write({ progress_request: {} }), ended, cancel };
}
