import { CniError, ErrorCode } from '../cni/errors';
import { keys } from '../calico/keys';
import { IpamConfigSchema, type IpamConfig } from '../calico/model';
import type { Store } from '../store/store';

export type IpamConfigUpdate = Partial<Pick<IpamConfig, 'strict_affinity' | 'auto_allocate_blocks' | 'maxBlocksPerHost' | 'ipCooldownSeconds'>>;

/**
 * Reads and (when given changes) updates /calico/ipam/v2/config with upstream's setter rules: strict
 * affinity off together with automatic block allocation off leaves no way to get an address.
 */
export async function updateIpamConfig(store: Store, update: IpamConfigUpdate): Promise<IpamConfig> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const [res] = await store.read([{ key: keys.ipamConfig }]);
    const kv = res?.[0];
    const current: IpamConfig = kv ? IpamConfigSchema.parse(JSON.parse(kv.value)) : {};
    if (Object.keys(update).length === 0) return current;
    // An object without auto_allocate_blocks reads as false in upstream's Go, so it is always written.
    const next: IpamConfig = { auto_allocate_blocks: kv ? (current.auto_allocate_blocks ?? false) : true, ...current, ...update };
    if (next.strict_affinity === false && next.auto_allocate_blocks === false) {
      throw new CniError(ErrorCode.InvalidConfig, 'strict_affinity false with auto_allocate_blocks false leaves hosts no way to get addresses');
    }
    // Upstream's omitempty fields are omitted at zero; our ipCooldownSeconds keeps 0 (it means "off").
    const stored = Object.fromEntries(
      Object.entries(next).filter(([k, v]) => v !== undefined && (k === 'ipCooldownSeconds' || k === 'auto_allocate_blocks' || (v !== 0 && v !== false))),
    );
    const r = await store.txn([{ key: keys.ipamConfig, modRevision: kv?.modRevision ?? 0 }], [{ op: 'put', key: keys.ipamConfig, value: JSON.stringify(stored) }]);
    if (r.succeeded) return stored;
  }
  throw new CniError(ErrorCode.TryAgainLater, 'IPAM config kept changing; try again');
}
