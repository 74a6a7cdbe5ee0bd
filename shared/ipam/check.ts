/**
 * Consistency of the IPAM data in a datastore snapshot (key -> raw value), independent of the allocator:
 * blocks, handles and affinities must describe the same allocations. Returns the violations found; an
 * empty list means consistent. Keys outside /calico/ipam/v2/ are ignored.
 */
import { keyPartToCidr } from '../calico/keys';
import { cidrSize, formatIp, parseCidr, type Cidr } from './cidr';

const BLOCK_KEY = /^\/calico\/ipam\/v2\/assignment\/ipv([46])\/block\/([^/]+)$/;
const HANDLE_KEY = /^\/calico\/ipam\/v2\/handle\/(.+)$/;
const AFFINITY_KEY = /^\/calico\/ipam\/v2\/host\/([^/]+)\/ipv([46])\/block\/([^/]+)$/;

interface RawBlock {
  cidr: Cidr;
  key: string;
  affinity: unknown;
  allocations: (number | null)[];
  attributes: { handle_id?: unknown }[];
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Handle ids are compared up to the first "\r" (legacy ids carry more after it). */
function baseHandle(h: unknown): string | undefined {
  return typeof h === 'string' ? (h.split('\r')[0] ?? '') : undefined;
}

export function checkIpamInvariants(kv: Map<string, string>): string[] {
  const v: string[] = [];
  const blocks = new Map<string, RawBlock>(); // by canonical "family|cidr" text
  const blockId = (family: string, cidr: string) => `${family}|${cidr}`;

  // ---- blocks ----
  for (const [key, value] of kv) {
    const m = BLOCK_KEY.exec(key);
    if (!m || !m[1] || !m[2]) continue;
    const family = m[1];
    const keyCidr = keyPartToCidr(m[2]);
    let raw: unknown;
    try {
      raw = JSON.parse(value);
    } catch {
      v.push(`${key}: value is not JSON`);
      continue;
    }
    if (!isObject(raw)) {
      v.push(`${key}: value is not a JSON object`);
      continue;
    }
    const cidr = parseCidr(keyCidr);
    if (!cidr || String(cidr.family) !== family) {
      v.push(`${key}: key does not hold a valid IPv${family} CIDR`);
      continue;
    }
    if (raw.cidr !== keyCidr) v.push(`${key}: cidr ${JSON.stringify(raw.cidr)} does not match the key`);
    if (raw.deleted !== false) v.push(`${key}: deleted is ${JSON.stringify(raw.deleted)}, expected false`);
    if (raw.affinity !== null && !(typeof raw.affinity === 'string' && /^host:.+/.test(raw.affinity))) {
      v.push(`${key}: affinity ${JSON.stringify(raw.affinity)} is neither null nor host:<name>`);
    }
    const size = Number(cidrSize(cidr));
    const allocations = Array.isArray(raw.allocations) ? (raw.allocations as unknown[]) : undefined;
    const unallocated = Array.isArray(raw.unallocated) ? (raw.unallocated as unknown[]) : undefined;
    const attributes = raw.attributes === null ? [] : Array.isArray(raw.attributes) ? (raw.attributes as unknown[]) : undefined;
    if (!allocations || !unallocated || !attributes) {
      v.push(`${key}: allocations, unallocated and attributes must be arrays`);
      continue;
    }
    if (allocations.length !== size) v.push(`${key}: allocations has ${allocations.length} entries, block size is ${size}`);
    const allocs: (number | null)[] = [];
    allocations.forEach((a, ord) => {
      if (a === null) {
        allocs.push(null);
      } else if (typeof a === 'number' && Number.isInteger(a) && a >= 0 && a < attributes.length) {
        allocs.push(a);
      } else {
        v.push(`${key}: ordinal ${ord} points at attribute ${JSON.stringify(a)}, but there are ${attributes.length} attributes`);
        allocs.push(null);
      }
    });
    const seen = new Map<number, number>();
    for (const u of unallocated) {
      if (typeof u !== 'number' || !Number.isInteger(u) || u < 0 || u >= size) {
        v.push(`${key}: unallocated holds ${JSON.stringify(u)}, not an ordinal of the block`);
        continue;
      }
      seen.set(u, (seen.get(u) ?? 0) + 1);
    }
    for (let ord = 0; ord < size; ord++) {
      const n = seen.get(ord) ?? 0;
      const allocated = allocations[ord] !== null && allocations[ord] !== undefined;
      if (allocated && n > 0) v.push(`${key}: allocated ordinal ${ord} is also in unallocated`);
      if (!allocated && n !== 1) v.push(`${key}: free ordinal ${ord} appears ${n} times in unallocated (expected once)`);
    }
    const attrs = attributes.map((a) => (isObject(a) ? a : {}));
    blocks.set(blockId(family, keyCidr), { cidr, key, affinity: raw.affinity, allocations: allocs, attributes: attrs });
  }

  // Blocks of one family must not overlap (a shorter-prefix block may not contain another).
  const byFamily = new Map<number, RawBlock[]>();
  for (const b of blocks.values()) byFamily.set(b.cidr.family, [...(byFamily.get(b.cidr.family) ?? []), b]);
  for (const list of byFamily.values()) {
    const sorted = [...list].sort((a, b) => (a.cidr.base < b.cidr.base ? -1 : a.cidr.base > b.cidr.base ? 1 : 0));
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1] as RawBlock;
      const cur = sorted[i] as RawBlock;
      if (prev.cidr.base + cidrSize(prev.cidr) > cur.cidr.base) v.push(`${prev.key} overlaps ${cur.key}`);
    }
  }

  // Ordinals carrying each handle, per block.
  const carried = new Map<string, Map<string, number>>(); // handle -> block id -> count
  for (const [id, b] of blocks) {
    b.allocations.forEach((idx) => {
      if (idx === null) return;
      const h = baseHandle(b.attributes[idx]?.handle_id);
      if (h === undefined) {
        v.push(`${b.key}: attribute ${idx} has no handle_id`);
        return;
      }
      const per = carried.get(h) ?? new Map<string, number>();
      per.set(id, (per.get(id) ?? 0) + 1);
      carried.set(h, per);
    });
  }

  // ---- handles ----
  const handles = new Set<string>();
  for (const [key, value] of kv) {
    const m = HANDLE_KEY.exec(key);
    if (!m || !m[1]) continue;
    const handleId = m[1];
    handles.add(handleId);
    let raw: unknown;
    try {
      raw = JSON.parse(value);
    } catch {
      v.push(`${key}: value is not JSON`);
      continue;
    }
    if (!isObject(raw) || !isObject(raw.block)) {
      v.push(`${key}: value has no "block" map`);
      continue;
    }
    if (raw.deleted !== false) v.push(`${key}: deleted is ${JSON.stringify(raw.deleted)}, expected false`);
    const entries = Object.entries(raw.block);
    if (entries.length === 0) v.push(`${key}: handle holds no blocks but was not deleted`);
    const actual = carried.get(handleId) ?? new Map<string, number>();
    for (const [cidrText, count] of entries) {
      const c = parseCidr(cidrText);
      if (!c) {
        v.push(`${key}: block ${JSON.stringify(cidrText)} is not a CIDR`);
        continue;
      }
      if (typeof count !== 'number' || !Number.isInteger(count)) {
        v.push(`${key}: count for ${cidrText} is ${JSON.stringify(count)}`);
        continue;
      }
      if (count <= 0) v.push(`${key}: count for ${cidrText} is ${count}; the entry should have been deleted`);
      const id = blockId(String(c.family), cidrText);
      if (!blocks.has(id)) {
        if (count > 0) v.push(`${key}: counts ${count} in block ${cidrText}, which does not exist`);
        continue;
      }
      const n = actual.get(id) ?? 0;
      if (n !== count) v.push(`${key}: counts ${count} in block ${cidrText}, but ${n} ordinal(s) there carry the handle`);
    }
    for (const [id, n] of actual) {
      const cidrText = id.split('|')[1] ?? '';
      if (!Object.hasOwn(raw.block, cidrText)) v.push(`${key}: ${n} ordinal(s) in block ${cidrText} carry the handle, which does not list that block`);
    }
  }
  for (const [h, per] of carried) {
    if (handles.has(h)) continue;
    for (const [id, n] of per) v.push(`block ${id.split('|')[1]}: ${n} ordinal(s) carry handle ${JSON.stringify(h)}, which has no handle key`);
  }

  // ---- affinities ----
  const affine = new Set<string>(); // "host|family|cidr"
  for (const [key, value] of kv) {
    const m = AFFINITY_KEY.exec(key);
    if (!m || !m[1] || !m[2] || !m[3]) continue;
    const [host, family, cidrText] = [m[1], m[2], keyPartToCidr(m[3])];
    affine.add(`${host}|${family}|${cidrText}`);
    let raw: unknown;
    try {
      raw = JSON.parse(value);
    } catch {
      v.push(`${key}: value is not JSON`);
      continue;
    }
    if (!isObject(raw) || raw.state !== 'confirmed') v.push(`${key}: affinity state is ${JSON.stringify(isObject(raw) ? raw.state : raw)}, expected "confirmed"`);
    const b = blocks.get(blockId(family, cidrText));
    if (!b) v.push(`${key}: names block ${cidrText}, which does not exist`);
    else if (b.affinity !== `host:${host}`) v.push(`${key}: block ${cidrText} has affinity ${JSON.stringify(b.affinity)}, expected "host:${host}"`);
  }
  for (const b of blocks.values()) {
    if (typeof b.affinity !== 'string' || !b.affinity.startsWith('host:')) continue;
    const host = b.affinity.slice('host:'.length);
    const cidrText = `${b.key.slice(b.key.lastIndexOf('/') + 1).replace(/-(\d+)$/, '/$1')}`;
    if (!affine.has(`${host}|${b.cidr.family}|${cidrText}`)) v.push(`${b.key}: affine to ${host}, but that host has no affinity key for it`);
  }
  return v;
}

