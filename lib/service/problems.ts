// What the service's problems and changes say to a person: one log line each, cut short, and which problems
// are new or gone since the last look. Pure.

import { hasInvalidUtf8, shortText } from '../common/text.ts';
import type { Problem, Selection } from './service.ts';

// What an applied change did, in a few words: "master 2 -> 3", "added 4, removed 1", "moved 2", "replicas 1,3 -> 1,2".
export function describeChange(before: Selection | undefined, after: Selection, masterOnly: boolean): string {
  const master = (selection: Selection | undefined) => selection?.servers.find((server) => server.enabled)?.name ?? 'none';
  const shownMaster = masterOnly ? `master ${before ? `${master(before)} -> ` : ''}${master(after)}` : '';
  const list = (names: string[]) => names.slice(0, 5).join(',') + (names.length > 5 ? `,… (${names.length})` : '');
  const replicas = (selection: Selection | undefined) => list((selection?.replicas ?? []).filter((server) => server.enabled).map((server) => server.name)) || 'none';
  const shownReplicas = after.replicas ? `replicas ${before ? `${replicas(before)} -> ` : ''}${replicas(after)}` : '';
  if (!before) return [`${after.servers.length} server(s)`, shownMaster, shownReplicas].filter(Boolean).join(', ');
  // Both lists are sorted by server name: one walk along them, with no table built for 10,000 servers.
  const added: string[] = [];
  const removed: string[] = [];
  const moved: string[] = [];
  const [was, now] = [before.servers, after.servers];
  for (let i = 0, j = 0; i < was.length || j < now.length; ) {
    const a = was[i];
    const b = now[j];
    if (a !== undefined && b !== undefined && a.server === b.server) {
      if (a.address !== b.address || a.port !== b.port) moved.push(b.name);
      i++;
      j++;
    } else if (b === undefined || (a !== undefined && a.server < b.server)) {
      removed.push(a!.name);
      i++;
    } else {
      added.push(b.name);
      j++;
    }
  }
  const parts = [
    master(before) !== master(after) ? shownMaster : '',
    replicas(before) !== replicas(after) ? shownReplicas : '',
    added.length ? `added ${list(added)}` : '',
    removed.length ? `removed ${list(removed)}` : '',
    moved.length ? `moved ${list(moved)}` : '',
  ].filter(Boolean);
  return parts.join(', ') || 'servers unchanged';
}

// A problem as one log line: the key and value quoted and escaped where they need it (a newline stays "\n"),
// each cut short if long.
export function describeProblem(problem: Problem): string {
  const key = shownKey(problem.key);
  // A notice refuses no value: it says why a member is left out (or let in) for a while.
  if (problem.notice) return `${key}: ${problem.reason}`;
  if (problem.value === undefined) return `rejected ${key}: ${problem.reason}`;
  return `rejected ${key}=${JSON.stringify(shortText(problem.value))}: ${problem.reason}`;
}

// Any key within its bound is shown whole; a stand-in for a longer one shows its head.
const SHOWN_KEY_CHARS = 640;

// A key as a log line or /state shows it: as it is, unless it is cut or holds bytes that are not UTF-8 (then
// quoted, with escapes).
function shownKey(key: string): string {
  const short = shortText(key, SHOWN_KEY_CHARS);
  return short === key && !hasInvalidUtf8(key) ? key : JSON.stringify(short);
}

// A problem as /state and the log show it: its key and value cut short, never held in full twice.
export function shownProblem(problem: Problem): Problem {
  return { ...problem, key: shortText(problem.key, SHOWN_KEY_CHARS), ...(problem.value === undefined ? {} : { value: shortText(problem.value) }), ...(problem.instance === undefined ? {} : { instance: shortText(problem.instance) }) };
}

// Which problems are new and which are gone since the last look, so that each is said once when it appears
// and once when it is gone, never once per change. `known` is what the last call returned as `current`.
export function problemChanges(known: ReadonlyMap<string, Problem>, problems: readonly Problem[]) {
  const current = new Map(problems.map((problem) => [describeProblem(problem), problem]));
  const appeared = [...current.keys()].filter((text) => !known.has(text));
  const resolved = [...known].filter(([text]) => !current.has(text)).map(([, problem]) => `resolved: ${problem.key} (${problem.reason})`);
  return { current, appeared, resolved };
}
