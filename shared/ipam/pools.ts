import { CniError, ErrorCode } from '../cni/errors';
import { keys, parseBlockKey } from '../calico/keys';
import { decodeBlock, decodePool, newMetadata, resource, withPoolDefaults, type IpPool } from '../calico/model';
import type { Store } from '../store/store';
import { isEmpty } from './block';
import { cidrContains, cidrsOverlap, formatCidr, parseCidr } from './cidr';

/** Pool management for operators and the demo; pools are Calico v3 IPPool resources, as calicoctl writes. */

export interface PoolSpecInput {
  cidr: string;
  name?: string;
  blockSize?: number;
  disabled?: boolean;
  natOutgoing?: boolean;
  nodeSelector?: string;
}

/** Upstream's test convention: 192.168.0.0/16 -> 192-168-0-0-16. */
export function defaultPoolName(cidr: string): string {
  return cidr.replace(/[.:/]/g, '-');
}

export async function listPools(store: Store): Promise<IpPool[]> {
  const [res] = await store.read([{ prefix: keys.poolPrefix }]);
  return (res ?? []).map((kv) => decodePool(kv.value));
}

/** Calico's block sizes when a pool names none. */
export const DEFAULT_BLOCK_SIZE = { 4: 26, 6: 122 } as const;

export function buildPool(input: PoolSpecInput): IpPool {
  const cidr = parseCidr(input.cidr);
  if (!cidr) throw new CniError(ErrorCode.InvalidConfig, `invalid pool CIDR ${JSON.stringify(input.cidr)}`);
  const [min, max] = cidr.family === 4 ? [20, 32] : [116, 128];
  const blockSize = input.blockSize ?? DEFAULT_BLOCK_SIZE[cidr.family];
  if (!Number.isInteger(blockSize) || blockSize < min || blockSize > max) {
    throw new CniError(ErrorCode.InvalidConfig, `invalid block size ${blockSize} for an IPv${cidr.family} pool: must be ${min}-${max}`);
  }
  if (blockSize < cidr.prefix) {
    throw new CniError(ErrorCode.InvalidConfig, `block size /${blockSize} is larger than the pool ${formatCidr(cidr)}`);
  }
  const canonical = formatCidr(cidr);
  const name = input.name ?? defaultPoolName(canonical);
  if (!/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/.test(name)) {
    throw new CniError(ErrorCode.InvalidConfig, `invalid pool name ${JSON.stringify(name)}: lower-case letters, digits, '.' and '-'`);
  }
  const spec: IpPool['spec'] = { cidr: canonical, blockSize, natOutgoing: input.natOutgoing ?? false };
  if (input.disabled) spec.disabled = true;
  if (input.nodeSelector) spec.nodeSelector = input.nodeSelector;
  return withPoolDefaults({ kind: 'IPPool', apiVersion: 'projectcalico.org/v3', metadata: newMetadata(name), spec });
}

/** Creates a pool; refuses a name in use or a CIDR overlapping another pool. */
export async function addPool(store: Store, input: PoolSpecInput): Promise<IpPool> {
  const pool = buildPool(input);
  const existing = await listPools(store);
  const mine = parseCidr(pool.spec.cidr);
  for (const p of existing) {
    const other = parseCidr(p.spec.cidr);
    if (p.metadata.name === pool.metadata.name) throw new CniError(ErrorCode.InvalidConfig, `pool ${pool.metadata.name} already exists (${p.spec.cidr})`);
    if (mine && other && cidrsOverlap(mine, other)) {
      throw new CniError(ErrorCode.InvalidConfig, `pool ${pool.spec.cidr} overlaps existing pool ${p.metadata.name} (${p.spec.cidr})`);
    }
  }
  const { spec, metadata } = pool;
  const res = await store.txn([{ key: keys.pool(metadata.name), modRevision: 0 }], [{ op: 'put', key: keys.pool(metadata.name), value: resource('IPPool', metadata, spec) }]);
  if (!res.succeeded) throw new CniError(ErrorCode.TryAgainLater, `pool ${metadata.name} was created concurrently`);
  return pool;
}

/** Removes a pool by name or CIDR; refuses while addresses from it are in use unless forced. */
export async function removePool(store: Store, nameOrCidr: string, force = false): Promise<IpPool> {
  const pools = await listPools(store);
  const want = parseCidr(nameOrCidr);
  const pool = pools.find((p) => p.metadata.name === nameOrCidr || (want && p.spec.cidr === formatCidr(want)));
  if (!pool) throw new CniError(ErrorCode.InvalidConfig, `no pool named ${JSON.stringify(nameOrCidr)}`);
  const cidr = parseCidr(pool.spec.cidr);
  if (!cidr) throw new CniError(ErrorCode.InvalidConfig, `pool ${pool.metadata.name} has an invalid CIDR`);
  const [blocks] = await store.read([{ prefix: keys.blockPrefix(cidr.family) }]);
  const inUse = (blocks ?? []).filter((kv) => {
    const b = parseBlockKey(kv.key);
    const bc = b && parseCidr(b.cidr);
    return bc && cidrContains(cidr, bc.family, bc.base) && !isEmpty(decodeBlock(kv.value));
  });
  if (inUse.length > 0 && !force) {
    throw new CniError(ErrorCode.InvalidConfig, `pool ${pool.metadata.name} still has addresses in use in ${inUse.length} block(s); release them first or use --force`);
  }
  await store.txn([], [{ op: 'delete', key: keys.pool(pool.metadata.name) }]);
  return pool;
}
