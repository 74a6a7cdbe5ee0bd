import { describe, expect, it } from 'vitest';
import {
  affinityConfirmed,
  decodeAffinity,
  decodeBlock,
  decodeHandle,
  decodePool,
  effectiveIpamConfig,
  encodeAffinity,
  encodeBlock,
  encodeHandle,
  parseJsonAt,
  type Block,
} from '../../shared/calico/model';
import { cidrToKeyPart, keyPartToCidr, keys, parseAffinityKey, parseBlockKey } from '../../shared/calico/keys';
import { CniError, ErrorCode } from '../../shared/cni/errors';

const ORDER = ['cidr', 'affinity', 'allocations', 'unallocated', 'attributes', 'sequenceNumber', 'sequenceNumberForAllocation', 'deleted'];

/** The reference's example block after one allocation (v3.31 shape), as upstream writes it. */
function upstreamBlock(extraTail = ''): string {
  const allocations = ['0', ...Array<string>(63).fill('null')].join(',');
  const unallocated = Array.from({ length: 63 }, (_, i) => i + 1).join(',');
  return (
    '{"cidr":"10.0.0.0/26","affinity":"host:node1",' +
    `"allocations":[${allocations}],"unallocated":[${unallocated}],` +
    '"attributes":[{"handle_id":"net1.abc123","secondary":{"node":"node1","timestamp":"2024-01-01 00:00:00.123 +0000 UTC"}}],' +
    '"sequenceNumber":1704067200000000001,"sequenceNumberForAllocation":{"0":1704067200000000000},"deleted":false' +
    extraTail +
    '}'
  );
}

