/**
 * One IPAM change at a time per host, within one process: upstream takes a host-wide file lock for the
 * same reason. In a plugin process (one call) it costs nothing; in the node agent, where many calls of one
 * host run at once, it turns a storm of conflicting transactions on the host's block (each loser re-reads
 * and backs off) into a queue. Other hosts and other processes are still kept apart by the guarded
 * transactions, not by this.
 */
import { serially } from '../sync/serial';

export function withHostLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
  return serially(`ipam-host:${key}`, fn);
}
