import type { Compare, KeyValue, Op, Read, Store, TxnResult } from './store';

interface Entry {
  value: string;
  modRevision: number;
}

export interface MemoryStoreOptions {
  /**
   * Yield to the event loop a random number of times (0..n) before each operation, so that concurrent
   * callers interleave differently on every run, as separate processes do against etcd.
   */
  interleave?: number;
  random?: () => number;
}

/** An in-memory store with etcd's revision semantics, for unit and property tests of the allocator. */
let memoryStores = 0;

export class MemoryStore implements Store {
  readonly identity = `memory:${++memoryStores}`;
  private readonly data = new Map<string, Entry>();
  private revision = 1;
  private trips = 0;

  constructor(private readonly opts: MemoryStoreOptions = {}) {}

  get roundTrips(): number {
    return this.trips;
  }

  private async yieldRandomly(): Promise<void> {
    const n = Math.floor((this.opts.random ?? Math.random)() * ((this.opts.interleave ?? 0) + 1));
    for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
  }

  async read(reads: readonly Read[]): Promise<KeyValue[][]> {
    await this.yieldRandomly();
    this.trips++;
    return reads.map((r) => {
      if ('key' in r) {
        const e = this.data.get(r.key);
        return e ? [{ key: r.key, value: e.value, modRevision: e.modRevision }] : [];
      }
      return [...this.data.entries()]
        .filter(([k]) => k.startsWith(r.prefix))
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([key, e]) => ({ key, value: r.keysOnly ? '' : e.value, modRevision: e.modRevision }));
    });
  }

  async txn(compares: readonly Compare[], ops: readonly Op[]): Promise<TxnResult> {
    await this.yieldRandomly();
    this.trips++;
    const holds = compares.every((c) => (this.data.get(c.key)?.modRevision ?? 0) === c.modRevision);
    if (!holds) return { succeeded: false, revision: this.revision };
    if (ops.length > 0) this.revision++;
    for (const op of ops) {
      if (op.op === 'put') this.data.set(op.key, { value: op.value, modRevision: this.revision });
      else this.data.delete(op.key);
    }
    return { succeeded: true, revision: this.revision };
  }

  async close(): Promise<void> {}

  /** Test helpers: direct access without counting round trips. */
  snapshot(prefix = ''): Map<string, string> {
    return new Map([...this.data.entries()].filter(([k]) => k.startsWith(prefix)).map(([k, e]) => [k, e.value]));
  }

  seed(key: string, value: string): void {
    this.revision++;
    this.data.set(key, { value, modRevision: this.revision });
  }
}
