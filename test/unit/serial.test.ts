import { describe, expect, it } from 'vitest';
import { serially } from '../../shared/sync/serial';
import { limiter } from '../../shared/sync/limit';
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

describe('IPAM ADD and DEL of one host in one process (the node agent)', () => {
  function call(store: MemoryStore, containerId: string, command: 'ADD' | 'DEL', lines: string[]): IpamCall {
    const env = readCniEnv({ CNI_COMMAND: command, CNI_CONTAINERID: containerId, CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' });
    const conf = parseNetConf(JSON.stringify({ cniVersion: '1.0.0', name: 'net1', type: 'calico', ipam: { type: 'calico-ipam' } }));
    const log = createLogger({ component: 'test', level: 'info', stderr: (l) => lines.push(l) });
    return { env, conf, version: '1.0.0', log, store, node: 'agent-host' };
  }

  it('twenty concurrent ADDs each take one attempt (no conflicting transactions), all distinct; their DELs free everything', async () => {
    const store = new MemoryStore({ interleave: 5 });
    await addPool(store, { cidr: '10.77.0.0/24' });
    const lines: string[] = [];
    const ids = Array.from({ length: 20 }, (_, i) => `c${i}`);
    const results = await Promise.all(ids.map((id) => ipamAdd(call(store, id, 'ADD', lines))));
    const ips = results.map((r) => r.ips?.[0]?.address);
    expect(new Set(ips).size).toBe(20);
    const attempts = lines.filter((l) => l.includes(' assigned ')).map((l) => /attempts=(\d+)/.exec(l)?.[1]);
    expect(attempts).toEqual(ids.map(() => '1'));
    await Promise.all(ids.map((id) => ipamDel(call(store, id, 'DEL', lines))));
    expect(store.snapshot(keys.handlePrefix).size).toBe(0);
    expect(checkIpamInvariants(store.snapshot())).toEqual([]);
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
