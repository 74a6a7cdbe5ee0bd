import { describe, expect, it } from 'vitest';
import {
  canonicalCidr,
  cidrContains,
  cidrCovers,
  cidrSize,
  cidrsOverlap,
  fnv1,
  formatCidr,
  formatIp,
  parseCidr,
  parseIp,
  subnetAt,
} from '../../shared/ipam/cidr';

/** Builds an IPv6 value from 8 groups, independently of the code under test. */
function v6(...groups: number[]): bigint {
  expect(groups).toHaveLength(8);
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n);
}

describe('formatIp (RFC 5952)', () => {
  it('compresses the longest run of zero groups', () => {
    expect(formatIp(6, v6(0xfd80, 0x24e2, 0xf998, 0x72d6, 0, 0, 0, 0))).toBe('fd80:24e2:f998:72d6::');
    expect(formatIp(6, v6(0, 0, 0, 0, 0, 0, 0, 1))).toBe('::1');
    expect(formatIp(6, v6(0, 0, 0, 0, 0, 0, 0, 0))).toBe('::');
    expect(formatIp(6, v6(1, 0, 0, 1, 0, 0, 0, 0))).toBe('1:0:0:1::');
    expect(formatIp(6, v6(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee))).toBe('fe80::ecee:eeff:feee:eeee');
    expect(formatIp(6, v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))).toBe('2001:db8::1');
  });

  it('does not compress a single zero group', () => {
    expect(formatIp(6, v6(1, 0, 2, 3, 4, 5, 6, 7))).toBe('1:0:2:3:4:5:6:7');
    expect(formatIp(6, v6(1, 2, 3, 4, 5, 6, 7, 0))).toBe('1:2:3:4:5:6:7:0');
    expect(formatIp(6, v6(0, 1, 2, 3, 4, 5, 6, 7))).toBe('0:1:2:3:4:5:6:7');
  });

  it('compresses the first of two equally long runs', () => {
    expect(formatIp(6, v6(1, 0, 0, 2, 3, 0, 0, 4))).toBe('1::2:3:0:0:4');
  });

  it('prefers a longer later run over a shorter earlier one', () => {
    expect(formatIp(6, v6(1, 0, 0, 2, 0, 0, 0, 3))).toBe('1:0:0:2::3');
  });

  it('prints lower case without leading zeros', () => {
    const p = parseIp('FD00:0DB8:0000::00AB');
    expect(p).toBeDefined();
    expect(formatIp(6, p?.value ?? 0n)).toBe('fd00:db8::ab');
  });

  it('prints IPv4 as a dotted quad', () => {
    expect(formatIp(4, 0x0a000001n)).toBe('10.0.0.1');
    expect(formatIp(4, 0xffffffffn)).toBe('255.255.255.255');
    expect(formatIp(4, 0n)).toBe('0.0.0.0');
  });
});

describe('parseIp', () => {
  it('parses both families and rejects junk', () => {
    expect(parseIp('192.168.1.2')).toEqual({ family: 4, value: 0xc0a80102n });
    expect(parseIp('::1')).toEqual({ family: 6, value: 1n });
    expect(parseIp('0.0.0.0')).toEqual({ family: 4, value: 0n });
    expect(parseIp('255.255.255.255')).toEqual({ family: 4, value: 0xffffffffn });
    expect(parseIp('::')).toEqual({ family: 6, value: 0n });
    expect(parseIp('FD00::A')).toEqual({ family: 6, value: 0xfd00000000000000000000000000000an });
    expect(parseIp('fe80::ecee:eeff:feee:eeee')).toEqual({ family: 6, value: 0xfe80000000000000eceeeefffeeeeeeen });
    expect(parseIp('::ffff:1.2.3.4')).toEqual({ family: 6, value: 0xffff01020304n });
    for (const bad of ['', '1.2.3', '256.1.1.1', '1.2.3.4.5', 'a.b.c.d', ':::', '1::2::3', 'fd00::g', '10.0.0.0/8']) {
      expect(parseIp(bad), bad).toBeUndefined();
    }
  });
});

describe('parseCidr', () => {
  it('masks the address to the prefix, as Go net.ParseCIDR', () => {
    expect(parseCidr('10.0.0.5/24')).toEqual({ family: 4, base: 0x0a000000n, prefix: 24 });
    expect(formatCidr(parseCidr('10.1.2.200/26') ?? { family: 4, base: 0n, prefix: 0 })).toBe('10.1.2.192/26');
    expect(canonicalCidr('fd80:24e2:f998:72d6::1234/122')).toBe('fd80:24e2:f998:72d6::1200/122');
    expect(canonicalCidr('fd80:24e2:f998:72d6:1:2:3:4/64')).toBe('fd80:24e2:f998:72d6::/64');
    expect(canonicalCidr('1.2.3.4/0')).toBe('0.0.0.0/0');
    expect(canonicalCidr('1.2.3.4/32')).toBe('1.2.3.4/32');
    expect(canonicalCidr('::1/128')).toBe('::1/128');
  });

  it('rejects what is not a CIDR', () => {
    for (const bad of ['10.0.0.0', '10.0.0.0/', '10.0.0.0/33', '10.0.0.0/-1', '10.0.0.0/2x', '10.0.0.0/1234', '256.0.0.0/8', 'fd00::/129', '/24', 'x/24']) {
      expect(parseCidr(bad), bad).toBeUndefined();
    }
  });
});

describe('cidr arithmetic', () => {
  const pool = parseCidr('10.0.0.0/24');
  it('size, containment, overlap and subnets', () => {
    if (!pool) throw new Error('parse');
    expect(cidrSize(pool)).toBe(256n);
    expect(cidrSize(parseCidr('fd00::/122') ?? pool)).toBe(64n);
    expect(cidrContains(pool, 4, 0x0a0000ffn)).toBe(true);
    expect(cidrContains(pool, 4, 0x0a000100n)).toBe(false);
    expect(cidrContains(pool, 6, 0x0a000001n)).toBe(false);
    expect(formatCidr(subnetAt(pool, 26, 0n))).toBe('10.0.0.0/26');
    expect(formatCidr(subnetAt(pool, 26, 3n))).toBe('10.0.0.192/26');
    const inner = parseCidr('10.0.0.64/26');
    const other = parseCidr('10.0.1.0/26');
    if (!inner || !other) throw new Error('parse');
    expect(cidrCovers(pool, inner)).toBe(true);
    expect(cidrCovers(inner, pool)).toBe(false);
    expect(cidrsOverlap(inner, pool)).toBe(true);
    expect(cidrsOverlap(other, pool)).toBe(false);
  });
});

describe('fnv1', () => {
  /** 32-bit FNV-1 written out with BigInt, independently of the implementation. */
  function reference(s: string): number {
    let h = 0x811c9dc5n;
    for (const b of Buffer.from(s)) h = ((h * 0x01000193n) & 0xffffffffn) ^ BigInt(b);
    return Number(h);
  }
  it('is FNV-1 (multiply, then xor), not FNV-1a', () => {
    expect(fnv1('')).toBe(0x811c9dc5);
    expect(fnv1('a')).toBe(0x050c5d7e);
    for (const s of ['node1', 'worker-17.example.com', 'ünïcode']) expect(fnv1(s)).toBe(reference(s));
  });
});
