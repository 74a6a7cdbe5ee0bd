/**
 * A backstop so no call can hang a runtime: past the deadline the call fails with "try again later" (the
 * runtime then DELs, and DEL and GC remove whatever was half made). Datastore requests have their own,
 * much shorter deadlines (CALICO_ETCD_TIMEOUT_MS, 5 s per request and endpoint). Free of other modules:
 * the launcher bundles it.
 */
export const DEFAULT_DEADLINE_MS = 60_000;

/** CALICO_TS_DEADLINE_MS when it is a positive number, else the default. */
export function deadlineMs(env: Readonly<Record<string, string | undefined>>): number {
  const ms = Number(env.CALICO_TS_DEADLINE_MS);
  return ms > 0 ? ms : DEFAULT_DEADLINE_MS;
}