describe('IPAM block encoding', () => {
  it('round-trips an upstream block byte for byte, keeping uint64 sequence numbers exact', () => {
    const text = upstreamBlock();
    const b = decodeBlock(text);
    expect(b.sequenceNumber).toBe(1704067200000000001n);
    expect(b.sequenceNumberForAllocation).toEqual({ '0': 1704067200000000000n });
    expect(b.allocations).toHaveLength(64);
    expect(b.unallocated).toHaveLength(63);
    expect(encodeBlock(b)).toBe(text);
    // A double could not even hold it: the text must carry the digits verbatim.
    expect(encodeBlock(b)).toContain('"sequenceNumber":1704067200000000001,');
    expect(encodeBlock(b)).toContain('"sequenceNumberForAllocation":{"0":1704067200000000000}');
  });

  it('keeps unknown fields (written by a newer Calico) through decode and encode', () => {
    const text = upstreamBlock(',"futureField":{"x":[1,2]},"hostAffinity":"node1"');
    const b = decodeBlock(text);
    expect((b as Record<string, unknown>).futureField).toEqual({ x: [1, 2] });
    expect(encodeBlock(b)).toBe(text);
    // And an update of a decoded block keeps them too.
    const updated = encodeBlock({ ...b, unallocated: [] });
    expect(JSON.parse(updated)).toMatchObject({ futureField: { x: [1, 2] }, hostAffinity: 'node1' });
  });

  it('writes keys in libcalico-go order whatever order the object has', () => {
    const scrambled = {
      deleted: false,
      sequenceNumberForAllocation: { '1': 5n },
      sequenceNumber: 6n,
      attributes: [{ secondary: { node: 'n' }, handle_id: 'h' }],
      unallocated: [0, 2, 3],
      allocations: [null, 0, null, null],
      affinity: 'host:n',
      cidr: '10.0.0.0/30',
    } as Block;
    const text = encodeBlock(scrambled);
    expect(Object.keys(JSON.parse(text) as object)).toEqual(ORDER);
    expect(text).toBe(
      '{"cidr":"10.0.0.0/30","affinity":"host:n","allocations":[null,0,null,null],"unallocated":[0,2,3],' +
        '"attributes":[{"secondary":{"node":"n"},"handle_id":"h"}],"sequenceNumber":6,"sequenceNumberForAllocation":{"1":5},"deleted":false}',
    );
  });

  it('fills defaults upstream always writes: affinity null, attributes handle_id/secondary null, deleted false', () => {
    const text = encodeBlock({ cidr: '10.0.0.0/30', allocations: [0, null, null, null], unallocated: [1, 2, 3], attributes: [{}] });
    expect(JSON.parse(text)).toEqual({
      cidr: '10.0.0.0/30',
      affinity: null,
      allocations: [0, null, null, null],
      unallocated: [1, 2, 3],
      attributes: [{ handle_id: null, secondary: null }],
      sequenceNumber: 0,
      sequenceNumberForAllocation: {},
      deleted: false,
    });
  });

  it('affinity_claim_time (v3.32+) sits right after affinity', () => {
    const text =
      '{"cidr":"10.0.0.0/30","affinity":"host:n","affinity_claim_time":"2025-01-01T00:00:00Z","allocations":[null,null,null,null],' +
      '"unallocated":[0,1,2,3],"attributes":[],"sequenceNumber":1,"sequenceNumberForAllocation":{},"deleted":false}';
    expect(encodeBlock(decodeBlock(text))).toBe(text);
  });

  it('accepts whitespace and pretty-printed blocks', () => {
    const pretty = JSON.stringify(JSON.parse(upstreamBlock().replace(/1704067200000000001/, '"X"').replace(/1704067200000000000/, '"Y"')), null, 2)
      .replace('"X"', '1704067200000000001')
      .replace('"Y"', '1704067200000000000');
    const b = decodeBlock(pretty);
    expect(b.sequenceNumber).toBe(1704067200000000001n);
    expect(encodeBlock(b)).toBe(upstreamBlock());
  });

  it('a malformed block is a decode failure naming the key', () => {
    for (const bad of ['{"cidr":"10.0.0.0/30"}', '{"cidr":1,"allocations":[],"unallocated":[]}', 'nope']) {
      let err: unknown;
      try {
        parseJsonAt('/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-30', bad, decodeBlock);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(CniError);
      expect((err as CniError).code).toBe(ErrorCode.DecodeFailure);
      expect((err as CniError).message).toContain('/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-30');
    }
  });
});

describe('other IPAM values', () => {
  it('handle and affinity JSON as upstream', () => {
    expect(encodeHandle({ '10.0.0.0/26': 1 })).toBe('{"block":{"10.0.0.0/26":1},"deleted":false}');
    expect(decodeHandle('{"block":{"10.0.0.0/26":2,"fd00::/122":1},"deleted":false}').block).toEqual({ '10.0.0.0/26': 2, 'fd00::/122': 1 });
    expect(encodeAffinity('confirmed')).toBe('{"state":"confirmed","deleted":false}');
    expect(encodeAffinity('pending')).toBe('{"state":"pending","deleted":false}');
  });

  it('an empty affinity value or state is confirmed (legacy); pending and pendingDeletion are not', () => {
    expect(affinityConfirmed(decodeAffinity(''))).toBe(true);
    expect(affinityConfirmed(decodeAffinity('{}'))).toBe(true);
    expect(affinityConfirmed(decodeAffinity('{"state":""}'))).toBe(true);
    expect(affinityConfirmed(decodeAffinity('{"state":"confirmed","deleted":false}'))).toBe(true);
    expect(affinityConfirmed(decodeAffinity('{"state":"pending","deleted":false}'))).toBe(false);
    expect(affinityConfirmed(decodeAffinity('{"state":"pendingDeletion","deleted":false}'))).toBe(false);
  });

  it('IPAM config defaults: not strict, auto-allocate, 20 blocks per host', () => {
    expect(effectiveIpamConfig(undefined)).toMatchObject({ strictAffinity: false, autoAllocateBlocks: true, maxBlocksPerHost: 20 });
    expect(effectiveIpamConfig('{"strict_affinity":true,"auto_allocate_blocks":true,"maxBlocksPerHost":3}')).toMatchObject({
      strictAffinity: true,
      autoAllocateBlocks: true,
      maxBlocksPerHost: 3,
    });
    expect(effectiveIpamConfig('{"maxBlocksPerHost":0}').maxBlocksPerHost).toBe(20);
  });

  it('IPPool defaults applied on read', () => {
    const p = decodePool('{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"p6"},"spec":{"cidr":"fd00::/64"}}');
    expect(p.spec).toMatchObject({ cidr: 'fd00::/64', blockSize: 122, nodeSelector: 'all()', ipipMode: 'Never', vxlanMode: 'Never', assignmentMode: 'Automatic', allowedUses: ['Workload', 'Tunnel'] });
    const p4 = decodePool('{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"p4"},"spec":{"cidr":"10.0.0.0/16","nodeSelector":""}}');
    expect(p4.spec.blockSize).toBe(26);
    expect(p4.spec.nodeSelector).toBe('all()');
  });
});

describe('keys', () => {
  it('are byte-exact with libcalico-go', () => {
    expect(keys.block(4, '10.0.0.0/26')).toBe('/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26');
    expect(keys.block(6, 'fd80:24e2:f998:72d6::/122')).toBe('/calico/ipam/v2/assignment/ipv6/block/fd80:24e2:f998:72d6::-122');
    expect(keys.hostAffinity('node1', 4, '10.0.0.0/26')).toBe('/calico/ipam/v2/host/node1/ipv4/block/10.0.0.0-26');
    expect(keys.handle('net1.cnitool-77383ca0a0715733ca6f')).toBe('/calico/ipam/v2/handle/net1.cnitool-77383ca0a0715733ca6f');
    expect(keys.ipamConfig).toBe('/calico/ipam/v2/config');
    expect(keys.pool('default-ipv4-ippool')).toBe('/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool');
    expect(keys.node('node1')).toBe('/calico/resources/v3/projectcalico.org/nodes/node1');
    expect(keys.workloadEndpoint('default', 'node1-cni-abc-eth0')).toBe('/calico/resources/v3/projectcalico.org/workloadendpoints/default/node1-cni-abc-eth0');
  });

  it('parse back, including IPv6 and host names with dashes', () => {
    expect(parseBlockKey('/calico/ipam/v2/assignment/ipv6/block/fd80:24e2:f998:72d6::-122')).toEqual({ family: 6, cidr: 'fd80:24e2:f998:72d6::/122' });
    expect(parseAffinityKey('/calico/ipam/v2/host/my-node-1/ipv4/block/10.0.0.64-26')).toEqual({ host: 'my-node-1', family: 4, cidr: '10.0.0.64/26' });
    expect(parseBlockKey('/calico/ipam/v2/assignment/ipv4/block/')).toBeUndefined();
    expect(parseAffinityKey('/calico/ipam/v2/host/node1')).toBeUndefined();
    expect(keyPartToCidr(cidrToKeyPart('fd00::/122'))).toBe('fd00::/122');
  });
});
