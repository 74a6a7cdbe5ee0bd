/**
 * Group commit: calls that queue behind the same lock are run together when their turn comes. The first
 * caller whose turn it is takes every call still waiting in its queue (up to `max`) and runs them with one
 * `run`; each caller gets its own outcome, as soon as `run` settles it. With one caller at a time this is
 * just the lock.
 *
 * A turn takes later calls of its own queue ahead of earlier calls of another queue under the same lock
 * (a group of ADDs before a DEL that came between them). Callers that need an order between such calls
 * keep it themselves: the node agent runs the calls of one attachment one after another.
 */
import { serially } from './serial';

interface Waiting<T, R> {
  item: T;
  settle(outcome: PromiseSettledResult<R>): void;
}

const queues = new Map<string, Waiting<unknown, unknown>[]>();

export interface Group<T, R> {
  /** Calls with the same lock key run one group at a time (other queues under that lock included). */
  lock: string;
  /** Only calls with the same lock and queue keys are run together. */
  queue: string;
  /** Most calls in one group (at least 1). */
  max: number;
  /**
   * Runs a group: one outcome per item, in the items' order. `settle(i, outcome)` may hand item i its
   * outcome earlier, so that it need not wait for the rest of the group. Used only by the first caller.
   */
  run(items: T[], settle: (i: number, outcome: PromiseSettledResult<R>) => void): Promise<PromiseSettledResult<R>[]>;
}

export async function inGroup<T, R>(g: Group<T, R>, item: T): Promise<R> {
  if (!Number.isInteger(g.max) || g.max < 1) throw new Error(`group size must be a positive integer, not ${g.max}`);
  const key = JSON.stringify([g.lock, g.queue]);
  let settleMine: (o: PromiseSettledResult<R>) => void = () => undefined;
  const outcome = new Promise<PromiseSettledResult<R>>((resolve) => (settleMine = resolve));
  const mine: Waiting<T, R> = { item, settle: settleMine };
  queues.set(key, [...(queues.get(key) ?? []), mine as Waiting<unknown, unknown>]);
  let leading = false;
  const turn = serially(g.lock, async () => {
    // A call an earlier turn took along has its outcome (or will): this turn takes nothing, so that no
    // group runs on the resources of a caller that may have returned already.
    const waiting = (queues.get(key) ?? []) as Waiting<T, R>[];
    if (!waiting.includes(mine)) return;
    leading = true;
    // Turns come in arrival order, so this call is first in its queue.
    const taken = waiting.splice(0, g.max);
    if (waiting.length === 0) queues.delete(key);
    // A promise settles once: a late or repeated settle of an item changes nothing.
    const settle = (i: number, o: PromiseSettledResult<R>) => taken[i]?.settle(o);
    try {
      const outcomes = await g.run(
        taken.map((w) => w.item),
        settle,
      );
      taken.forEach((w, i) => w.settle(outcomes[i] ?? { status: 'rejected', reason: new Error('no outcome for a grouped call') }));
    } catch (e) {
      taken.forEach((w) => w.settle({ status: 'rejected', reason: e }));
    }
  });
  const done = await outcome;
  // The group's first caller lent it its run (and what that uses): it returns when the group is done.
  if (leading) await turn;
  if (done.status === 'rejected') throw done.reason;
  return done.value;
}
