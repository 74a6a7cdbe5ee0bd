// ip-num's Validator and IPv6Utils only: its IPv4/IPv6 classes (IPNumber.js) build a dozen special ranges
// when they load, parsing IPv6 text each time, which cost every plugin process ~6 ms (~17 ms under load).
import { Validator } from 'ip-num/dist/src/Validator';
import { expandIPv6Number } from 'ip-num/dist/src/IPv6Utils';
import type { Family } from '../calico/keys';

/** A CIDR as numbers: `base` is already masked to `prefix`. */
export interface Cidr {
  family: Family;
  base: bigint;
  prefix: number;
}

export const familyBits = (f: Family): number => (f === 4 ? 32 : 128);

export function parseIp(s: string): { family: Family; value: bigint } | undefined {
  if (s.includes(':')) {
    if (!Validator.isValidIPv6String(s)[0]) return undefined;
    return { family: 6, value: BigInt(`0x${expandIPv6Number(s).replaceAll(':', '')}`) };
  }
  if (!Validator.isValidIPv4String(s)[0]) return undefined;
  return { family: 4, value: s.split('.').reduce((acc, octet) => (acc << 8n) | BigInt(octet), 0n) };
}

export function hostMask(family: Family, prefix: number): bigint {
  return (1n << BigInt(familyBits(family) - prefix)) - 1n;
}

/** Parses "a.b.c.d/n" or "x::/n"; the address is masked to the prefix, as Go's net.ParseCIDR does. */
export function parseCidr(s: string): Cidr | undefined {
  const slash = s.indexOf('/');
  if (slash < 0) return undefined;
  const ip = parseIp(s.slice(0, slash));
  const p = s.slice(slash + 1);
  if (!ip || !/^\d{1,3}$/.test(p)) return undefined;
  const prefix = Number(p);
  if (prefix > familyBits(ip.family)) return undefined;
  return { family: ip.family, base: ip.value & ~hostMask(ip.family, prefix), prefix };
}

/** Canonical text: dotted quad, or RFC 5952 (lower case, longest zero run of 2+ groups as "::"), as Go prints. */
export function formatIp(family: Family, value: bigint): string {
  if (family === 4) return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join('.');
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((value >> BigInt(i * 16)) & 0xffffn));
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestLen < 2) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

export function formatCidr(c: Cidr): string {
  return `${formatIp(c.family, c.base)}/${c.prefix}`;
}

export function cidrSize(c: Cidr): bigint {
  return 1n << BigInt(familyBits(c.family) - c.prefix);
}

export function cidrContains(c: Cidr, family: Family, value: bigint): boolean {
  return family === c.family && (value & ~hostMask(c.family, c.prefix)) === c.base;
}

export function cidrCovers(outer: Cidr, inner: Cidr): boolean {
  return inner.prefix >= outer.prefix && cidrContains(outer, inner.family, inner.base);
}

export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  return cidrCovers(a, b) || cidrCovers(b, a);
}

/** The index-th subnet of size /newPrefix inside c. */
export function subnetAt(c: Cidr, newPrefix: number, index: bigint): Cidr {
  return { family: c.family, base: c.base + (index << BigInt(familyBits(c.family) - newPrefix)), prefix: newPrefix };
}

/** Normalises user input "10.0.0.5/24" -> "10.0.0.0/24"; undefined when it is not a CIDR. */
export function canonicalCidr(s: string): string | undefined {
  const c = parseCidr(s);
  return c ? formatCidr(c) : undefined;
}

export { fnv1 } from '../hash';
