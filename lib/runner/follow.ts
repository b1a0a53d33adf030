// From etcd's newest state to haproxy: on each burst of etcd changes, the selection and the config for it,
// handed to the haproxy driver; it says each problem once, and what each applied change did and how long it
// took from the etcd change to haproxy running it. Its effects come in as functions, so tests drive it alone.

import type { ApplyPath, ApplyResult, Wanted } from '../haproxy/queue.ts';
import type { LastChange } from '../status/health.ts';
import type { Logger } from '../common/log.ts';
import { selectionOf, serverTable, type ServerTable } from '../render/plan.ts';
import { type PortServers, type Problem, type Selection } from '../service/service.ts';
import { describeChange, problemChanges } from '../service/problems.ts';
import type { RegistryState } from '../etcd/watch.ts';

interface FollowSettings {
  // The keys whose changes route traffic (the master and its address: lib/etcd/watch.ts): followed at once.
  routingKeys(mirror: ReadonlyMap<string, string>): string[];
  // `changed`: the keys changed since the last call, or undefined if anything may have.
  select(mirror: ReadonlyMap<string, string>, changed: ReadonlySet<string> | undefined): Selection;
  render(selection: PortServers): string;
  apply(wanted: Wanted): Promise<ApplyResult>;
  // Resolves once haproxy is not in the middle of a change: a state computed before then would only be
  // superseded (under a burst of writes, hundreds of renders of a large config a second, for nothing).
  idle(): Promise<void>;
  log: Logger;
  masterOnly: boolean;
  // Counts for the status page.
  problemsFound?(count: number): void;
  // How long a brief problem may last before it is said at warn (BRIEF_MS).
  briefMs?: number;
  changeApplied?(path: ApplyPath, convergenceSeconds: number): void;
}

interface Follower {
  // Call on every etcd change, with the newest state and the keys it changed (none: anything may have
  // changed); a burst (events arriving within one tick) becomes one update.
  changed(state: RegistryState, keys?: readonly string[]): void;
  // The newest state seen, and the last change applied.
  newest(): { revision: bigint; selection: Selection };
  lastChange(): LastChange | undefined;
}

// Other changes (membership churn) are followed at most this often: a burst of thousands of writes becomes a few
// updates instead of thousands of renders of a large config (memory under a burst: docs/operating.md, "Bounds").
const CHURN_MS = 50;

// Patroni leaves the leader key empty for ~100 ms in a switchover; a crashed leader's key is replaced within
// a second of its expiry. Longer than this, no leader is news.
const BRIEF_MS = 3_000;

export function createFollower(settings: FollowSettings): Follower {
  const { log } = settings;
  const briefMs = settings.briefMs ?? BRIEF_MS;
  let newest: { revision: bigint; selection: Selection } = { revision: 0n, selection: { servers: [], replicas: undefined, master: undefined, problems: [] } };
  let applied: Selection | undefined;
  let lastChange: LastChange | undefined;
  let knownProblems = new Map<string, Problem>();
  // A brief problem is said at warn once it has lasted BRIEF_MS.
  const briefTimers = new Map<string, NodeJS.Timeout>();
  let changeSeenAt: number | undefined;
  // The newest state the watch handed on.
  let latest: RegistryState = { mirror: new Map(), revision: 0n };
  // The keys changed since the last update; undefined once anything may have.
  let changedKeys: Set<string> | undefined;
  // An update on its way: at once (waiting only for haproxy to be between changes), or after CHURN_MS.
  let pending: 'now' | 'later' | undefined;
  let later: NodeJS.Timeout | undefined;
  let lastUpdateAt = -Infinity;

  const update = () => {
    const seenAt = changeSeenAt ?? performance.now();
    changeSeenAt = undefined;
    const { mirror, revision } = latest;
    const changed = changedKeys;
    changedKeys = new Set();
    const selection = settings.select(mirror, changed);
    newest = { revision, selection };
    const problems = problemChanges(knownProblems, selection.problems);
    knownProblems = problems.current;
    for (const text of problems.appeared) {
      const problem = problems.current.get(text);
      if (problem?.notice) {
        log.info(text);
        continue;
      }
      if (!problem?.brief) {
        log.warn(text);
        continue;
      }
      log.info(`${text} (a normal step of a switchover, if it ends within ${briefMs / 1000} s)`);
      briefTimers.set(text, setTimeout(() => knownProblems.has(text) && log.warn(`${text}, for ${briefMs / 1000} s now`), briefMs).unref());
    }
    for (const text of problems.resolved) log.info(text);
    for (const [text, timer] of briefTimers) {
      if (knownProblems.has(text)) continue;
      clearTimeout(timer);
      briefTimers.delete(text);
    }
    const found = problems.appeared.filter((text) => !problems.current.get(text)?.notice).length;
    if (found > 0) settings.problemsFound?.(found);
    const wanted = { config: settings.render(selection), servers: serverTable(selection), configOf: (table: ServerTable) => settings.render(selectionOf(table)) };
    void settings.apply(wanted).then(({ outcome, path, ms }) => {
      if (outcome !== 'applied' || path === undefined) return;
      const description = describeChange(applied, selection, settings.masterOnly);
      log.info(`applied revision ${revision}: ${description} (${path}, ${ms} ms)`, { servers: selection.servers.length });
      applied = selection;
      lastChange = { revision, at: new Date().toISOString(), path, description };
      settings.changeApplied?.(path, (performance.now() - seenAt) / 1000);
    });
  };

  const schedule = (urgent: boolean) => {
    if (pending === 'now') return;
    const wait = urgent ? 0 : lastUpdateAt + CHURN_MS - performance.now();
    if (wait > 0) {
      if (pending === undefined) later = setTimeout(() => ((pending = undefined), schedule(true)), wait);
      pending = 'later';
      return;
    }
    clearTimeout(later);
    pending = 'now';
    setImmediate(() =>
      void settings.idle().then(() => {
        pending = undefined;
        lastUpdateAt = performance.now();
        update();
      }),
    );
  };

  return {
    changed: (state, keys) => {
      latest = state;
      if (keys === undefined) changedKeys = undefined;
      else for (const key of keys) changedKeys?.add(key);
      changeSeenAt ??= performance.now();
      const routing = keys === undefined ? undefined : new Set(settings.routingKeys(state.mirror));
      schedule(routing === undefined || keys!.some((key) => routing.has(key)));
    },
    newest: () => newest,
    lastChange: () => lastChange,
  };
}
