import type { NetConf } from '../cni/config';
import type { Store } from '../store/store';
import { resolveEtcdConfig } from './config';
import { EtcdStore } from './store';

/** Opens the datastore a netconf names (with ETCD_* variables as fallbacks). */
export async function openStore(conf: NetConf, env: Readonly<Record<string, string | undefined>> = process.env): Promise<Store> {
  return EtcdStore.connect(resolveEtcdConfig(conf, env));
}
