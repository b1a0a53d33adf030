// The mirror of the prefix: each key's value and the revision it was last written at, and the revision up to
// which every change is in it; and the rules that say whether what etcd sends or answers agrees with it.
// Pure: watch responses, reads and listings in, verdicts out. lib/etcd/watch.ts acts on them.

export interface KeyState {
  value: string;
  modRevision: bigint;
}

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  value: string;
  modRevision: bigint;
}

export interface Mirror {
  values: Map<string, string>;
  revisions: Map<string, bigint>;
  // The revision of each key's delete, for the latest deletes (DELETES_KEPT): a read of the key made before
  // its delete is not evidence against the mirror.
  deleted: Map<string, bigint>;
  // Every change up to this revision is in the mirror.
  revision: bigint;
}

// A read is compared within a check, so only the last moments' deletes matter.
const DELETES_KEPT = 1000;

export function emptyMirror(): Mirror {
  return { values: new Map(), revisions: new Map(), deleted: new Map(), revision: 0n };
}

export function mirrorOf(entries: ReadonlyMap<string, KeyState>, revision: bigint): Mirror {
  const mirror: Mirror = { values: new Map(), revisions: new Map(), deleted: new Map(), revision };
  for (const [key, { value, modRevision }] of entries) {
    mirror.values.set(key, value);
    mirror.revisions.set(key, modRevision);
  }
  return mirror;
}

type EventsVerdict = { kind: 'applied'; keys: string[] } | { kind: 'out-of-order'; key: string; revision: bigint; held: bigint };

// Applies one watch response. A watch delivers each revision once, in order, all of its events in one
// response; so an event at or below the revision held breaks the stream's order, and the change it carries
// may be lost (nothing is applied then). The one exception: a watch started at `startRevision` (the revision
// held then) sends that revision's events again, and the mirror holds them already.
export function applyEvents(mirror: Mirror, events: readonly WatchEvent[], startRevision: bigint): EventsVerdict {
  let previous: bigint | undefined;
  const fresh: WatchEvent[] = [];
  for (const event of events) {
    const sameRevision = event.modRevision === previous;
    previous = event.modRevision;
    if (event.modRevision === startRevision && mirror.revision === startRevision) continue;
    if (!sameRevision && event.modRevision <= (fresh.at(-1)?.modRevision ?? mirror.revision)) {
      return { kind: 'out-of-order', key: event.key, revision: event.modRevision, held: fresh.at(-1)?.modRevision ?? mirror.revision };
    }
    fresh.push(event);
  }
  for (const event of fresh) {
    mirror.deleted.delete(event.key);
    if (event.type === 'put') {
      mirror.values.set(event.key, event.value);
      mirror.revisions.set(event.key, event.modRevision);
    } else {
      mirror.values.delete(event.key);
      mirror.revisions.delete(event.key);
      mirror.deleted.set(event.key, event.modRevision);
      if (mirror.deleted.size > DELETES_KEPT) mirror.deleted.delete(mirror.deleted.keys().next().value!);
    }
    mirror.revision = event.modRevision;
  }
  return { kind: 'applied', keys: fresh.map((event) => event.key) };
}

// A progress reply at `revision` on a stream whose replies are ordered with its events: every change up to it
// has been delivered.
export function advanceTo(mirror: Mirror, revision: bigint): void {
  if (revision > mirror.revision) mirror.revision = revision;
}

// What a linearizable read of a few keys (at the cluster's revision `read.revision`) says of the mirror, which
// held every change up to `heldAtSend` when the read was sent:
// - agrees: each key as the mirror has it, or changed in the mirror after the read (the read cannot tell);
// - pending: a key changed after the revision the mirror holds (or was deleted, while the mirror holds less
//   than the read's revision): the change may still be on its way;
// - missed: the mirror holds every change up to a revision past the key's change, and has another version:
//   the watch lost that change;
// - etcd-behind: etcd answered with a revision older than what the mirror held before it asked (restored from
//   a backup, or another cluster).
export type KeysVerdict =
  | { kind: 'agrees' }
  | { kind: 'pending'; key: string }
  | { kind: 'missed'; key: string; etcd: bigint | undefined; mirror: bigint | undefined }
  | { kind: 'etcd-behind'; revision: bigint };

export function compareKeys(mirror: Mirror, read: { revision: bigint; found: ReadonlyMap<string, KeyState> }, keys: readonly string[], heldAtSend: bigint): KeysVerdict {
  if (read.revision < heldAtSend) return { kind: 'etcd-behind', revision: read.revision };
  let pending: string | undefined;
  for (const key of keys) {
    const etcd = read.found.get(key);
    const held = mirror.revisions.get(key);
    const changedAt = held ?? mirror.deleted.get(key);
    if (changedAt !== undefined && changedAt > read.revision) continue;
    if (etcd?.modRevision === held && (etcd === undefined || etcd.value === mirror.values.get(key))) continue;
    const onItsWay = etcd === undefined ? read.revision > mirror.revision : etcd.modRevision > mirror.revision;
    if (onItsWay) {
      pending ??= key;
      continue;
    }
    return { kind: 'missed', key, etcd: etcd?.modRevision, mirror: held };
  }
  return pending === undefined ? { kind: 'agrees' } : { kind: 'pending', key: pending };
}

// A listing of every key under the prefix with its revision, at the revision the mirror holds, against the
// mirror: how many keys differ (missing on either side, or at another revision), and one of them.
type ListingVerdict = { kind: 'agrees' } | { kind: 'differs'; keys: number; example: string };

export function compareListing(mirror: Mirror, listing: ReadonlyMap<string, bigint>): ListingVerdict {
  let differing = 0;
  let example: string | undefined;
  const differs = (key: string) => {
    differing++;
    example ??= key;
  };
  for (const [key, revision] of listing) if (mirror.revisions.get(key) !== revision) differs(key);
  for (const key of mirror.revisions.keys()) if (!listing.has(key)) differs(key);
  return example === undefined ? { kind: 'agrees' } : { kind: 'differs', keys: differing, example };
}

// Whether a member of this etcd version answers a progress request in order with the stream's events: from
// 3.4.25 and 3.5.8 (etcd issue 15220). Before, the reply can overtake events at or below its revision, so it
// proves the stream alive, not delivered.
export function progressOrdered(version: string): boolean {
  const match = /^(\d+)\.(\d+)\.(\d+)/.exec(version);
  if (!match) return false;
  const [major, minor, patch] = match.slice(1).map(Number) as [number, number, number];
  if (major !== 3) return major > 3;
  if (minor === 4) return patch >= 25;
  if (minor === 5) return patch >= 8;
  return minor > 5;
}
