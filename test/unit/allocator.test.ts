import { describe, expect, it } from 'vitest';
import { Allocator, type AssignRequest, type FamilyRequest } from '../../shared/ipam/allocator';
import { MemoryStore } from '../../shared/store/memory';
import { addPool, type PoolSpecInput } from '../../shared/ipam/pools';
import { keys } from '../../shared/calico/keys';
import { decodeBlock, encodeAffinity, encodeBlock, resource, newMetadata, type Block } from '../../shared/calico/model';
import { newBlock } from '../../shared/ipam/block';
import { parseCidr, parseIp, cidrContains } from '../../shared/ipam/cidr';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { checkIpamInvariants } from '../helpers/ipam-invariants';

const T0 = 1_700_000_000_000;

interface Clock {
  t: number;
}

async function storeWith(pools: PoolSpecInput[], config?: Record<string, unknown>): Promise<MemoryStore> {
  const store = new MemoryStore();
  for (const p of pools) await addPool(store, p);
  // As calicoctl and `calico-ipam config` write it: a stored config without auto_allocate_blocks reads as
  // false in upstream's Go model, so the field is always present.
  if (config) store.seed(keys.ipamConfig, JSON.stringify({ auto_allocate_blocks: true, ...config }));
  return store;
}

function allocator(store: MemoryStore, node = 'node1', clock?: Clock): Allocator {
  return new Allocator({ store, node, ...(clock ? { now: () => clock.t } : {}) });
}

function req(handleId: string, families: FamilyRequest[] = [{ family: 4 }], ips?: string[]): AssignRequest {
  return { handleId, attrs: { node: 'node1', timestamp: '2024-01-01 00:00:00 +0000 UTC' }, families, ...(ips ? { ips } : {}) };
}

async function failure(p: Promise<unknown>): Promise<CniError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof CniError) return e;
    throw e;
  }
  throw new Error('expected a CniError, the call succeeded');
}

function blockAt(store: MemoryStore, cidr: string): Block {
  const c = parseCidr(cidr);
  const text = c && store.snapshot().get(keys.block(c.family, cidr));
  if (!text) throw new Error(`no block ${cidr}`);
  return decodeBlock(text);
}

function allocatedCount(store: MemoryStore): number {
  let n = 0;
  for (const [k, v] of store.snapshot('/calico/ipam/v2/assignment/')) {
    if (k.includes('/block/')) n += decodeBlock(v).allocations.filter((a) => a !== null).length;
  }
  return n;
}

function expectConsistent(store: MemoryStore): void {
  expect(checkIpamInvariants(store.snapshot())).toEqual([]);
}

