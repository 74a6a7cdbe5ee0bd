import type { NetConf } from '../cni/config';
import type { Store } from '../store/store';
import { resolveEtcdConfig } from './config';
import { HttpEtcdStore } from './http-store';

/** Opens the datastore a netconf names (with ETCD_* variables as fallbacks), over the chosen transport. */
export async function openStore(conf: NetConf, env: Readonly<Record<string, string | undefined>> = process.env): Promise<Store> {
  const cfg = resolveEtcdConfig(conf, env);
  if (cfg.transport === 'http') return new HttpEtcdStore(cfg);
  // A chunk of its own (a compressed part of the binary), loaded only on this path: grpc-js and
  // protobufjs would be most of a plugin's start-up time.
  const { EtcdStore } = await import('./store');
  return EtcdStore.connect(cfg);
}
