import { describe, expect, it } from 'vitest';
import { serially } from '../../shared/sync/serial';
import { limiter } from '../../shared/sync/limit';
import { inGroup, type Group } from '../../shared/sync/group';
import { ipamAdd, ipamDel, type IpamCall } from '../../shared/ipam/cni-ipam';
import { readCniEnv } from '../../shared/cni/env';
import { parseNetConf } from '../../shared/cni/config';
import { createLogger } from '../../shared/cni/log';
import { MemoryStore } from '../../shared/store/memory';
import { addPool } from '../../shared/ipam/pools';
import { keys } from '../../shared/calico/keys';
import { checkIpamInvariants } from '../helpers/ipam-invariants';

const tick = () => new Promise<void>((r) => setImmediate(r));

describe('serially', () => {
  it('runs calls with the same key one at a time, in order, and a failure does not stop the next', async () => {
    const events: string[] = [];
    const job = (name: string, fail = false) => async () => {
      events.push(`${name} start`);
      await tick();
      await tick();
      events.push(`${name} end`);
      if (fail) throw new Error(`${name} failed`);
      return name;
    };
    const results = await Promise.allSettled([serially('h', job('a')), serially('h', job('b', true)), serially('h', job('c'))]);
    expect(events).toEqual(['a start', 'a end', 'b start', 'b end', 'c start', 'c end']);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
  });

  it('runs calls with different keys at the same time', async () => {
    const events: string[] = [];
    const job = (name: string) => async () => {
      events.push(`${name} start`);
      await tick();
      events.push(`${name} end`);
    };
    await Promise.all([serially('h1', job('a')), serially('h2', job('b'))]);
    expect(events.slice(0, 2)).toEqual(['a start', 'b start']);
  });
});

describe('inGroup', () => {
  it('runs the calls that queued behind the lock as groups of at most max, and each caller gets its own outcome', async () => {
    const groups: number[][] = [];
    const g: Group<number, string> = {
      lock: 'lock-a',
      queue: 'queue-a',
      max: 3,
      run: async (items) => {
        groups.push(items);
        await tick();
        return items.map((n) => (n === 4 ? { status: 'rejected', reason: new Error('four failed') } : { status: 'fulfilled', value: `done ${n}` }));
      },
    };
    const results = await Promise.allSettled([1, 2, 3, 4, 5].map((n) => inGroup(g, n)));
    // All five queue before the first turn: 1-3 run together, then 4-5.
    expect(groups).toEqual([
      [1, 2, 3],
      [4, 5],
    ]);
    expect(results.map((r) => (r.status === 'fulfilled' ? r.value : String(r.reason)))).toEqual(['done 1', 'done 2', 'done 3', 'Error: four failed', 'done 5']);
  });

  it("a call its group settles early returns at once; the group's first caller, whose run it is, waits for the group", async () => {
    let release = (): void => undefined;
    const slow = new Promise<void>((r) => (release = r));
    let running = true;
    const g: Group<string, string> = {
      lock: 'lock-c',
      queue: 'q',
      max: 5,
      run: async (items, settle) => {
        settle(1, { status: 'fulfilled', value: `early ${items[1]}` });
        await slow;
        running = false;
        return items.map((i) => ({ status: 'fulfilled', value: `late ${i}` }));
      },
    };
    const first = inGroup(g, 'x');
    const second = inGroup(g, 'y');
    expect(await second).toBe('early y');
    expect(running).toBe(true);
    release();
    expect(await first).toBe('late x');
    expect(running).toBe(false);
  });

  it('refuses a group size below 1, and keeps queues of the same name under different locks apart', async () => {
    const groups: string[][] = [];
    const g = (lock: string, max = 4): Group<string, string> => ({
      lock,
      queue: 'same-name',
      max,
      run: async (items) => {
        groups.push(items);
        return items.map((i) => ({ status: 'fulfilled', value: i }));
      },
    });
    await expect(inGroup(g('lock-d', 0), 'x')).rejects.toThrow(/positive integer/);
    await Promise.all([inGroup(g('lock-d'), 'd1'), inGroup(g('lock-e'), 'e1'), inGroup(g('lock-d'), 'd2'), inGroup(g('lock-e'), 'e2')]);
    expect(groups.map((x) => x.join(',')).sort()).toEqual(['d1,d2', 'e1,e2']);
  });

  it("a run that throws fails its own group only; other queues under the same lock wait their turn and aren't mixed in", async () => {
    const events: string[] = [];
    const group = (queue: string, fail: boolean): Group<string, string> => ({
      lock: 'lock-b',
      queue,
      max: 10,
      run: async (items) => {
        events.push(`${queue} start ${items.join(',')}`);
        await tick();
        events.push(`${queue} end`);
        if (fail) throw new Error(`${queue} broke`);
        return items.map((i) => ({ status: 'fulfilled', value: i }));
      },
    });
    const results = await Promise.allSettled([
      inGroup(group('adds', true), 'a1'),
      inGroup(group('dels', false), 'd1'),
      inGroup(group('adds', true), 'a2'),
      inGroup(group('dels', false), 'd2'),
    ]);
    expect(events).toEqual(['adds start a1,a2', 'adds end', 'dels start d1,d2', 'dels end']);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled', 'rejected', 'fulfilled']);
    // A later call on the same queue starts a new group.
    expect(await inGroup(group('dels', false), 'd3')).toBe('d3');
  });
});

