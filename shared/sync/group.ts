/**
 * Group commit: calls that queue behind the same lock are run together when their turn comes. The first
 * caller whose turn it is takes every call still waiting in its queue (up to `max`) and runs them with one
 * `run`; each caller gets its own outcome. With one caller at a time this is just the lock.
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
  /** Only calls with the same queue key are run together. */
  queue: string;
  /** Most calls in one group. */
  max: number;
  /** Runs a group: one outcome per item, in the items' order. Used only by the group's first caller. */
  run(items: T[]): Promise<PromiseSettledResult<R>[]>;
}

export async function inGroup<T, R>(g: Group<T, R>, item: T): Promise<R> {
  const outcome = new Promise<PromiseSettledResult<R>>((resolve) => {
    const waiting = (queues.get(g.queue) ?? []) as Waiting<T, R>[];
    waiting.push({ item, settle: resolve });
    queues.set(g.queue, waiting as Waiting<unknown, unknown>[]);
  });
  await serially(g.lock, async () => {
    // Turns come in arrival order, so this call is first in its queue unless an earlier turn took it.
    const waiting = (queues.get(g.queue) ?? []) as Waiting<T, R>[];
    const taken = waiting.splice(0, g.max);
    if (waiting.length === 0) queues.delete(g.queue);
    if (taken.length === 0) return;
    let outcomes: PromiseSettledResult<R>[];
    try {
      outcomes = await g.run(taken.map((w) => w.item));
    } catch (e) {
      outcomes = taken.map(() => ({ status: 'rejected', reason: e }));
    }
    taken.forEach((w, i) => w.settle(outcomes[i] ?? { status: 'rejected', reason: new Error('no outcome for a grouped call') }));
  });
  const done = await outcome;
  if (done.status === 'rejected') throw done.reason;
  return done.value;
}
