// The soak's writer: moves the master every 2-4 s with a compare-and-swap, as a cluster manager would, and
// records each write as acknowledged or of unknown outcome (then settled). It can be held for quiet periods,
// and told that an instance vanished: never chosen again until it is back, and moved away from at once.

import { setTimeout as sleep } from 'node:timers/promises';
import type { Etcd3 } from 'etcd3';
import { now, type History } from './history.ts';

export class MasterWriter {
  readonly #client: Etcd3;
  readonly #history: History;
  readonly #key: string;
  readonly #choices: readonly string[];
  readonly #next: () => number;
  // What the writer last knew etcd to hold: the master, and the revision it was written at.
  #master: string;
  #modRevision: bigint;
  #writing = true;
  #running = true;
  #inFlight: Promise<void> = Promise.resolve();
  #vanished: string | undefined;
  #hurry: () => void = () => {};
  readonly #loop: Promise<void>;

  constructor(client: Etcd3, history: History, key: string, choices: readonly string[], next: () => number, first: { master: string; revision: bigint }) {
    [this.#client, this.#history, this.#key, this.#choices, this.#next] = [client, history, key, choices, next];
    [this.#master, this.#modRevision] = [first.master, first.revision];
    this.#loop = this.#run();
  }

  master(): string {
    return this.#master;
  }

  // Holds the writer, once its write in flight is done; or lets it go on.
  async pause(): Promise<void> {
    this.#writing = false;
    await this.#inFlight;
  }

  resume(): void {
    this.#writing = true;
  }

  // The instance is never chosen until `back()`, and the master moves off it within a second.
  vanish(name: string): { back: () => void } {
    this.#vanished = name;
    setTimeout(() => this.#hurry(), 1000);
    return { back: () => (this.#vanished = undefined) };
  }

  async stop(): Promise<void> {
    this.#running = false;
    this.#hurry();
    await this.#loop;
  }

  // A linearizable read of the master, asked until it answers; recorded.
  async readMaster(): Promise<string> {
    for (;;) {
      try {
        const response = await this.#client.get(this.#key).exec();
        const kv = response.kvs[0]!;
        this.#master = kv.value.toString();
        this.#modRevision = BigInt(kv.mod_revision);
        this.#history.add({ type: 'read', t: now(), master: this.#master, modRevision: this.#modRevision, revision: BigInt(response.header.revision) });
        return this.#master;
      } catch {
        await sleep(200);
      }
    }
  }

  async #run(): Promise<void> {
    while (this.#running) {
      await Promise.race([sleep(2000 + this.#next() * 2000), new Promise<void>((resolve) => (this.#hurry = resolve))]);
      if (!this.#writing || !this.#running) continue;
      let done: () => void = () => {};
      this.#inFlight = new Promise((resolve) => (done = resolve));
      const choices = this.#choices.filter((name) => name !== this.#master && name !== this.#vanished);
      const target = choices[Math.floor(this.#next() * choices.length)]!;
      const sent = now();
      try {
        await this.#write(target);
      } catch {
        this.#history.add({ type: 'write-unknown', t: now(), sent, master: target });
        await this.#settle();
      } finally {
        done();
      }
    }
  }

  // A compare-and-swap of the master to `value`, on the revision last known: recorded as a write when it
  // succeeds, followed by a read when it does not. Throws when its outcome is unknown.
  async #write(value: string): Promise<void> {
    const sent = now();
    const response = await this.#client
      .if(this.#key, 'Mod', '==', String(this.#modRevision))
      .then(this.#client.put(this.#key).value(value))
      .commit();
    if (!response.succeeded) return void (await this.readMaster());
    this.#master = value;
    this.#modRevision = BigInt(response.header.revision);
    this.#history.add({ type: 'write', t: now(), sent, master: value, revision: this.#modRevision });
  }

  // After a write of unknown outcome: a read cannot settle it, since the request may still be on its way (to a
  // paused member, say) and land after the read. A write of the master known now, on the same condition the
  // lost one had, does: if it succeeds the lost one can no longer (and had not), and if it fails the lost one
  // landed first, and a read says when at the latest. Asked again while its own outcome is unknown (only one
  // of them can land: they share the condition).
  async #settle(): Promise<void> {
    while (this.#running) {
      try {
        return await this.#write(this.#master);
      } catch {
        await sleep(200);
      }
    }
  }
}