describe('IPAM ADD and DEL of one host in one process (the node agent)', () => {
  function call(store: MemoryStore, containerId: string, command: 'ADD' | 'DEL', lines: string[]): IpamCall {
    const env = readCniEnv({ CNI_COMMAND: command, CNI_CONTAINERID: containerId, CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' });
    const conf = parseNetConf(JSON.stringify({ cniVersion: '1.0.0', name: 'net1', type: 'calico', ipam: { type: 'calico-ipam' } }));
    // Debug, so that a conflict retried ("conflict, retrying") or a group that failed would be seen.
    const log = createLogger({ component: 'test', level: 'debug', stderr: (l) => lines.push(l) });
    return { env, conf, version: '1.0.0', log, store, node: 'agent-host' };
  }

  it('twenty concurrent ADDs queue for the host and are served in groups: all distinct, no conflicting transaction, a fraction of the round trips', async () => {
    const store = new MemoryStore({ interleave: 5 });
    await addPool(store, { cidr: '10.77.0.0/24' });
    const lines: string[] = [];
    const ids = Array.from({ length: 20 }, (_, i) => `c${i}`);
    const before = store.roundTrips;
    const results = await Promise.all(ids.map((id) => ipamAdd(call(store, id, 'ADD', lines))));
    const ips = results.map((r) => r.ips?.[0]?.address);
    expect(new Set(ips).size).toBe(20);
    expect(lines.filter((l) => l.includes('conflict, retrying') || l.includes('together failed'))).toEqual([]);
    // All twenty queue before the first turn: a group of 16, then one of 4. In the first, a read finds no
    // block, the first call claims one alone (5 round trips) and the other 15 fill it in one snapshot, one
    // block read and one transaction. One by one they would take 5 + 19 x 3 = 62.
    expect(store.roundTrips - before).toBeLessThanOrEqual(14);
    expect(lines.filter((l) => l.includes(' assigned ')).map((l) => /together=(\d+)/.exec(l)?.[1] ?? '1').sort()).toEqual(
      ['1', ...Array<string>(15).fill('15'), ...Array<string>(4).fill('4')].sort(),
    );
    for (const id of ids) expect(store.snapshot().has(keys.handle(`net1.${id}`))).toBe(true);
    expect(checkIpamInvariants(store.snapshot())).toEqual([]);

    const beforeDel = store.roundTrips;
    await Promise.all(ids.map((id) => ipamDel(call(store, id, 'DEL', lines))));
    // 16 together, then 4: 3 round trips each (read the handles, read their blocks, one transaction).
    expect(store.roundTrips - beforeDel).toBe(6);
    const released = lines.filter((l) => l.includes(' released ')).flatMap((l) => JSON.parse(/ips=(\[[^\]]*\])/.exec(l)?.[1] ?? '[]') as string[]);
    expect(released.sort()).toEqual(ips.map((a) => a?.split('/')[0]).sort());
    expect(store.snapshot(keys.handlePrefix).size).toBe(0);
    expect(checkIpamInvariants(store.snapshot())).toEqual([]);
  });

  it('calls of one node on two different datastores are never grouped: each store holds only its own calls', async () => {
    const a = new MemoryStore({ interleave: 3 });
    const b = new MemoryStore({ interleave: 3 });
    for (const st of [a, b]) await addPool(st, { cidr: '10.78.0.0/24' });
    const lines: string[] = [];
    await Promise.all([
      ...['a1', 'a2', 'a3'].map((id) => ipamAdd(call(a, id, 'ADD', lines))),
      ...['b1', 'b2', 'b3'].map((id) => ipamAdd(call(b, id, 'ADD', lines))),
    ]);
    expect([...a.snapshot(keys.handlePrefix).keys()].sort()).toEqual(['a1', 'a2', 'a3'].map((id) => keys.handle(`net1.${id}`)));
    expect([...b.snapshot(keys.handlePrefix).keys()].sort()).toEqual(['b1', 'b2', 'b3'].map((id) => keys.handle(`net1.${id}`)));
    for (const st of [a, b]) expect(checkIpamInvariants(st.snapshot())).toEqual([]);
  });
});

describe('limiter', () => {
  it('runs at most n at once, starts the waiting ones in the order they came, and frees a slot on failure', async () => {
    const limit = limiter(2);
    let running = 0;
    let most = 0;
    const started: string[] = [];
    const job = (name: string, fail = false) => async () => {
      started.push(name);
      most = Math.max(most, ++running);
      await tick();
      await tick();
      running--;
      if (fail) throw new Error(`${name} failed`);
      return name;
    };
    const results = await Promise.allSettled(['a', 'b', 'c', 'd', 'e'].map((n) => limit(job(n, n === 'a'))));
    expect(most).toBe(2);
    expect(started).toEqual(['a', 'b', 'c', 'd', 'e']);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled', 'fulfilled', 'fulfilled', 'fulfilled']);
  });

  it('refuses a limit that is not a positive integer', () => {
    expect(() => limiter(0)).toThrow(/positive integer/);
  });
});
