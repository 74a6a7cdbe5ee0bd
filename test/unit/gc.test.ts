import { describe, expect, it } from 'vitest';
import { keys } from '../../shared/calico/keys';
import { encodeAffinity, resource, newMetadata } from '../../shared/calico/model';
import { Allocator } from '../../shared/ipam/allocator';
import { collectGarbage, parseGoTimestamp, PENDING_SETTLE_MS } from '../../shared/ipam/gc';
import { addPool } from '../../shared/ipam/pools';
import { goTimestamp } from '../../shared/ipam/cni-ipam';
import { MemoryStore } from '../../shared/store/memory';

const NODE = 'node-a';

async function setup(now: number) {
  const store = new MemoryStore();
  await addPool(store, { cidr: '10.50.0.0/16' });
  const alloc = new Allocator({ store, node: NODE, now: () => now });
  const assign = (handleId: string, at = now) =>
    alloc.assign({ handleId, attrs: { node: NODE, timestamp: goTimestamp(new Date(at)) }, families: [{ family: 4 }] });
  return { store, assign };
}

function endpoint(containerID: string, interfaceName: string): string {
  return resource('WorkloadEndpoint', newMetadata(`${NODE}-cni-${containerID}-eth0`, { namespace: 'default' }), {
    orchestrator: 'cni',
    node: NODE,
    containerID,
    endpoint: 'eth0',
    interfaceName,
  });
}