describe('Allocator: automatic assignment', () => {
  it('hands out the base address of a newly claimed block first, and records block, affinity and handle as upstream', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24', blockSize: 26 }]);
    const out = await allocator(store).assign(req('net1.c1'));
    expect(out.existing).toBe(false);
    expect(out.allocations).toHaveLength(1);
    const a = out.allocations[0];
    if (!a) throw new Error('no allocation');
    expect(a.family).toBe(4);
    expect(a.blockCidr).toMatch(/^10\.0\.0\.(0|64|128|192)\/26$/);
    expect(a.ip).toBe(a.blockCidr.split('/')[0]);
    expect(a.address).toBe(`${a.ip}/26`);

    const snap = store.snapshot();
    const b = blockAt(store, a.blockCidr);
    expect(b.affinity).toBe('host:node1');
    expect(b.allocations[0]).toBe(0);
    expect(b.unallocated).toEqual(Array.from({ length: 63 }, (_, i) => i + 1));
    expect(b.attributes).toEqual([{ handle_id: 'net1.c1', secondary: { node: 'node1', timestamp: '2024-01-01 00:00:00 +0000 UTC' } }]);
    expect(snap.get(keys.hostAffinity('node1', 4, a.blockCidr))).toBe('{"state":"confirmed","deleted":false}');
    expect(snap.get(keys.handle('net1.c1'))).toBe(`{"block":{"${a.blockCidr}":1},"deleted":false}`);
    expectConsistent(store);
  });

  it('reuses released addresses in FIFO order: a released ordinal goes to the tail', async () => {
    const clock = { t: T0 };
    const store = await storeWith([{ cidr: '10.1.0.0/30', blockSize: 30 }], { ipCooldownSeconds: 0 });
    const al = allocator(store, 'node1', clock);
    const ip = async (h: string) => (await al.assign(req(h))).allocations[0]?.ip;
    expect(await ip('a')).toBe('10.1.0.0');
    expect(await ip('b')).toBe('10.1.0.1');
    expect(await ip('c')).toBe('10.1.0.2');
    await al.releaseHandle('a');
    await al.releaseHandle('c');
    expect(blockAt(store, '10.1.0.0/30').unallocated).toEqual([3, 0, 2]);
    expect(await ip('d')).toBe('10.1.0.3');
    expect(await ip('e')).toBe('10.1.0.0');
    expect(await ip('f')).toBe('10.1.0.2');
    expectConsistent(store);
  });

  it('a repeated assign for the same handle returns what it holds and allocates nothing', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24' }]);
    const al = allocator(store);
    const first = await al.assign(req('net1.c1'));
    const before = store.snapshot();
    const again = await allocator(store).assign(req('net1.c1'));
    expect(again.existing).toBe(true);
    expect(again.allocations).toEqual(first.allocations);
    expect(store.snapshot()).toEqual(before);
    expect(allocatedCount(store)).toBe(1);
  });

  it('releaseHandles frees several handles (one absent, two sharing a block) in 3 round trips and one transaction', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24' }]);
    const al = allocator(store);
    const a = await al.assign(req('net1.c1'));
    const b = await al.assign(req('c1-legacy'));
    const keep = await al.assign(req('net1.other'));
    expect(a.allocations[0]?.blockCidr).toBe(b.allocations[0]?.blockCidr);
    const trips = store.roundTrips;
    const released = await al.releaseHandles(['net1.c1', 'absent', 'c1-legacy']);
    expect(store.roundTrips - trips).toBe(3);
    expect(released.map((x) => x.ip).sort()).toEqual([a.allocations[0]?.ip, b.allocations[0]?.ip].sort());
    expect(store.snapshot().has(keys.handle('net1.c1'))).toBe(false);
    expect(store.snapshot().has(keys.handle('c1-legacy'))).toBe(false);
    expect(store.snapshot().has(keys.handle('net1.other'))).toBe(true);
    expect(allocatedCount(store)).toBe(1);
    expect(blockAt(store, keep.allocations[0]?.blockCidr ?? '').attributes?.map((x) => x.handle_id)).toEqual(['net1.other']);
    expect(await al.releaseHandles(['net1.c1', 'c1-legacy'])).toEqual([]);
    expectConsistent(store);
  });

  it('releaseHandles takes the handles and blocks the caller read along, and reads afresh what changed since', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24' }]);
    const al = allocator(store);
    const readAlong = async (ids: string[], blocks: string[] = []) => {
      const wanted = [...ids.map((id) => keys.handle(id)), ...blocks.map((b) => keys.block(4, b))];
      const res = await store.read(wanted.map((key) => ({ key })));
      return new Map(wanted.map((key, i) => [key, res[i]?.[0]]));
    };
    const a = await al.assign(req('net1.c1'));
    const block = a.allocations[0]?.blockCidr ?? '';
    // The handles alone: the block is read, then the transaction.
    const known = await readAlong(['net1.c1', 'absent']);
    let trips = store.roundTrips;
    expect((await al.releaseHandles(['net1.c1', 'absent'], known)).map((x) => x.ip)).toEqual([a.allocations[0]?.ip]);
    expect(store.roundTrips - trips).toBe(2);
    expect(store.snapshot().has(keys.handle('net1.c1'))).toBe(false);
    expect(allocatedCount(store)).toBe(0);

    // The handles and their block: the transaction alone.
    const b = await al.assign(req('net1.b'));
    const all = await readAlong(['net1.b'], [b.allocations[0]?.blockCidr ?? '']);
    trips = store.roundTrips;
    expect((await al.releaseHandles(['net1.b'], all)).map((x) => x.ip)).toEqual([b.allocations[0]?.ip]);
    expect(store.roundTrips - trips).toBe(1);
    expect(allocatedCount(store)).toBe(0);

    // Read along, then the handle and its block changed (its address released, another assigned under
    // it): the guarded transaction fails, and the retry reads them as they are now.
    await al.assign(req('net1.c2'));
    const stale = await readAlong(['net1.c2'], [block]);
    await al.releaseHandles(['net1.c2']);
    const again = await al.assign(req('net1.c2'));
    trips = store.roundTrips;
    expect((await al.releaseHandles(['net1.c2'], stale)).map((x) => x.ip)).toEqual([again.allocations[0]?.ip]);
    expect(store.roundTrips - trips).toBe(1 + 3);
    expect(allocatedCount(store)).toBe(0);

    // Read along as absent, then created (a legacy-form handle, say): the release guards its absence too,
    // so it fails and the retry frees what the handle holds now.
    const held = await al.assign(req('net1.c3'));
    const absent = await readAlong(['net1.c3', 'legacy-c3']);
    const late = await al.assign(req('legacy-c3'));
    expect((await al.releaseHandles(['net1.c3', 'legacy-c3'], absent)).map((x) => x.ip).sort()).toEqual([held.allocations[0]?.ip, late.allocations[0]?.ip].sort());
    // Known to hold nothing at all is not taken on trust: the handles are read again.
    const none = await readAlong(['net1.c4']);
    const c4 = await al.assign(req('net1.c4'));
    expect((await al.releaseHandles(['net1.c4'], none)).map((x) => x.ip)).toEqual([c4.allocations[0]?.ip]);
    expect(allocatedCount(store)).toBe(0);
    expectConsistent(store);
  });

  it('releaseHandle frees the addresses and deletes the handle; a second release is a no-op', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24' }, { cidr: 'fd00:1::/120' }]);
    const al = allocator(store);
    const got = await al.assign(req('net1.c1', [{ family: 4 }, { family: 6 }]));
    expect(got.allocations.map((a) => a.family)).toEqual([4, 6]);
    const handle = JSON.parse(store.snapshot().get(keys.handle('net1.c1')) ?? '{}') as { block: Record<string, number> };
    expect(handle.block).toEqual({ [got.allocations[0]?.blockCidr ?? '']: 1, [got.allocations[1]?.blockCidr ?? '']: 1 });

    const released = await al.releaseHandle('net1.c1');
    expect(released.map((a) => a.ip).sort()).toEqual(got.allocations.map((a) => a.ip).sort());
    expect(store.snapshot().has(keys.handle('net1.c1'))).toBe(false);
    expect(allocatedCount(store)).toBe(0);
    // Empty blocks stay affine to the host (upstream: only the IPAM GC releases affinities).
    for (const a of got.allocations) {
      expect(blockAt(store, a.blockCidr).affinity).toBe('host:node1');
      expect(blockAt(store, a.blockCidr).unallocated).toHaveLength(a.family === 4 ? 64 : 64);
    }
    const after = store.snapshot();
    expect(await al.releaseHandle('net1.c1')).toEqual([]);
    expect(store.snapshot()).toEqual(after);
    expect(await al.releaseHandle('never-existed')).toEqual([]);
    expectConsistent(store);
  });

  it('creates the Calico Node resource when it is missing, and leaves an existing one alone', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24' }]);
    expect(store.snapshot().has(keys.node('node1'))).toBe(false);
    await allocator(store).assign(req('h1'));
    const node = JSON.parse(store.snapshot().get(keys.node('node1')) ?? 'null') as { kind: string; apiVersion: string; metadata: { name: string; uid?: string } };
    expect(node.kind).toBe('Node');
    expect(node.apiVersion).toBe('projectcalico.org/v3');
    expect(node.metadata.name).toBe('node1');
    expect(node.metadata.uid).toMatch(/^[0-9a-f-]{36}$/);

    const existing = resource('Node', newMetadata('node2', { labels: { zone: 'a' } }), { bgp: { ipv4Address: '10.9.9.9/24' } });
    store.seed(keys.node('node2'), existing);
    await allocator(store, 'node2').assign(req('h2'));
    expect(store.snapshot().get(keys.node('node2'))).toBe(existing);
  });

  it("uses only pools whose nodeSelector matches the node's labels", async () => {
    const store = await storeWith([
      { cidr: '10.10.0.0/24', name: 'zone-a', nodeSelector: "zone == 'a'" },
      { cidr: '10.20.0.0/24', name: 'zone-b', nodeSelector: "zone == 'b'" },
    ]);
    store.seed(keys.node('na'), resource('Node', newMetadata('na', { labels: { zone: 'a' } }), {}));
    store.seed(keys.node('nb'), resource('Node', newMetadata('nb', { labels: { zone: 'b' } }), {}));
    for (let i = 0; i < 5; i++) {
      expect((await allocator(store, 'na').assign(req(`a${i}`))).allocations[0]?.ip).toMatch(/^10\.10\.0\./);
      expect((await allocator(store, 'nb').assign(req(`b${i}`))).allocations[0]?.ip).toMatch(/^10\.20\.0\./);
    }
    const e = await failure(allocator(store, 'nolabels').assign(req('x')));
    expect(e.code).toBe(ErrorCode.InvalidConfig);
    expect(e.message).toMatch(/no enabled IPv4 pool selects node nolabels/);
  });
});

