/**
 * One IPAM change at a time per host, within one process: upstream takes a host-wide file lock for the
 * same reason. In a plugin process (one call) it costs nothing; in the node agent, where many calls of one
 * host run at once, it turns a storm of conflicting transactions on the host's block (each loser re-reads
 * and backs off) into a queue. Other hosts and other processes are still kept apart by the guarded
 * transactions, not by this.
 */
const tails = new Map<string, Promise<void>>();

export async function withHostLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
  const before = tails.get(key) ?? Promise.resolve();
  let release = (): void => undefined;
  const mine = new Promise<void>((resolve) => (release = resolve));
  const tail = before.then(() => mine);
  tails.set(key, tail);
  await before;
  try {
    return await fn();
  } finally {
    release();
    if (tails.get(key) === tail) tails.delete(key);
  }
}
