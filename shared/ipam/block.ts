import type { Family } from '../calico/keys';
import type { AllocationAttribute, Block } from '../calico/model';
import { cidrSize, formatIp, parseCidr, type Cidr } from './cidr';

/*
 * Pure operations on one IPAM block, with upstream's semantics: `unallocated` is a FIFO of free ordinals
 * (taken from the head, released to the tail), every allocation points at an attribute entry, and every
 * change bumps the block's sequence number.
 */

export function blockCidr(b: Block): Cidr {
  const c = parseCidr(b.cidr);
  if (!c) throw new Error(`block has an invalid cidr ${JSON.stringify(b.cidr)}`);
  return c;
}

export function newBlock(cidr: Cidr, host: string | null, nowMs: number): Block {
  const size = Number(cidrSize(cidr));
  return {
    cidr: `${formatIp(cidr.family, cidr.base)}/${cidr.prefix}`,
    affinity: host === null ? null : `host:${host}`,
    allocations: new Array<number | null>(size).fill(null),
    unallocated: Array.from({ length: size }, (_, i) => i),
    attributes: [],
    // Upstream seeds the sequence number with the creation time in nanoseconds.
    sequenceNumber: BigInt(nowMs) * 1_000_000n,
    sequenceNumberForAllocation: {},
    deleted: false,
  };
}

export function ordinalAddress(b: Block, ord: number): { family: Family; ip: string } {
  const c = blockCidr(b);
  return { family: c.family, ip: formatIp(c.family, c.base + BigInt(ord)) };
}

/** Handle ids are compared up to the first "\r", as upstream does for legacy ids. */
export function sameHandle(a: string | null | undefined, handleId: string): boolean {
  return (a ?? '').split('\r')[0] === handleId;
}

export function ordinalsOf(b: Block, handleId: string): number[] {
  const out: number[] = [];
  b.allocations.forEach((attrIdx, ord) => {
    if (attrIdx !== null && sameHandle(b.attributes?.[attrIdx]?.handle_id, handleId)) out.push(ord);
  });
  return out;
}

export function freeCount(b: Block): number {
  return b.unallocated.filter((o) => b.allocations[o] === null).length;
}

export function isEmpty(b: Block): boolean {
  return b.allocations.every((a) => a === null);
}

/**
 * The ordinal to hand out next: the first free one that has rested at least `cooldownMs` since release;
 * failing that, the one released longest ago. `cool` says whether the choice respected the cooldown.
 */
export function pickOrdinal(b: Block, nowMs: number, cooldownMs: number): { ord: number; cool: boolean } | undefined {
  let warmest: { ord: number; at: number } | undefined;
  for (const ord of b.unallocated) {
    if (b.allocations[ord] !== null) continue;
    const at = b.releaseTimes?.[String(ord)];
    if (at === undefined || nowMs - at >= cooldownMs) return { ord, cool: true };
    if (!warmest || at < warmest.at) warmest = { ord, at };
  }
  return warmest ? { ord: warmest.ord, cool: false } : undefined;
}

function sameAttribute(a: AllocationAttribute, handleId: string, secondary: Record<string, string>): boolean {
  if (a.handle_id !== handleId) return false;
  const s = a.secondary ?? {};
  const ks = Object.keys(s);
  return ks.length === Object.keys(secondary).length && ks.every((k) => s[k] === secondary[k]);
}

/** Returns a copy of the block with `ord` allocated to the handle. */
export function allocateOrdinal(b: Block, ord: number, handleId: string, secondary: Record<string, string>): Block {
  const attributes = [...(b.attributes ?? [])];
  let idx = attributes.findIndex((a) => sameAttribute(a, handleId, secondary));
  if (idx < 0) {
    attributes.push({ handle_id: handleId, secondary });
    idx = attributes.length - 1;
  }
  const allocations = [...b.allocations];
  allocations[ord] = idx;
  const seq = b.sequenceNumber ?? 0n;
  const releaseTimes = { ...(b.releaseTimes ?? {}) };
  delete releaseTimes[String(ord)];
  return {
    ...b,
    allocations,
    unallocated: b.unallocated.filter((o) => o !== ord),
    attributes,
    sequenceNumber: seq + 1n,
    sequenceNumberForAllocation: { ...(b.sequenceNumberForAllocation ?? {}), [String(ord)]: seq },
    releaseTimes,
  };
}

/** Returns a copy with the given ordinals freed (appended to the FIFO tail) and unused attributes dropped. */
export function releaseOrdinals(b: Block, ords: readonly number[], nowMs: number): Block {
  const allocations = [...b.allocations];
  const seqFor = { ...(b.sequenceNumberForAllocation ?? {}) };
  const releaseTimes = { ...(b.releaseTimes ?? {}) };
  const unallocated = [...b.unallocated];
  for (const ord of ords) {
    if (allocations[ord] === null || allocations[ord] === undefined) continue;
    allocations[ord] = null;
    delete seqFor[String(ord)];
    releaseTimes[String(ord)] = nowMs;
    if (!unallocated.includes(ord)) unallocated.push(ord);
  }
  // Drop attributes nothing points at any more, and re-index the rest (v3.31 semantics).
  const old = b.attributes ?? [];
  const used = new Set(allocations.filter((a): a is number => a !== null));
  const remap = new Map<number, number>();
  const attributes: AllocationAttribute[] = [];
  old.forEach((a, i) => {
    if (used.has(i)) {
      remap.set(i, attributes.length);
      attributes.push(a);
    }
  });
  return {
    ...b,
    allocations: allocations.map((a) => (a === null ? null : (remap.get(a) ?? null))),
    unallocated,
    attributes,
    sequenceNumber: (b.sequenceNumber ?? 0n) + 1n,
    sequenceNumberForAllocation: seqFor,
    releaseTimes,
  };
}