describe('Allocator: requested pools', () => {
  const pools = [
    { cidr: '10.10.0.0/24', name: 'pool-a' },
    { cidr: '10.20.0.0/24', name: 'pool-b' },
    { cidr: '10.30.0.0/24', name: 'pool-off', disabled: true },
  ];

  it('by name and by CIDR', async () => {
    const store = await storeWith(pools);
    const al = allocator(store);
    for (let i = 0; i < 3; i++) {
      expect((await al.assign(req(`b${i}`, [{ family: 4, pools: ['pool-b'] }]))).allocations[0]?.ip).toMatch(/^10\.20\.0\./);
      expect((await al.assign(req(`a${i}`, [{ family: 4, pools: ['10.10.0.0/24'] }]))).allocations[0]?.ip).toMatch(/^10\.10\.0\./);
    }
  });

  it('a missing or disabled pool is code 7 "does not exist, or is not enabled" and allocates nothing', async () => {
    const store = await storeWith(pools);
    for (const want of ['nope', '10.99.0.0/24', 'pool-off', '10.30.0.0/24']) {
      const e = await failure(allocator(store).assign(req(`h-${want}`, [{ family: 4, pools: [want] }])));
      expect(e.code, want).toBe(ErrorCode.InvalidConfig);
      expect(e.message).toContain('does not exist, or is not enabled');
      expect(e.message).toContain(want);
    }
    expect(allocatedCount(store)).toBe(0);
    expect(store.snapshot(keys.handlePrefix).size).toBe(0);
  });

  it('an IPv6 pool listed for IPv4 is refused', async () => {
    const store = await storeWith([...pools, { cidr: 'fd00:5::/120', name: 'v6' }]);
    const e = await failure(allocator(store).assign(req('h', [{ family: 4, pools: ['fd00:5::/120'] }])));
    expect(e.code).toBe(ErrorCode.InvalidConfig);
  });

  it('a disabled pool is never used for automatic assignment', async () => {
    const store = await storeWith([
      { cidr: '10.30.0.0/24', name: 'pool-off', disabled: true },
      { cidr: '10.40.0.0/25', name: 'pool-on', blockSize: 27 },
    ]);
    const al = allocator(store);
    // More than one block's worth, so new blocks are claimed along the way.
    for (let i = 0; i < 100; i++) {
      const ip = (await al.assign(req(`h${i}`))).allocations[0]?.ip ?? '';
      expect(ip).toMatch(/^10\.40\.0\./);
    }
    expect([...store.snapshot('/calico/ipam/v2/assignment/').keys()].every((k) => k.includes('/10.40.0.'))).toBe(true);

    const onlyOff = await storeWith([{ cidr: '10.30.0.0/24', name: 'pool-off', disabled: true }]);
    const e = await failure(allocator(onlyOff).assign(req('x')));
    expect(e.code).toBe(ErrorCode.InvalidConfig);
    expect(onlyOff.snapshot('/calico/ipam/').size).toBe(0);
  });
});

