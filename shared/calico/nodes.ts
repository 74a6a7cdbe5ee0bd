import { CniError, ErrorCode } from '../cni/errors';
import { keys } from './keys';
import { decodeNode, newMetadata, resource, type CalicoNode } from './model';
import type { Store } from '../store/store';
import { parseCidr } from '../ipam/cidr';

export interface NodeUpdate {
  ipv4Address?: string;
  ipv6Address?: string;
  labels?: Record<string, string>;
}

/** Creates or updates a Calico Node: its BGP addresses (where other hosts route its blocks) and labels. */
export async function setNode(store: Store, name: string, update: NodeUpdate): Promise<CalicoNode> {
  for (const [what, v, fam] of [['ipv4Address', update.ipv4Address, 4], ['ipv6Address', update.ipv6Address, 6]] as const) {
    if (v === undefined) continue;
    const c = parseCidr(v.includes('/') ? v : `${v}/${fam === 4 ? 32 : 128}`);
    if (!c || c.family !== fam) throw new CniError(ErrorCode.InvalidConfig, `invalid ${what} ${JSON.stringify(v)}: expected an IPv${fam} address with prefix, e.g. ${fam === 4 ? '10.0.0.1/24' : 'fd00::1/64'}`);
  }
  for (let attempt = 0; attempt < 10; attempt++) {
    const [res] = await store.read([{ key: keys.node(name) }]);
    const kv = res?.[0];
    const node: CalicoNode = kv ? decodeNode(kv.value) : { kind: 'Node', apiVersion: 'projectcalico.org/v3', metadata: newMetadata(name), spec: {} };
    const bgp = { ...((node.spec?.bgp ?? {}) as Record<string, unknown>) };
    if (update.ipv4Address) bgp.ipv4Address = update.ipv4Address;
    if (update.ipv6Address) bgp.ipv6Address = update.ipv6Address;
    const metadata = { ...node.metadata, labels: { ...(node.metadata.labels ?? {}), ...(update.labels ?? {}) } };
    if (Object.keys(metadata.labels).length === 0) delete (metadata as { labels?: unknown }).labels;
    delete metadata.resourceVersion;
    const spec = { ...(node.spec ?? {}), ...(Object.keys(bgp).length ? { bgp } : {}) };
    const r = await store.txn([{ key: keys.node(name), modRevision: kv?.modRevision ?? 0 }], [{ op: 'put', key: keys.node(name), value: resource('Node', metadata, spec) }]);
    if (r.succeeded) return { ...node, metadata, spec };
  }
  throw new CniError(ErrorCode.TryAgainLater, `node ${name} kept changing; try again`);
}
