// The layout, chosen once: how the keys under the prefix become the service (ambassador's instances layout, or
// Patroni's own), which of them route (read on every check of the watch), and how large a value may be.
// Pure: it makes functions of the mirror, and holds nothing but the instances layout's cache of what did not
// change and, under Patroni's, the replicas' lag readings (lib/service/replicas.ts).

import { createServiceSelector, MAX_VALUE_BYTES, routingKeys } from './instances.ts';
import type { ReplicaSelection } from '../options/kinds.ts';
import { MAX_PATRONI_VALUE_BYTES, patroniRoutingKeys, readCluster, selectPatroni } from './patroni.ts';
import type { ReplicaMemory } from './replicas.ts';
import type { Selection } from './service.ts';

export interface LayoutSettings {
  kind: 'instances' | 'patroni';
  prefix: string;
  masterOnly: boolean;
  // There is a replica port.
  replicas: boolean;
  public: boolean;
  backendPort: number;
  // Patroni's: what the replica port routes to (--replicas, its lag from --max-replica-lag if that is given),
  // and whether the primary serves it while no replica qualifies.
  replicaSelection: ReplicaSelection;
  replicaFallback: boolean;
}

export interface Layout {
  maxValueBytes: number;
  routingKeys(mirror: ReadonlyMap<string, string>): string[];
  // A selection for a stream of states: `changed`, the keys changed since the last call (undefined: anything
  // may have). A Patroni cluster has a few members and is read whole; the instances layout may have thousands,
  // and reads again only the instances that changed.
  select(mirror: ReadonlyMap<string, string>, changed?: ReadonlySet<string>): Selection;
}

export function chooseLayout(settings: LayoutSettings): Layout {
  if (settings.kind === 'patroni') {
    const patroni = { prefix: settings.prefix, masterOnly: settings.masterOnly, replicas: settings.replicas, selection: settings.replicaSelection, fallback: settings.replicaFallback };
    let memory: ReplicaMemory = new Map();
    return {
      maxValueBytes: MAX_PATRONI_VALUE_BYTES,
      routingKeys: (mirror) => patroniRoutingKeys(mirror, settings.prefix),
      select: (mirror) => {
        const chosen = selectPatroni(readCluster(mirror, settings.prefix), patroni, memory);
        memory = chosen.memory;
        return chosen.selection;
      },
    };
  }
  const selector = createServiceSelector(settings);
  return {
    maxValueBytes: MAX_VALUE_BYTES,
    routingKeys: (mirror) => routingKeys(mirror, settings),
    select: (mirror, changed) => selector.select(mirror, changed),
  };
}