describe('Allocator: limits and affinity', () => {
  it('maxBlocksPerHost in /calico/ipam/v2/config stops new block claims (code 113)', async () => {
    const store = await storeWith([{ cidr: '10.50.0.0/28', blockSize: 30 }], { maxBlocksPerHost: 1, strict_affinity: true });
    const al = allocator(store);
    for (let i = 0; i < 4; i++) await al.assign(req(`h${i}`));
    const e = await failure(al.assign(req('h4')));
    expect(e.code).toBe(ErrorCode.BlockLimit);
    expect(e.message).toMatch(/per host block limit/);
    const claimed = [...store.snapshot('/calico/ipam/v2/assignment/').keys()];
    expect(claimed).toHaveLength(1);
    // An exact address in a block not yet claimed is refused for the same reason.
    const blockBase = claimed[0]?.split('/').pop()?.split('-')[0] ?? '';
    const other = ['10.50.0.0', '10.50.0.4', '10.50.0.8', '10.50.0.12'].find((b) => b !== blockBase) ?? '';
    const e2 = await failure(al.assign(req('h5', [{ family: 4 }], [other])));
    expect(e2.code).toBe(ErrorCode.BlockLimit);
    expect(store.snapshot(keys.handlePrefix).size).toBe(4);
    expectConsistent(store);
  });

  it('strict affinity refuses to borrow from another host (code 110)', async () => {
    const store = await storeWith([{ cidr: '10.60.0.0/29', blockSize: 30 }], { strict_affinity: true });
    for (let i = 0; i < 3; i++) await allocator(store, 'hostA').assign(req(`a${i}`));
    for (let i = 0; i < 4; i++) await allocator(store, 'hostB').assign(req(`b${i}`));
    // hostA still has one free address; hostB's block is full and no block is left to claim.
    const e = await failure(allocator(store, 'hostB').assign(req('b4')));
    expect(e.code).toBe(ErrorCode.PoolExhausted);
    expect(e.message).toMatch(/strict affinity/);
    expect((await allocator(store, 'hostA').assign(req('a3'))).allocations).toHaveLength(1);
    const e2 = await failure(allocator(store, 'hostC').assign(req('c0')));
    expect(e2.code).toBe(ErrorCode.PoolExhausted);
    expectConsistent(store);
  });

  it("borrows from another host's block when affinity is not strict, without taking the block over", async () => {
    const store = await storeWith([{ cidr: '10.70.0.0/30', blockSize: 30 }]);
    await allocator(store, 'hostA').assign(req('a0'));
    await allocator(store, 'hostA').assign(req('a1'));
    const got = await allocator(store, 'hostB').assign(req('b0'));
    const a = got.allocations[0];
    expect(a?.blockCidr).toBe('10.70.0.0/30');
    expect(a?.ip).toBe('10.70.0.2');
    expect(blockAt(store, '10.70.0.0/30').affinity).toBe('host:hostA');
    expect(store.snapshot('/calico/ipam/v2/host/hostB/').size).toBe(0);
    expect(store.snapshot().get(keys.handle('b0'))).toBe('{"block":{"10.70.0.0/30":1},"deleted":false}');
    expectConsistent(store);

    // Releasing the borrowed address leaves hostA's allocations and the block in place.
    await allocator(store, 'hostB').releaseHandle('b0');
    const b = blockAt(store, '10.70.0.0/30');
    expect(b.allocations.filter((x) => x !== null)).toHaveLength(2);
    expect(b.affinity).toBe('host:hostA');
    expectConsistent(store);

    // The pool runs dry: the error says so (code 110).
    await allocator(store, 'hostB').assign(req('b1'));
    await allocator(store, 'hostB').assign(req('b2'));
    const e = await failure(allocator(store, 'hostB').assign(req('b3')));
    expect(e.code).toBe(ErrorCode.PoolExhausted);
    expect(e.message).toMatch(/exhausted/);
  });

  it("a claim made by another process of this host after this one's snapshot is used, not doubled by a second block", async () => {
    // The interleaving CI once hit with two ADDs per node: B reads its snapshot (no affinity yet), then A
    // claims a block and allocates, then B looks for a free subnet. B must notice A's new affinity and take
    // an address from that block instead of claiming a second one for the same host.
    const store = await storeWith([{ cidr: '10.80.0.0/28', blockSize: 30 }, { cidr: 'fd00:80::/124', blockSize: 126 }]);
    // The node already has an IPv4 address, so its Node resource exists (a first ADD on a fresh node
    // creates it, and that write alone would make the two claims collide).
    await allocator(store, 'hostA').assign(req('v4'));
    const v6: FamilyRequest[] = [{ family: 6 }];
    const first = allocator(store, 'hostA');
    const second = allocator(store, 'hostA');
    const read = store.read.bind(store);
    let held = false;
    store.read = async (reads) => {
      const lookingForFreeSubnet = reads.some((r) => 'prefix' in r && r.prefix === keys.blockPrefix(6));
      if (lookingForFreeSubnet && !held) {
        held = true;
        await first.assign(req('a', v6));
      }
      return read(reads);
    };
    const b = await second.assign(req('b', v6));
    expect(held).toBe(true);
    const a = await allocator(store, 'hostA').addressesOf('a');
    expect(b.allocations[0]?.blockCidr).toBe(a[0]?.blockCidr);
    expect(store.snapshot(keys.blockPrefix(6)).size).toBe(1);
    expect(store.snapshot(keys.hostAffinityPrefix('hostA', 6)).size).toBe(1);
    expectConsistent(store);
  });

  it('dual stack with a missing IPv6 pool leaves nothing allocated (no handle, no allocations)', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24' }]);
    const e = await failure(allocator(store).assign(req('net1.c1', [{ family: 4 }, { family: 6 }])));
    expect(e.code).toBe(ErrorCode.InvalidConfig);
    expect(e.message).toMatch(/IPv6/);
    expect(store.snapshot().has(keys.handle('net1.c1'))).toBe(false);
    expect(allocatedCount(store)).toBe(0);
    expectConsistent(store);
  });

  it('dual stack with an exhausted IPv6 pool gives the IPv4 address back (code 110)', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24' }, { cidr: 'fd00:9::/127', blockSize: 127 }], { strict_affinity: true });
    await allocator(store).assign(req('h0', [{ family: 6 }]));
    await allocator(store).assign(req('h1', [{ family: 6 }]));
    const e = await failure(allocator(store).assign(req('h2', [{ family: 4 }, { family: 6 }])));
    expect(e.code).toBe(ErrorCode.PoolExhausted);
    expect(store.snapshot().has(keys.handle('h2'))).toBe(false);
    expect(allocatedCount(store)).toBe(2);
    expectConsistent(store);
  });
});

