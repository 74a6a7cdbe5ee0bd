/**
 * The small datastore interface the allocator and the endpoint code are written against. etcd v3 backs it
 * for real (shared/etcd); memory backs it for fast unit and property tests (./memory).
 */
export interface KeyValue {
  key: string;
  value: string;
  /** etcd mod_revision: the revision of the last write to this key. */
  modRevision: number;
}

/** A guard on a transaction: the key's mod_revision must equal this; 0 means "the key must not exist". */
export interface Compare {
  key: string;
  modRevision: number;
}

export type Op = { op: 'put'; key: string; value: string } | { op: 'delete'; key: string };

export interface TxnResult {
  succeeded: boolean;
  revision: number;
}

/** One read in a batch: a single key, or every key under a prefix. */
export type Read = { key: string } | { prefix: string; keysOnly?: boolean };

export interface Store {
  /** Several reads served by one round trip, from one consistent revision. */
  read(reads: readonly Read[]): Promise<KeyValue[][]>;
  /**
   * Applies all ops if every compare holds. One round trip. `revision` is the store's revision after the
   * call, which is the mod_revision of every key the ops put.
   */
  txn(compares: readonly Compare[], ops: readonly Op[]): Promise<TxnResult>;
  close(): Promise<void>;
  /** Round trips made so far; benchmarks and tests read it. */
  readonly roundTrips: number;
  /**
   * Which datastore, reached how (endpoints, transport, credentials): two stores with the same identity can
   * do each other's work. The node agent groups only calls whose stores share it.
   */
  readonly identity: string;
}

export async function getKey(store: Store, key: string): Promise<KeyValue | undefined> {
  const [res] = await store.read([{ key }]);
  return res?.[0];
}

export async function listPrefix(store: Store, prefix: string, keysOnly = false): Promise<KeyValue[]> {
  const [res] = await store.read([{ prefix, keysOnly }]);
  return res ?? [];
}

/** The compare that guards an update of what was read (or the creation of what was absent). */
export function guard(key: string, kv: KeyValue | undefined): Compare {
  return { key, modRevision: kv?.modRevision ?? 0 };
}