const WEP_KEY = /^\/calico\/resources\/v3\/projectcalico\.org\/workloadendpoints\//;

/** Workload endpoints whose addresses no block allocates any more (their container lost its IPs). */
export function checkEndpoints(kv: Map<string, string>): string[] {
  const allocated = new Set<string>();
  for (const [key, value] of kv) {
    const m = BLOCK_KEY.exec(key);
    if (!m) continue;
    try {
      const b = JSON.parse(value) as { cidr?: string; allocations?: (number | null)[] };
      const c = parseCidr(b.cidr ?? '');
      if (!c) continue;
      (b.allocations ?? []).forEach((a, ord) => {
        if (a !== null) allocated.add(`${formatAddress(c, ord)}`);
      });
    } catch {
      // reported by checkIpamInvariants
    }
  }
  const v: string[] = [];
  for (const [key, value] of kv) {
    if (!WEP_KEY.test(key)) continue;
    let nets: string[] = [];
    try {
      nets = ((JSON.parse(value) as { spec?: { ipNetworks?: string[] } }).spec?.ipNetworks ?? []);
    } catch {
      v.push(`${key}: value is not JSON`);
      continue;
    }
    if (nets.length === 0) v.push(`${key}: endpoint has no addresses`);
    for (const n of nets) {
      const ip = n.split('/')[0] ?? '';
      if (!allocated.has(ip)) v.push(`${key}: address ${ip} is not allocated in any block`);
    }
  }
  return v;
}

function formatAddress(c: Cidr, ord: number): string {
  return formatIp(c.family, c.base + BigInt(ord));
}