describe('Allocator: exact addresses', () => {
  it('assigns exactly the requested address, claiming its block for this host', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24', blockSize: 26 }, { cidr: 'fd00:7::/120' }]);
    const got = await allocator(store).assign(req('h1', [{ family: 4 }], ['10.0.0.77']));
    expect(got.allocations).toEqual([{ family: 4, ip: '10.0.0.77', blockCidr: '10.0.0.64/26', address: '10.0.0.77/26' }]);
    const b = blockAt(store, '10.0.0.64/26');
    expect(b.affinity).toBe('host:node1');
    expect(b.allocations[13]).toBe(0);
    expect(b.unallocated).not.toContain(13);
    expect(b.unallocated).toHaveLength(63);

    const v6 = await allocator(store).assign(req('h6', [{ family: 6 }], ['fd00:7::42']));
    expect(v6.allocations[0]?.ip).toBe('fd00:7::42');
    expect(v6.allocations[0]?.blockCidr).toBe('fd00:7::40/122');

    // Same handle again: what it holds, nothing new.
    const again = await allocator(store).assign(req('h1', [{ family: 4 }], ['10.0.0.77']));
    expect(again.existing).toBe(true);
    expectConsistent(store);
  });

  it('an address already in use is code 111; outside every enabled pool is code 112', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24' }, { cidr: '10.5.0.0/24', disabled: true }]);
    await allocator(store).assign(req('h1', [{ family: 4 }], ['10.0.0.5']));
    const inUse = await failure(allocator(store, 'node2').assign(req('h2', [{ family: 4 }], ['10.0.0.5'])));
    expect(inUse.code).toBe(ErrorCode.AddressInUse);
    expect(inUse.message).toContain('already in use');
    for (const ip of ['192.168.9.9', '10.5.0.9', 'fd00::1']) {
      const e = await failure(allocator(store).assign(req(`h-${ip}`, [{ family: 4 }], [ip])));
      expect(e.code, ip).toBe(ErrorCode.AddressNotInPool);
    }
    expect(store.snapshot(keys.handlePrefix).size).toBe(1);
    expectConsistent(store);
  });

  it("with strict affinity an address in another host's block is refused; without, it is taken from there", async () => {
    const strict = await storeWith([{ cidr: '10.0.0.0/24' }], { strict_affinity: true });
    await allocator(strict, 'hostA').assign(req('a', [{ family: 4 }], ['10.0.0.1']));
    expect((await failure(allocator(strict, 'hostB').assign(req('b', [{ family: 4 }], ['10.0.0.2'])))).code).toBe(ErrorCode.AddressInUse);

    const loose = await storeWith([{ cidr: '10.0.0.0/24' }]);
    await allocator(loose, 'hostA').assign(req('a', [{ family: 4 }], ['10.0.0.1']));
    const got = await allocator(loose, 'hostB').assign(req('b', [{ family: 4 }], ['10.0.0.2']));
    expect(got.allocations[0]?.ip).toBe('10.0.0.2');
    expect(blockAt(loose, '10.0.0.0/26').affinity).toBe('host:hostA');
    expectConsistent(loose);
  });

  it('ADD/DEL/ADD of the same exact address works', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24' }]);
    const al = allocator(store);
    await al.assign(req('h1', [{ family: 4 }], ['10.0.0.9']));
    await al.releaseHandle('h1');
    expect((await al.assign(req('h2', [{ family: 4 }], ['10.0.0.9']))).allocations[0]?.ip).toBe('10.0.0.9');
    expectConsistent(store);
  });
});

