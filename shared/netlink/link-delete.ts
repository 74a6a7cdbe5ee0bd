import { run, type RunResult } from './exec';
import { currentLinkDeleter } from './ip-session';
import { linkExists, linkIndex } from './link';

/** How often a long-lived process looks whether a link it is deleting is gone. */
const GONE_POLL_MS = 1;

const OK: RunResult = { stdout: '', stderr: '', exitCode: 0 };

/**
 * Deletes answered before their `ip` returned, whose `ip` has not returned yet. Past this many (a kernel
 * stuck in unregister_netdevice, say), a delete waits for its `ip` again, so that the agent's limit on
 * calls at once holds the next ones back rather than each leaving an `ip` behind.
 */
const MAX_UNRETURNED = 16;
let unreturned = 0;

/**
 * Deletes a link of the host namespace (for a veth, its peer goes with it, wherever it is). Resolves as
 * `ip link del` would, except in a process that keeps an ip session (the node agent): there it resolves as
 * soon as the link is gone from the host. The kernel unlists the link, its addresses and routes, and its
 * peer within a few ms, then holds the caller ~20 ms more in an RCU barrier before freeing the memory; the
 * agent answers without waiting for that, and reaps `ip` when it is done. It uses its deleting `ip` when
 * that is idle, and an exec of its own otherwise, so that deletions of a burst overlap in the kernel as
 * execs do.
 */
export async function deleteHostLink(name: string): Promise<RunResult> {
  const index = linkIndex(name);
  if (index === undefined) return OK;
  const deleter = currentLinkDeleter();
  // Only a process that keeps an ip session (the agent) has a deleter, and outlives the ip it leaves.
  if (!deleter || unreturned >= MAX_UNRETURNED) return run('ip', ['link', 'del', name]);
  const done = deleter.busy ? run('ip', ['link', 'del', name]) : deleter.run([`link del ${name}`], [name]);
  const gone = new AbortController();
  try {
    const first = await Promise.race([done, goneFromHost(name, index, gone.signal)]);
    if (first) return first;
    // Gone: whatever ip says after it changes nothing.
    unreturned++;
    const returned = (): void => void unreturned--;
    void done.then(returned, returned);
    return OK;
  } finally {
    gone.abort();
    done.catch(() => undefined);
  }
}

/**
 * Resolves (to undefined) once no link of that name has that index, unless aborted first. An index that
 * cannot be read counts as gone only when the link's directory is gone too.
 */
function goneFromHost(name: string, index: number, abort: AbortSignal): Promise<undefined> {
  const gone = (): boolean => {
    const now = linkIndex(name);
    return now === undefined ? !linkExists(name) : now !== index;
  };
  return new Promise((resolve) => {
    const look = (): void => {
      if (abort.aborted) return;
      if (gone()) resolve(undefined);
      else setTimeout(look, GONE_POLL_MS);
    };
    setTimeout(look, GONE_POLL_MS);
  });
}
