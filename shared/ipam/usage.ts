import { keys, parseBlockKey } from '../calico/keys';
import { decodeBlock, decodePool, type IpPool } from '../calico/model';
import type { Store } from '../store/store';
import { freeCount } from './block';
import { cidrContains, cidrSize, parseCidr } from './cidr';

/** What `calico-ipam show` reports: per pool and per block, who owns it and how full it is. */
export interface BlockUsage {
  cidr: string;
  pool: string | undefined;
  affinity: string | null;
  size: number;
  used: number;
  free: number;
  handles: string[];
}

export interface PoolUsage {
  name: string;
  cidr: string;
  disabled: boolean;
  blockSize: number;
  size: string;
  used: number;
  blocks: number;
}

export interface IpamUsage {
  pools: PoolUsage[];
  blocks: BlockUsage[];
}

export async function ipamUsage(store: Store): Promise<IpamUsage> {
  const [poolKvs, v4, v6] = await store.read([{ prefix: keys.poolPrefix }, { prefix: keys.blockPrefix(4) }, { prefix: keys.blockPrefix(6) }]);
  const pools: IpPool[] = (poolKvs ?? []).map((kv) => decodePool(kv.value));
  const poolOf = (cidr: string) => {
    const c = parseCidr(cidr);
    return c ? pools.find((p) => {
      const pc = parseCidr(p.spec.cidr);
      return pc && cidrContains(pc, c.family, c.base);
    }) : undefined;
  };
  const blocks: BlockUsage[] = [...(v4 ?? []), ...(v6 ?? [])].flatMap((kv) => {
    if (!parseBlockKey(kv.key)) return [];
    const b = decodeBlock(kv.value);
    const used = b.allocations.filter((a) => a !== null).length;
    const handles = [...new Set(b.allocations.flatMap((a) => (a === null ? [] : [b.attributes?.[a]?.handle_id ?? '?'])))];
    return [{ cidr: b.cidr, pool: poolOf(b.cidr)?.metadata.name, affinity: b.affinity ?? null, size: b.allocations.length, used, free: freeCount(b), handles }];
  });
  return {
    blocks,
    pools: pools.map((p) => {
      const c = parseCidr(p.spec.cidr);
      const mine = blocks.filter((b) => b.pool === p.metadata.name);
      return {
        name: p.metadata.name,
        cidr: p.spec.cidr,
        disabled: p.spec.disabled ?? false,
        blockSize: p.spec.blockSize ?? 0,
        size: c ? cidrSize(c).toString() : '?',
        used: mine.reduce((n, b) => n + b.used, 0),
        blocks: mine.length,
      };
    }),
  };
}