describe('Allocator: reuse cooldown', () => {
  it('a just-released address is not reused while another free one exists', async () => {
    const clock = { t: T0 };
    const store = await storeWith([{ cidr: '10.90.0.0/29', blockSize: 30 }]);
    const al = allocator(store, 'node1', clock);
    for (let i = 0; i < 4; i++) await al.assign(req(`h${i}`, [{ family: 4 }], [`10.90.0.${i}`]));
    await al.assign(req('h4', [{ family: 4 }], ['10.90.0.4']));
    // Block 10.90.0.0/30 (listed first) has one free address, released just now; 10.90.0.4/30 has rested ones.
    await al.releaseHandle('h1');
    clock.t += 1000;
    expect((await al.assign(req('h5'))).allocations[0]?.ip).toBe('10.90.0.5');
    // After the cooldown (default 5 s) the first block's address is used again.
    clock.t += 5000;
    expect((await al.assign(req('h6'))).allocations[0]?.ip).toBe('10.90.0.1');
    expectConsistent(store);
  });

  it('within one block the cooldown skips a warm ordinal at the head of the queue', async () => {
    const clock = { t: T0 };
    const store = await storeWith([{ cidr: '10.91.0.0/30', blockSize: 30 }]);
    const cidr = parseCidr('10.91.0.0/30');
    if (!cidr) throw new Error('parse');
    // A block whose free-queue head was released 0.5 s ago (e.g. a queue reordered by another writer).
    const seeded: Block = { ...newBlock(cidr, 'node1', T0 - 60_000), releaseTimes: { '0': T0 - 500 } };
    store.seed(keys.block(4, '10.91.0.0/30'), encodeBlock(seeded));
    store.seed(keys.hostAffinity('node1', 4, '10.91.0.0/30'), encodeAffinity('confirmed'));
    const al = allocator(store, 'node1', clock);
    expect((await al.assign(req('h1'))).allocations[0]?.ip).toBe('10.91.0.1');
    clock.t += 5000;
    expect((await al.assign(req('h2'))).allocations[0]?.ip).toBe('10.91.0.0');
    expectConsistent(store);
  });

  it('when only warm addresses are free, the longest-rested one is reused rather than failing', async () => {
    const clock = { t: T0 };
    const store = await storeWith([{ cidr: '10.92.0.0/30', blockSize: 30 }]);
    const al = allocator(store, 'node1', clock);
    for (let i = 0; i < 4; i++) await al.assign(req(`h${i}`));
    await al.releaseHandle('h2');
    clock.t += 100;
    await al.releaseHandle('h0');
    clock.t += 100;
    expect((await al.assign(req('h4'))).allocations[0]?.ip).toBe('10.92.0.2');
    expect((await al.assign(req('h5'))).allocations[0]?.ip).toBe('10.92.0.0');
    expectConsistent(store);
  });
});

describe('Allocator: results stay inside pools', () => {
  it('every address is inside its block and pool, in both families', async () => {
    const store = await storeWith([{ cidr: '10.0.0.0/24', blockSize: 28 }, { cidr: 'fd00:2::/120', blockSize: 124 }]);
    const al = allocator(store);
    const seen = new Set<string>();
    for (let i = 0; i < 40; i++) {
      for (const a of (await al.assign(req(`h${i}`, [{ family: 4 }, { family: 6 }]))).allocations) {
        expect(seen.has(a.ip)).toBe(false);
        seen.add(a.ip);
        const ip = parseIp(a.ip);
        const pool = parseCidr(a.family === 4 ? '10.0.0.0/24' : 'fd00:2::/120');
        const block = parseCidr(a.blockCidr);
        if (!ip || !pool || !block) throw new Error('parse');
        expect(cidrContains(pool, ip.family, ip.value)).toBe(true);
        expect(cidrContains(block, ip.family, ip.value)).toBe(true);
        expect(block.prefix).toBe(a.family === 4 ? 28 : 124);
      }
    }
    expect(seen.size).toBe(80);
    expectConsistent(store);
  });
});