describe('node-local garbage collection', () => {
  const now = Date.parse('2026-01-01T12:00:00Z');
  const noVeths = { vethOwner: () => undefined, liveVethContainers: new Set<string>() };

  it('parses the timestamps upstream stores (Go time.String in UTC)', () => {
    expect(parseGoTimestamp('2026-01-01 11:59:00.123456789 +0000 UTC')).toBe(Date.parse('2026-01-01T11:59:00.123Z'));
    expect(parseGoTimestamp(goTimestamp(new Date(now)))).toBe(now);
  });

  it('releases an allocation whose container has neither endpoint nor veth, after the grace period only', async () => {
    const { store, assign } = await setup(now);
    await assign('net.gone1', now - 10 * 60_000);
    await assign('net.fresh', now - 5_000);
    const dry = await collectGarbage(store, { node: NODE, graceMs: 60_000, dryRun: true, now, ...noVeths });
    expect(dry.map((a) => `${a.kind} ${a.target}`)).toEqual(['release-handle net.gone1']);
    expect(store.snapshot(keys.handle('net.gone1')).size).toBe(1);
    await collectGarbage(store, { node: NODE, graceMs: 60_000, dryRun: false, now, ...noVeths });
    expect(store.snapshot(keys.handle('net.gone1')).size).toBe(0);
    expect(store.snapshot(keys.handle('net.fresh')).size).toBe(1);
  });

  it('keeps allocations whose container has a live endpoint or a host veth naming it', async () => {
    const { store, assign } = await setup(now);
    const old = now - 10 * 60_000;
    await assign('net.withwep', old);
    await assign('net.withveth', old);
    store.seed(keys.workloadEndpoint('default', `${NODE}-cni-withwep-eth0`), endpoint('withwep', 'caliwithwep'));
    const owners = new Map([['caliwithwep', 'withwep'], ['caliwithveth', 'withveth']]);
    const actions = await collectGarbage(store, {
      node: NODE,
      graceMs: 0,
      dryRun: false,
      now,
      vethOwner: (n) => owners.get(n),
      liveVethContainers: new Set(owners.values()),
    });
    expect(actions).toEqual([]);
    expect(store.snapshot(keys.handlePrefix).size).toBe(2);
  });

  it('removes an endpoint whose host veth is gone, and then its addresses', async () => {
    const { store, assign } = await setup(now);
    await assign('net.orphan', now - 10 * 60_000);
    const wepKey = keys.workloadEndpoint('default', `${NODE}-cni-orphan-eth0`);
    store.seed(wepKey, endpoint('orphan', 'caliorphan').replace(/"creationTimestamp":"[^"]+"/, '"creationTimestamp":"2025-12-31T00:00:00Z"'));
    const actions = await collectGarbage(store, { node: NODE, graceMs: 60_000, dryRun: false, now, ...noVeths });
    expect(actions.map((a) => a.kind).sort()).toEqual(['release-handle', 'remove-endpoint']);
    expect(store.snapshot(wepKey).size).toBe(0);
    expect(store.snapshot(keys.handlePrefix).size).toBe(0);
  });

  it('removes a pending affinity whose claim never completed, once older than the grace', async () => {
    const { store } = await setup(now);
    const stuck = keys.hostAffinity(NODE, 4, '10.50.7.0/26');
    const live = keys.hostAffinity(NODE, 4, '10.50.8.0/26');
    store.seed(stuck, encodeAffinity('pending', now - 10 * 60_000));
    store.seed(live, encodeAffinity('pending', now - 1_000));
    const actions = await collectGarbage(store, { node: NODE, graceMs: 60_000, dryRun: false, now, ...noVeths });
    expect(actions.map((a) => a.target)).toEqual([stuck]);
    expect(store.snapshot(stuck).size).toBe(0);
    expect(store.snapshot(live).size).toBe(1);
  });

  it('a pending affinity whose block went to another host is removed; one whose block is ours is confirmed', async () => {
    const { store } = await setup(now);
    const other = new Allocator({ store, node: 'node-b', now: () => now });
    const theirs = await other.assign({ handleId: 'net.b1', attrs: { node: 'node-b', timestamp: goTimestamp(new Date(now)) }, families: [{ family: 4 }] });
    const theirBlock = theirs.allocations[0]?.blockCidr as string;
    const mine = new Allocator({ store, node: NODE, now: () => now });
    const ours = await mine.assign({ handleId: 'net.a1', attrs: { node: NODE, timestamp: goTimestamp(new Date(now)) }, families: [{ family: 4 }] });
    const ourBlock = ours.allocations[0]?.blockCidr as string;
    const lost = keys.hostAffinity(NODE, 4, theirBlock);
    const unconfirmed = keys.hostAffinity(NODE, 4, ourBlock);
    store.seed(lost, encodeAffinity('pending', now - 10 * 60_000));
    store.seed(unconfirmed, encodeAffinity('pending', now - 10 * 60_000));

    const dry = await collectGarbage(store, { node: NODE, graceMs: 60_000, dryRun: true, now, ...noVeths });
    expect(dry.map((a) => `${a.kind} ${a.target}`).sort()).toEqual([`confirm-affinity ${unconfirmed}`, `remove-pending-affinity ${lost}`].sort());
    expect(dry.find((a) => a.target === lost)?.detail).toContain('host:node-b');
    await collectGarbage(store, { node: NODE, graceMs: 60_000, dryRun: false, now, ...noVeths });
    expect(store.snapshot(lost).size).toBe(0);
    expect(JSON.parse(store.snapshot(unconfirmed).get(unconfirmed) as string)).toMatchObject({ state: 'confirmed' });
    expect(store.snapshot(keys.hostAffinity('node-b', 4, theirBlock)).size).toBe(1);
  });

  it("a pending affinity without a claim time (upstream writes none) counts as stale only if it is unchanged after a wait", async () => {
    const { store } = await setup(now);
    const settled = keys.hostAffinity(NODE, 4, '10.50.9.0/26');
    const moving = keys.hostAffinity(NODE, 4, '10.50.10.0/26');
    store.seed(settled, JSON.stringify({ state: 'pending', deleted: false }));
    store.seed(moving, JSON.stringify({ state: 'pending', deleted: false }));
    const waits: number[] = [];
    // During the wait, the claim of `moving` goes on (upstream confirms it after writing its block).
    const sleep = async (ms: number) => {
      waits.push(ms);
      store.seed(moving, JSON.stringify({ state: 'confirmed', deleted: false }));
    };
    const actions = await collectGarbage(store, { node: NODE, graceMs: 300_000, dryRun: false, now, sleep, ...noVeths });
    expect(waits).toEqual([PENDING_SETTLE_MS]);
    expect(actions.map((a) => `${a.kind} ${a.target}`)).toEqual([`remove-pending-affinity ${settled}`]);
    expect(store.snapshot(settled).size).toBe(0);
    expect(JSON.parse(store.snapshot(moving).get(moving) as string)).toMatchObject({ state: 'confirmed' });

    // With --grace 0 there is no wait.
    store.seed(settled, JSON.stringify({ state: 'pending', deleted: false }));
    const again = await collectGarbage(store, { node: NODE, graceMs: 0, dryRun: false, now, sleep, ...noVeths });
    expect(waits).toHaveLength(1);
    expect(again.map((a) => a.target)).toEqual([settled]);
  });

  it('never touches another node', async () => {
    const { store, assign } = await setup(now);
    await assign('net.mine', now - 10 * 60_000);
    const actions = await collectGarbage(store, { node: 'node-b', graceMs: 0, dryRun: false, now, ...noVeths });
    expect(actions).toEqual([]);
    expect(store.snapshot(keys.handlePrefix).size).toBe(1);
  });
});
