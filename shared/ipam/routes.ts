import { keys, parseAffinityKey, type Family } from '../calico/keys';
import { affinityConfirmed, decodeAffinity, decodeNode } from '../calico/model';
import type { Store } from '../store/store';

/**
 * The routes BIRD would program from Calico's block affinities: for this node's own blocks a blackhole
 * (the /32 host routes to local pods are more specific), for every other node's block a route via that
 * node's address (Node spec.bgp.ipv4Address / ipv6Address).
 */
export interface BlockRoute {
  family: Family;
  cidr: string;
  owner: string;
  /** Undefined for this node's own blocks (blackhole). */
  via?: string;
}

export interface RoutePlan {
  routes: BlockRoute[];
  /** Blocks whose owner has no address of that family, so no route can be made. */
  unreachable: BlockRoute[];
}

function stripPrefix(addr: string | undefined): string | undefined {
  return addr ? addr.split('/')[0] : undefined;
}

export async function planRoutes(store: Store, node: string): Promise<RoutePlan> {
  const [affs, nodes] = await store.read([{ prefix: keys.allAffinitiesPrefix }, { prefix: keys.node('') }]);
  const addrs = new Map<string, { v4?: string; v6?: string }>();
  for (const kv of nodes ?? []) {
    const n = decodeNode(kv.value);
    const bgp = (n.spec?.bgp ?? {}) as { ipv4Address?: string; ipv6Address?: string };
    const a: { v4?: string; v6?: string } = {};
    const v4 = stripPrefix(bgp.ipv4Address);
    const v6 = stripPrefix(bgp.ipv6Address);
    if (v4) a.v4 = v4;
    if (v6) a.v6 = v6;
    addrs.set(n.metadata.name, a);
  }
  const plan: RoutePlan = { routes: [], unreachable: [] };
  for (const kv of affs ?? []) {
    const a = parseAffinityKey(kv.key);
    if (!a || !affinityConfirmed(decodeAffinity(kv.value))) continue;
    if (a.host === node) {
      plan.routes.push({ family: a.family, cidr: a.cidr, owner: a.host });
      continue;
    }
    const via = a.family === 4 ? addrs.get(a.host)?.v4 : addrs.get(a.host)?.v6;
    if (via) plan.routes.push({ family: a.family, cidr: a.cidr, owner: a.host, via });
    else plan.unreachable.push({ family: a.family, cidr: a.cidr, owner: a.host });
  }
  return plan;
}

/** As `ip route` arguments, e.g. "blackhole 10.244.1.0/26 proto bird" or "10.244.2.0/26 via 10.99.0.2 proto bird". */
export function routeArgs(r: BlockRoute): string {
  return r.via ? `${r.cidr} via ${r.via} proto bird` : `blackhole ${r.cidr} proto bird`;
}