describe('Allocator: ADDs and DELs of one host served together (the node agent)', () => {
  const fulfilled = <T>(r: PromiseSettledResult<T> | undefined): T => {
    if (r?.status !== 'fulfilled') throw new Error(`expected a success, got ${r?.status === 'rejected' ? String(r.reason) : 'nothing'}`);
    return r.value;
  };

  it("with room in the host's block, six ADDs take one snapshot, one block read and one transaction", async () => {
    const store = await storeWith([{ cidr: '10.30.0.0/24', blockSize: 26 }]);
    const first = await allocator(store).assign(req('net1.first'));
    const block = first.allocations[0]?.blockCidr ?? '';
    const trips = store.roundTrips;
    const ids = ['a', 'b', 'c', 'd', 'e', 'f'].map((x) => `net1.${x}`);
    const out = (await allocator(store).assignTogether(ids.map((id) => req(id)))).map(fulfilled);
    expect(store.roundTrips - trips).toBe(3);
    expect(out.map((o) => o.together)).toEqual(ids.map(() => 6));
    expect(out.map((o) => o.existing)).toEqual(ids.map(() => false));
    const ips = out.map((o) => o.allocations[0]?.ip);
    expect(new Set([first.allocations[0]?.ip, ...ips]).size).toBe(7);
    for (const id of ids) expect(store.snapshot().get(keys.handle(id))).toBe(`{"block":{"${block}":1},"deleted":false}`);
    expect(blockAt(store, block).attributes?.map((a) => a.handle_id)).toEqual(['net1.first', ...ids]);
    expectConsistent(store);
  });

  it('a handle that holds addresses, a handle listed twice, an exact address and a missing pool are served one by one, as assign serves them', async () => {
    const store = await storeWith([{ cidr: '10.31.0.0/24', blockSize: 26 }]);
    const old = await allocator(store).assign(req('net1.old'));
    const settled = await allocator(store).assignTogether([
      req('net1.new'),
      req('net1.old'),
      req('net1.twice'),
      req('net1.twice'),
      req('net1.exact', [], ['10.31.0.200']),
      req('net1.nopool', [{ family: 4, pools: ['nope'] }]),
    ]);
    const last = settled.pop();
    expect(last?.status === 'rejected' && last.reason instanceof CniError ? [last.reason.code, last.reason.message] : last).toEqual([
      ErrorCode.InvalidConfig,
      'the given pool (nope) does not exist, or is not enabled',
    ]);
    const out = settled.map(fulfilled);
    expect(out[0]?.together).toBe(2); // net1.new and the first net1.twice
    expect(out[1]).toEqual({ allocations: old.allocations, existing: true });
    expect(out[2]?.together).toBe(2);
    expect(out[3]).toEqual({ allocations: out[2]?.allocations, existing: true });
    expect(out[4]?.allocations.map((a) => a.ip)).toEqual(['10.31.0.200']);
    expect(allocatedCount(store)).toBe(4);
    expectConsistent(store);
  });

  it('an exact address is served before the automatic picks of its group, which would otherwise take it', async () => {
    const store = await storeWith([{ cidr: '10.36.0.0/24', blockSize: 26 }]);
    const first = await allocator(store).assign(req('net1.first'));
    // The block's base went first; its next address is the next automatic pick.
    const base = first.allocations[0]?.ip ?? '';
    expect(base).toBe(first.allocations[0]?.blockCidr.split('/')[0]);
    const next = base.replace(/\.(\d+)$/, (_, d: string) => `.${Number(d) + 1}`);
    const out = (await allocator(store).assignTogether([req('net1.auto1'), req('net1.auto2'), req('net1.exact', [], [next])])).map(fulfilled);
    expect(out[2]?.allocations.map((a) => a.ip)).toEqual([next]);
    expect(out.slice(0, 2).map((o) => o.together)).toEqual([2, 2]);
    expect(new Set(out.map((o) => o.allocations[0]?.ip)).size).toBe(3);
    expectConsistent(store);
  });

  it('an error other than a lost race (etcd down) ends the grouping: the rest are served one by one, each hearing its own outcome', async () => {
    const store = await storeWith([{ cidr: '10.37.0.0/24', blockSize: 26 }]);
    await allocator(store).assign(req('net1.first'));
    const read = store.read.bind(store);
    let groupReads = 0;
    store.read = async (reads) => {
      // The group's snapshot reads several handles at once.
      if (reads.filter((r) => 'key' in r && r.key.startsWith(keys.handlePrefix)).length > 1) {
        groupReads++;
        throw new CniError(ErrorCode.TryAgainLater, 'etcd unavailable');
      }
      return read(reads);
    };
    const heard: number[] = [];
    const out = (await allocator(store).assignTogether(['a', 'b', 'c', 'd'].map((x) => req(`net1.${x}`)), (i) => heard.push(i))).map(fulfilled);
    expect(groupReads).toBe(1);
    expect(heard).toEqual([0, 1, 2, 3]);
    expect(out.map((o) => o.together)).toEqual([undefined, undefined, undefined, undefined]);
    expect(new Set(out.map((o) => o.allocations[0]?.ip)).size).toBe(4);
    expectConsistent(store);
  });

  it('when the block fills part way, the first ADD left over claims a block alone and the rest fill that one together', async () => {
    const store = await storeWith([{ cidr: '10.32.0.0/24', blockSize: 29 }]);
    const al = allocator(store);
    for (let i = 0; i < 6; i++) await al.assign(req(`net1.pre${i}`));
    const out = (await allocator(store).assignTogether(['a', 'b', 'c', 'd', 'e'].map((x) => req(`net1.${x}`)))).map(fulfilled);
    expect(out.map((o) => o.together)).toEqual([2, 2, undefined, 2, 2]);
    const blocks = out.map((o) => o.allocations[0]?.blockCidr);
    expect(blocks[0]).toBe(blocks[1]);
    expect(blocks[2]).not.toBe(blocks[0]);
    expect(new Set(blocks.slice(2)).size).toBe(1);
    expect(new Set(out.map((o) => o.allocations[0]?.ip)).size).toBe(5);
    expect(store.snapshot(keys.hostAffinityPrefix('node1', 4)).size).toBe(2);
    expectConsistent(store);
  });

  it('a group that loses a race with another writer is served one by one: nothing is handed out twice', async () => {
    const store = await storeWith([{ cidr: '10.33.0.0/24', blockSize: 26 }]);
    await allocator(store).assign(req('net1.first'));
    const txn = store.txn.bind(store);
    let raced: string | undefined;
    store.txn = async (compares, ops) => {
      if (raced === undefined) {
        // Another process of this host takes an address between the group's reads and its write.
        raced = '';
        raced = (await allocator(store).assign(req('net1.racer'))).allocations[0]?.ip ?? '';
      }
      return txn(compares, ops);
    };
    const out = (await allocator(store).assignTogether(['a', 'b', 'c'].map((x) => req(`net1.${x}`)))).map(fulfilled);
    expect(raced).toMatch(/^10\.33\./);
    expect(out.map((o) => o.together)).toEqual([undefined, 2, 2]); // lost, then the first alone, then the rest
    expect(new Set([raced, ...out.map((o) => o.allocations[0]?.ip)]).size).toBe(4);
    expect(allocatedCount(store)).toBe(5);
    expectConsistent(store);
  });

  it('dual stack: each ADD of the group gets one address of each family, and its handle counts both blocks', async () => {
    const store = await storeWith([{ cidr: '10.34.0.0/24', blockSize: 26 }, { cidr: 'fd00:34::/120', blockSize: 122 }]);
    const both: FamilyRequest[] = [{ family: 4 }, { family: 6 }];
    await allocator(store).assign(req('net1.first', both));
    const trips = store.roundTrips;
    const out = (await allocator(store).assignTogether(['a', 'b', 'c'].map((x) => req(`net1.${x}`, both)))).map(fulfilled);
    expect(store.roundTrips - trips).toBe(3);
    for (const [i, o] of out.entries()) {
      expect(o.allocations.map((a) => a.family)).toEqual([4, 6]);
      const counts = Object.fromEntries(o.allocations.map((a) => [a.blockCidr, 1]));
      expect(store.snapshot().get(keys.handle(`net1.${'abc'[i]}`))).toBe(JSON.stringify({ block: counts, deleted: false }));
    }
    expect(new Set(out.flatMap((o) => o.allocations.map((a) => a.ip))).size).toBe(6);
    expectConsistent(store);
  });

  it("DELs together: each call's handles freed in 3 round trips in all; a handle listed twice counts once, for the first call; an unknown one frees nothing", async () => {
    const store = await storeWith([{ cidr: '10.35.0.0/24', blockSize: 26 }]);
    const al = allocator(store);
    const a = (await al.assign(req('net1.a'))).allocations;
    const b = (await al.assign(req('legacy-b'))).allocations;
    const c = (await al.assign(req('net1.c'))).allocations;
    await al.assign(req('net1.keep'));
    const trips = store.roundTrips;
    const out = (await allocator(store).releaseTogether([['net1.a', 'legacy-a', 'net1.a'], ['net1.b', 'legacy-b'], ['net1.c'], ['net1.c'], ['net1.none']])).map(fulfilled);
    expect(store.roundTrips - trips).toBe(3);
    expect(out).toEqual([a, b, c, [], []]);
    expect([...store.snapshot(keys.handlePrefix).keys()]).toEqual([keys.handle('net1.keep')]);
    expect(allocatedCount(store)).toBe(1);
    expectConsistent(store);
  });
});
