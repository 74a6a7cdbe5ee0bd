/** Network configurations for tests. */

export interface IpamConfOptions {
  endpoint: string;
  name?: string;
  cniVersion?: string;
  nodename?: string;
  /** Merged into the ipam section ({type: "calico-ipam"} is always there). */
  ipam?: Record<string, unknown>;
  /** Merged into the top level last, so it can override anything. */
  extra?: Record<string, unknown>;
}

/** A netconf that runs calico-ipam directly against the given etcd. */
export function ipamConf(o: IpamConfOptions): string {
  return JSON.stringify({
    cniVersion: o.cniVersion ?? '1.0.0',
    name: o.name ?? 'net1',
    type: 'calico-ipam',
    datastore_type: 'etcdv3',
    etcd_endpoints: o.endpoint,
    nodename: o.nodename ?? 'node1',
    ipam: { type: 'calico-ipam', ...(o.ipam ?? {}) },
    ...(o.extra ?? {}),
  });
}
