import { beforeAll, describe, expect, it } from 'vitest';
import { checkIpamInvariants } from '../helpers/ipam-invariants';
import { Allocator } from '../../shared/ipam/allocator';
import { MemoryStore } from '../../shared/store/memory';
import { addPool } from '../../shared/ipam/pools';

/** The checker must find each kind of corruption; an empty result from it is only worth something then. */

const BLOCK = '/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-30';
const BLOCK2 = '/calico/ipam/v2/assignment/ipv4/block/10.0.0.4-30';
const AFF = '/calico/ipam/v2/host/node1/ipv4/block/10.0.0.0-30';
const AFF2 = '/calico/ipam/v2/host/node1/ipv4/block/10.0.0.4-30';
const HANDLE_A = '/calico/ipam/v2/handle/net1.a';
const HANDLE_B = '/calico/ipam/v2/handle/net1.b';

let good: Map<string, string>;

beforeAll(async () => {
  const store = new MemoryStore();
  await addPool(store, { cidr: '10.0.0.0/29', blockSize: 30 });
  const al = new Allocator({ store, node: 'node1' });
  // Block 10.0.0.0/30 holds net1.a and net1.b; block 10.0.0.4/30 holds net1.c.
  await al.assign({ handleId: 'net1.a', attrs: { node: 'node1' }, families: [{ family: 4 }], ips: ['10.0.0.0'] });
  await al.assign({ handleId: 'net1.b', attrs: { node: 'node1' }, families: [{ family: 4 }], ips: ['10.0.0.1'] });
  await al.assign({ handleId: 'net1.c', attrs: { node: 'node1' }, families: [{ family: 4 }], ips: ['10.0.0.5'] });
  good = store.snapshot();
});

type Json = Record<string, unknown>;

function edit(key: string, fn: (v: Json) => void): Map<string, string> {
  const kv = new Map(good);
  const v = JSON.parse(kv.get(key) ?? 'null') as Json;
  fn(v);
  kv.set(key, JSON.stringify(v));
  return kv;
}

function expectViolation(kv: Map<string, string>, pattern: RegExp): void {
  const found = checkIpamInvariants(kv);
  expect(found.length, 'expected at least one violation').toBeGreaterThan(0);
  expect(found.some((m) => pattern.test(m)), `no violation matching ${pattern}: ${JSON.stringify(found)}`).toBe(true);
}

describe('checkIpamInvariants', () => {
  it('accepts the state the allocator leaves', () => {
    expect([...good.keys()]).toEqual(expect.arrayContaining([BLOCK, BLOCK2, AFF, AFF2, HANDLE_A, HANDLE_B]));
    expect(checkIpamInvariants(good)).toEqual([]);
    expect(checkIpamInvariants(new Map())).toEqual([]);
  });

  it('a free ordinal missing from unallocated, or listed twice', () => {
    expectViolation(edit(BLOCK, (b) => (b.unallocated = (b.unallocated as number[]).slice(1))), /free ordinal \d+ appears 0 times/);
    expectViolation(edit(BLOCK, (b) => (b.unallocated = [...(b.unallocated as number[]), 3])), /free ordinal 3 appears 2 times/);
  });

  it('an allocated ordinal also in unallocated, or an ordinal out of range', () => {
    expectViolation(edit(BLOCK, (b) => (b.unallocated = [...(b.unallocated as number[]), 0])), /allocated ordinal 0 is also in unallocated/);
    expectViolation(edit(BLOCK, (b) => (b.unallocated = [...(b.unallocated as number[]), 4])), /not an ordinal/);
  });

  it('allocations of the wrong length, or pointing at a missing attribute', () => {
    expectViolation(edit(BLOCK, (b) => (b.allocations = (b.allocations as unknown[]).slice(0, 3))), /allocations has 3 entries, block size is 4/);
    expectViolation(edit(BLOCK, (b) => ((b.allocations as unknown[])[0] = 7)), /points at attribute 7/);
  });

  it('handle counts that do not match the block, a zero count, an empty handle', () => {
    expectViolation(edit(HANDLE_A, (h) => (h.block = { '10.0.0.0/30': 2 })), /counts 2 in block 10\.0\.0\.0\/30, but 1 ordinal/);
    expectViolation(edit(HANDLE_A, (h) => (h.block = { '10.0.0.0/30': 1, '10.0.0.4/30': 0 })), /count for 10\.0\.0\.4\/30 is 0/);
    expectViolation(edit(HANDLE_A, (h) => (h.block = {})), /holds no blocks/);
    expectViolation(edit(HANDLE_A, (h) => (h.block = { '10.0.0.0/30': 1, '10.9.0.0/30': 1 })), /which does not exist/);
  });

  it('an allocation whose handle key is missing (a leak)', () => {
    const kv = new Map(good);
    kv.delete(HANDLE_B);
    expectViolation(kv, /carry handle "net1\.b", which has no handle key/);
  });

  it('affinities: not confirmed, naming a missing block, or a block of another host; and a block without its affinity', () => {
    expectViolation(edit(AFF, (a) => (a.state = 'pending')), /expected "confirmed"/);
    expectViolation(edit(BLOCK, (b) => (b.affinity = 'host:node2')), /has affinity "host:node2", expected "host:node1"/);
    const noBlock = new Map(good);
    noBlock.set('/calico/ipam/v2/host/node1/ipv4/block/10.0.0.8-30', '{"state":"confirmed","deleted":false}');
    expectViolation(noBlock, /names block 10\.0\.0\.8\/30, which does not exist/);
    const noAff = new Map(good);
    noAff.delete(AFF2);
    expectViolation(noAff, /affine to node1, but that host has no affinity key/);
  });

  it('overlapping blocks, a cidr that does not match its key, deleted=true, non-JSON values', () => {
    const overlap = new Map(good);
    overlap.set(
      '/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-29',
      JSON.stringify({ cidr: '10.0.0.0/29', affinity: null, allocations: Array(8).fill(null), unallocated: [0, 1, 2, 3, 4, 5, 6, 7], attributes: [], deleted: false }),
    );
    expectViolation(overlap, /overlaps/);
    expectViolation(edit(BLOCK, (b) => (b.cidr = '10.0.0.4/30')), /does not match the key/);
    expectViolation(edit(HANDLE_A, (h) => (h.deleted = true)), /deleted is true/);
    const junk = new Map(good);
    junk.set(HANDLE_A, '{not json');
    expectViolation(junk, /not JSON/);
  });
});
