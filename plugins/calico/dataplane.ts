import { randomBytes } from 'node:crypto';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import type { Logger } from '../../shared/cni/log';
import { failedBatchLine, ip, ipHostChanges, netnsRef, run, type NetnsRef } from '../../shared/netlink/exec';
import { linkAlias, linkExists, netnsExists } from '../../shared/netlink/link';
import { deleteHostLink } from '../../shared/netlink/link-delete';
import { writeSysctl } from '../../shared/netlink/sysctl';
import type { Family } from '../../shared/calico/keys';

/*
 * Calico's workload plumbing (upstream dataplane_linux.go), done with iproute2: a veth pair created from
 * inside the container namespace with its peer born in the host namespace (no costly move between
 * namespaces), the host end with MAC ee:ee:ee:ee:ee:ee and proxy ARP, the container end with a /32 and
 * routes via 169.254.1.1, and a /32 host route to the workload.
 */

export const HOST_MAC = 'ee:ee:ee:ee:ee:ee';
export const GATEWAY_V4 = '169.254.1.1';
/** The EUI-64 link-local address of HOST_MAC, which the host end gets as soon as it is up. */
export const GATEWAY_V6 = 'fe80::ecee:eeff:feee:eeee';
/** Written to the host veth's ifalias, so DEL only removes a veth that belongs to its container. */
export const ALIAS_PREFIX = 'calico-ts:';

export interface WorkloadIp {
  family: Family;
  ip: string;
}

export interface Workload {
  containerId: string;
  netns: string;
  ifname: string;
  hostIfname: string;
  /** Taken instead of hostIfname when that belongs to another container (see WorkloadIdentity). */
  hostIfnameFallback: string | undefined;
  mtu: number;
  numQueues: number;
  ips: readonly WorkloadIp[];
  allowIpForwarding: boolean;
  /**
   * Kubernetes names the host veth after the pod, so a veth of that name owned by another container is an
   * earlier sandbox of the same pod and is replaced (upstream). Otherwise the name comes from the container
   * id, and another owner means two containers collide on it.
   */
  vethNamedByPod: boolean;
}

/** A random locally administered unicast MAC for the container end, so the result needs no read-back. */
export function randomMac(): string {
  const b = randomBytes(6);
  b[0] = ((b[0] ?? 0) & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

function requireNetns(path: string): NetnsRef {
  if (!netnsExists(path)) throw new CniError(ErrorCode.UnknownContainer, `failed to open netns ${JSON.stringify(path)}: no such file`);
  return netnsRef(path);
}

const prefixLen = (f: Family) => (f === 4 ? 32 : 128);

/**
 * `ip -batch` reads quotes and "#" (a comment) in its input itself, so an interface name holding them,
 * though legal for Linux, would be misread: "eth1" in quotes would create eth1, ab#cd a broken command.
 */
export function validateBatchIfname(name: string): void {
  if (/["'#]/.test(name)) {
    throw new CniError(ErrorCode.InvalidEnv, `invalid CNI_IFNAME ${JSON.stringify(name)}: calico cannot use an interface name containing a quote or "#"`);
  }
}

/** The container-side commands, run as one `ip -batch` inside the container namespace. */
export function containerBatch(w: Workload, containerMac: string): string[] {
  const queues = w.numQueues > 1 ? ` numtxqueues ${w.numQueues} numrxqueues ${w.numQueues}` : '';
  const lines = [
    `link add ${w.ifname} mtu ${w.mtu} address ${containerMac}${queues} type veth peer name ${w.hostIfname} mtu ${w.mtu} address ${HOST_MAC}${queues} netns ${process.pid}`,
    `link set ${w.ifname} up`,
  ];
  const v4 = w.ips.filter((a) => a.family === 4);
  const v6 = w.ips.filter((a) => a.family === 6);
  if (v4.length) lines.push(`route add ${GATEWAY_V4} dev ${w.ifname} scope link`, `route add default via ${GATEWAY_V4} dev ${w.ifname}`);
  for (const a of v4) lines.push(`addr add ${a.ip}/32 dev ${w.ifname}`);
  // nodad: no duplicate address detection wait (1-2 s per pod upstream saw before disabling it).
  for (const a of v6) lines.push(`addr add ${a.ip}/128 dev ${w.ifname} nodad`);
  if (v6.length) lines.push(`route add default via ${GATEWAY_V6} dev ${w.ifname}`);
  return lines;
}

function hostSysctls(w: Workload, log: Logger): void {
  const h = w.hostIfname;
  if (w.ips.some((a) => a.family === 4)) {
    writeSysctl(`net.ipv4.conf.${h}.route_localnet`, '1');
    try {
      writeSysctl(`net.ipv4.neigh.${h}.proxy_delay`, '0');
    } catch (e) {
      log.warn('could not set proxy_delay', { error: (e as Error).message });
    }
    writeSysctl(`net.ipv4.conf.${h}.proxy_arp`, '1');
    writeSysctl(`net.ipv4.conf.${h}.forwarding`, '1');
  }
  if (w.ips.some((a) => a.family === 6)) {
    writeSysctl(`net.ipv6.conf.${h}.accept_dad`, '0');
    writeSysctl(`net.ipv6.conf.${h}.disable_ipv6`, '0');
    writeSysctl(`net.ipv6.conf.${h}.proxy_ndp`, '1');
    writeSysctl(`net.ipv6.conf.${h}.forwarding`, '1');
  }
  try {
    writeSysctl(`net.ipv6.conf.${h}.accept_ra`, '0');
  } catch (e) {
    log.debug('could not set accept_ra', { error: (e as Error).message });
  }
}

async function explainRouteConflict(a: WorkloadIp, hostIfname: string): Promise<CniError | undefined> {
  const r = await ip(['-j', a.family === 6 ? '-6' : '-4', 'route', 'show', 'exact', `${a.ip}/${prefixLen(a.family)}`]);
  try {
    const routes = JSON.parse(r.stdout || '[]') as { dev?: string }[];
    const other = routes.find((x) => x.dev && x.dev !== hostIfname);
    if (other) return new CniError(ErrorCode.Netlink, `route ${a.ip}/${prefixLen(a.family)} already exists for an interface other than ${hostIfname}: ${other.dev}`);
  } catch {
    // fall through to the generic error
  }
  return undefined;
}

async function setUpHostSide(w: Workload, ns: NetnsRef, log: Logger): Promise<void> {
  hostSysctls(w, log);
  const hostLines = [`link set ${w.hostIfname} alias ${ALIAS_PREFIX}${w.containerId}`, `link set ${w.hostIfname} up`];
  for (const a of w.ips) hostLines.push(`route add ${a.ip}/${prefixLen(a.family)} dev ${w.hostIfname} scope link`);
  const host = await ipHostChanges(hostLines, [w.hostIfname]);
  if (host.exitCode !== 0) {
    for (const a of w.ips) {
      const conflict = await explainRouteConflict(a, w.hostIfname);
      if (conflict) throw conflict;
    }
    throw new CniError(ErrorCode.Netlink, `failed to set up host side ${w.hostIfname}: ${host.stderr.trim().replace(/\s+/g, ' ')}`);
  }
  if (w.allowIpForwarding) {
    const r = await run('nsenter', [`--net=${ns.path}`, '--', 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
    if (r.exitCode !== 0) throw new CniError(ErrorCode.Netlink, `failed to enable IP forwarding in ${w.netns}: ${r.stderr.trim()}`);
  }
}

/** Who a host veth belongs to, by the alias calico-ts gives it; undefined when it carries none. */
function vethOwner(name: string): string | undefined {
  const alias = linkAlias(name);
  return alias?.startsWith(ALIAS_PREFIX) ? alias.slice(ALIAS_PREFIX.length) : undefined;
}

/**
 * The host veth name this ADD takes: the usual one unless another container owns it, then the fallback.
 * A leftover of an earlier ADD of this workload that was never DELeted is deleted (upstream does the same);
 * so is another pod-named (Kubernetes) veth, an earlier sandbox of the same pod. A veth without an alias
 * is another ADD between creating its pair and naming it (a pair left behind dies with its namespace):
 * it counts as another container's, never as a leftover to delete.
 */
async function claimHostIfname(w: Workload, log: Logger): Promise<string> {
  const candidates = [w.hostIfname, ...(w.vethNamedByPod || !w.hostIfnameFallback ? [] : [w.hostIfnameFallback])];
  const owners: string[] = [];
  for (const name of candidates) {
    if (!linkExists(name)) return name;
    const owner = vethOwner(name);
    if (w.vethNamedByPod || owner === w.containerId) {
      log.warn('deleting stale host veth', { name, owner });
      await deleteHostLink(name);
      return name;
    }
    owners.push(owner === undefined ? `${name} is being set up by another ADD` : `${name} belongs to container ${owner}`);
  }
  // Upstream would delete the other pod's veth, cutting it off.
  throw new CniError(ErrorCode.Netlink, `no free host interface name for container ${w.containerId}: ${owners.join('; ')}`);
}

/** What the first step of a workload's plumbing made: the pair, under this host veth name, and the container end. */
export interface ContainerSide {
  workload: Workload;
  ns: NetnsRef;
  hostIfname: string;
  containerMac: string;
}

/**
 * Step one of a workload's plumbing: the veth pair and the container end, or nothing. A failure removes
 * the pair this call created and never touches an interface it did not create.
 */
export async function setUpContainerSide(w: Workload, log: Logger): Promise<ContainerSide> {
  const ns = requireNetns(w.netns);
  for (let attempt = 1; ; attempt++) {
    const hostIfname = await claimHostIfname(w, log);
    const workload = { ...w, hostIfname };
    const containerMac = randomMac();
    const batch = await ip([], { ns, batch: containerBatch(workload, containerMac) });
    if (batch.exitCode === 0) {
      log.debug('container side done', { t: log.elapsed() });
      return { workload, ns, hostIfname, containerMac };
    }
    const failed = failedBatchLine(batch.stderr);
    // Line 1 creates the pair. If it failed, nothing of ours exists, and a host veth of that name is another
    // ADD's that took the name since the claim: claim again (the fallback name this time), once.
    if (failed === 1) {
      if (attempt === 1 && !w.vethNamedByPod && /File exists/i.test(batch.stderr) && linkExists(hostIfname)) continue;
    } else if (linkExists(hostIfname)) {
      await deleteHostLink(hostIfname);
    }
    throw new CniError(ErrorCode.Netlink, `failed to set up ${w.ifname} in netns ${JSON.stringify(w.netns)}: ${batch.stderr.trim().replace(/\s+/g, ' ')}`);
  }
}

/** Step two: the host end (sysctls, alias, up, the route to the workload). A failure removes the pair. */
export async function setUpHostEnd(side: ContainerSide, log: Logger): Promise<void> {
  try {
    await setUpHostSide(side.workload, side.ns, log);
  } catch (e) {
    await deleteHostLink(side.hostIfname);
    throw e;
  }
  log.debug('host side done', { t: log.elapsed() });
}

export interface TearDownTarget {
  containerId: string;
  netns: string;
  ifname: string;
  /** The names the host veth may have (the usual one and the fallback); only this container's is removed. */
  hostIfnames: readonly string[];
}

/** The host veth of this container among the candidate names, by its alias. */
export function ownHostVeth(containerId: string, names: readonly string[]): string | undefined {
  return names.find((n) => linkExists(n) && vethOwner(n) === containerId);
}

/**
 * Removes the workload's interfaces; whatever is already gone is fine. A host veth is removed only if its
 * alias names this container (or `force`, for the rollback of our own ADD): after a StatefulSet pod is
 * replaced, a newer pod with the same name owns a veth of the same name (upstream calico#10375). Deleting
 * our host veth deletes its peer, the pod's end, with it: no namespace switch, and in the node agent no
 * fork either. Without one, the pod's interface is deleted by name in its namespace, as upstream does.
 */
export async function tearDown(t: TearDownTarget, log: Logger, opts: { force?: boolean } = {}): Promise<void> {
  const own = opts.force ? t.hostIfnames.find((n) => linkExists(n)) : ownHostVeth(t.containerId, t.hostIfnames);
  if (own) {
    const r = await deleteHostLink(own);
    if (r.exitCode !== 0 && linkExists(own)) throw new CniError(ErrorCode.Netlink, `failed to delete host veth ${own}: ${r.stderr.trim()}`);
    return;
  }
  if (t.netns !== '' && netnsExists(t.netns)) {
    const r = await ip(['link', 'del', t.ifname], { ns: netnsRef(t.netns) });
    if (r.exitCode !== 0 && !/Cannot find device|does not exist/i.test(r.stderr)) {
      throw new CniError(ErrorCode.Netlink, `failed to delete ${t.ifname} in netns ${JSON.stringify(t.netns)}: ${r.stderr.trim()}`);
    }
  }
  for (const name of t.hostIfnames.filter((n) => linkExists(n))) {
    log.info('leaving host veth that belongs to another container', { name, alias: linkAlias(name) });
  }
}

interface IpLink {
  ifname?: string;
  address?: string;
  mtu?: number;
  flags?: string[];
  addr_info?: { family?: string; local?: string; prefixlen?: number }[];
}
interface IpRoute {
  dst?: string;
  gateway?: string;
  dev?: string;
  scope?: string;
}

/** What CHECK compares against prevResult: the container interface, its addresses and routes. */
export async function inspectContainer(netns: string, ifname: string, v6: boolean): Promise<{ link: IpLink | undefined; routes: IpRoute[] }> {
  const ns = requireNetns(netns);
  const r = await ip(['-j'], { ns, batch: [`addr show dev ${ifname}`, 'route show'] });
  const parts = r.stdout.split('\n').filter((l) => l.trim().startsWith('['));
  const links = JSON.parse(parts[0] ?? '[]') as IpLink[];
  let routes = JSON.parse(parts[1] ?? '[]') as IpRoute[];
  if (v6) {
    const r6 = await ip(['-j', '-6', 'route', 'show'], { ns });
    routes = routes.concat(JSON.parse(r6.stdout || '[]') as IpRoute[]);
  }
  return { link: links[0], routes };
}

export async function hostRoutesVia(hostIfname: string): Promise<IpRoute[]> {
  const v4 = await ip(['-j', 'route', 'show', 'dev', hostIfname]);
  const v6 = await ip(['-j', '-6', 'route', 'show', 'dev', hostIfname]);
  return [...(JSON.parse(v4.stdout || '[]') as IpRoute[]), ...(JSON.parse(v6.stdout || '[]') as IpRoute[])];
}
