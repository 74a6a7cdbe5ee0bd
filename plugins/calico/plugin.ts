import fs from 'node:fs';
import { validAttachments, type NetConf } from '../../shared/cni/config';
import { delegate } from '../../shared/cni/delegate';
import { CniError, ErrorCode, errorMessage, toCniError } from '../../shared/cni/errors';
import { isV6Cidr, parseAnyResult, type Result, type Route } from '../../shared/cni/result';
import type { Context, PluginImpl } from '../../shared/cni/skel';
import { VERSION } from '../../shared/about';
import { clusterInformation, buildWorkloadEndpoint, identify, profileFor, workloadEndpointKey, type WorkloadIdentity } from '../../shared/calico/endpoint';
import { keys } from '../../shared/calico/keys';
import { decodeClusterInformation, decodeWorkloadEndpoint, parseJsonAt, type WorkloadEndpoint } from '../../shared/calico/model';
import { DEFAULT_NODENAME_FILE, determineNodename, validateNodename } from '../../shared/calico/nodename';
import { openStore } from '../../shared/etcd/connect';
import { ipamAdd, ipamCheck, ipamDel, ipamGc, ipamStatus, releasedHandleIds, type IpamCall } from '../../shared/ipam/cni-ipam';
import type { KnownKeys } from '../../shared/ipam/allocator';
import { DEFAULT_BLOCK_SIZE } from '../../shared/ipam/pools';
import { canonicalCidr, parseIp } from '../../shared/ipam/cidr';
import { linkAlias } from '../../shared/netlink/link';
import { deleteHostLink } from '../../shared/netlink/link-delete';
import type { Store, KeyValue, Op, Compare } from '../../shared/store/store';
import { ALIAS_PREFIX, GATEWAY_V4, GATEWAY_V6, HOST_MAC, hostRoutesVia, inspectContainer, ownHostVeth, setUpContainerSide, setUpHostEnd, tearDown, validateBatchIfname, type WorkloadIp } from './dataplane';

const MTU_FILE = '/var/lib/calico/mtu';
const DEFAULT_MTU = 1500;

interface Session {
  ctx: Context;
  node: string;
  id: WorkloadIdentity;
  store: Store;
  inProcessIpam: boolean;
}

function nodenameGate(conf: NetConf): void {
  // Upstream demands calico/node's nodename file. Here there is no calico/node, so the file is only
  // required when the config names one explicitly and does not mark it optional.
  if (conf.nodename || conf.nodename_file_optional || !conf.nodename_file) return;
  if (!fs.existsSync(conf.nodename_file)) {
    throw new CniError(ErrorCode.InvalidConfig, `nodename file ${JSON.stringify(conf.nodename_file)} does not exist: write the node name there, set "nodename", or set "nodename_file_optional": true`);
  }
}

export function resolveMtu(conf: NetConf): number {
  if (conf.mtu) return conf.mtu;
  try {
    const n = Number(fs.readFileSync(MTU_FILE, 'utf8').trim());
    if (Number.isInteger(n) && n > 0) return n;
  } catch (e) {
    if (conf.require_mtu_file) throw new CniError(ErrorCode.InvalidConfig, `require_mtu_file is set but ${MTU_FILE} cannot be read: ${errorMessage(e)}`);
  }
  return DEFAULT_MTU;
}

async function withSession<T>(ctx: Context, fn: (s: Session) => Promise<T>): Promise<T> {
  nodenameGate(ctx.conf);
  const node = validateNodename(determineNodename({ ...ctx.conf, nodename_file: ctx.conf.nodename_file ?? DEFAULT_NODENAME_FILE }));
  const id = identify(ctx.env, node);
  const store = await openStore(ctx.conf, ctx.env.vars);
  try {
    return await fn({ ctx, node, id, store, inProcessIpam: ctx.conf.ipam?.type === 'calico-ipam' });
  } finally {
    await store.close();
  }
}

function ipamCall(s: Session): IpamCall {
  return { env: s.ctx.env, conf: s.ctx.conf, version: s.ctx.version, log: s.ctx.log, store: s.store, node: s.node };
}

/** IPAM ADD: in-process for calico-ipam (one process per pod), else the plugin named by ipam.type. */
async function ipamAddFor(s: Session): Promise<Result> {
  if (s.inProcessIpam) return ipamAdd(ipamCall(s));
  const type = s.ctx.conf.ipam?.type;
  if (!type) throw new CniError(ErrorCode.InvalidConfig, 'ipam.type is required');
  const r = await delegate({ plugin: type, verb: 'ADD', stdin: s.ctx.stdin, cniPath: s.ctx.env.path, env: s.ctx.env.vars, fallbackVersion: s.ctx.version });
  if (!r) throw new CniError(ErrorCode.Internal, `IPAM plugin ${type} returned no result`);
  return r;
}

async function ipamVerb(s: Session, verb: 'DEL' | 'CHECK', known?: KnownKeys): Promise<void> {
  if (s.inProcessIpam) {
    if (verb === 'DEL') await ipamDel(ipamCall(s), known);
    else await ipamCheck(ipamCall(s));
    return;
  }
  const type = s.ctx.conf.ipam?.type;
  if (type) await delegate({ plugin: type, verb, stdin: s.ctx.stdin, cniPath: s.ctx.env.path, env: s.ctx.env.vars, fallbackVersion: s.ctx.version });
}

/** Narrows every address to a single host (/32, /128), as the workload owns exactly that address. */
function workloadIps(r: Result): WorkloadIp[] {
  return (r.ips ?? []).map((c) => {
    const addr = c.address.split('/')[0] ?? '';
    const parsed = parseIp(addr);
    if (!parsed) throw new CniError(ErrorCode.DecodeFailure, `IPAM returned an invalid address ${JSON.stringify(c.address)}`);
    return { family: parsed.family, ip: addr };
  });
}

const cidrOf = (a: WorkloadIp) => `${a.ip}/${a.family === 4 ? 32 : 128}`;

function defaultRoutes(ips: readonly WorkloadIp[]): Route[] {
  const routes: Route[] = [];
  if (ips.some((a) => a.family === 4)) routes.push({ dst: '0.0.0.0/0', gw: GATEWAY_V4 });
  if (ips.some((a) => a.family === 6)) routes.push({ dst: '::/0', gw: GATEWAY_V6 });
  return routes;
}

function buildResult(s: Session, ips: readonly WorkloadIp[], hostIfname: string, containerMac: string, mtu: number): Result {
  const r: Result = {
    cniVersion: s.ctx.version,
    interfaces: [
      { name: hostIfname, mac: HOST_MAC },
      { name: s.ctx.env.ifname, mac: containerMac, mtu, sandbox: s.ctx.env.netns },
    ],
    ips: ips.map((a) => ({ interface: 1, address: cidrOf(a) })),
    routes: defaultRoutes(ips),
  };
  if (s.ctx.conf.dns) r.dns = s.ctx.conf.dns;
  return r;
}

interface Preamble {
  clusterInfo: KeyValue | undefined;
  profile: KeyValue | undefined;
  existing: { kv: KeyValue; wep: WorkloadEndpoint } | undefined;
  /** The other keys asked for, read along (DEL's release then need not read them itself). */
  along: KnownKeys;
}

/** One round trip: ClusterInformation, the network's profile, this workload's endpoint, and `alsoKeys`. */
async function readPreamble(s: Session, alsoKeys: readonly string[] = []): Promise<Preamble> {
  const [ci, profile, wep, ...along] = await s.store.read([
    { key: keys.clusterInformation },
    { key: keys.profile(s.ctx.conf.name) },
    { key: workloadEndpointKey(s.id) },
    ...alsoKeys.map((key) => ({ key })),
  ]);
  const clusterInfo = ci?.[0];
  if (clusterInfo && decodeClusterInformation(clusterInfo.value).spec.datastoreReady === false) {
    throw new CniError(ErrorCode.TryAgainLater, 'Calico is currently not ready to process requests: ClusterInformation default has datastoreReady false');
  }
  const wepKv = wep?.[0];
  return {
    clusterInfo,
    profile: profile?.[0],
    existing: wepKv ? { kv: wepKv, wep: parseJsonAt(wepKv.key, wepKv.value, decodeWorkloadEndpoint) } : undefined,
    along: new Map(alsoKeys.map((key, i) => [key, along[i]?.[0]])),
  };
}

/**
 * The endpoint, and the profile and ClusterInformation if missing, in one guarded transaction. Returns the
 * endpoint's new mod revision, so that a rollback removes exactly what it wrote.
 */
async function writeEndpoint(s: Session, pre: Preamble, wep: WorkloadEndpoint): Promise<number> {
  const key = workloadEndpointKey(s.id);
  const compares: Compare[] = [{ key, modRevision: pre.existing?.kv.modRevision ?? 0 }];
  const ops: Op[] = [{ op: 'put', key, value: JSON.stringify(wep) }];
  if (!pre.profile && !s.ctx.conf.policy?.type) {
    compares.push({ key: keys.profile(s.ctx.conf.name), modRevision: 0 });
    ops.push({ op: 'put', key: keys.profile(s.ctx.conf.name), value: profileFor(s.ctx.conf.name, s.id.orchestrator) });
  }
  if (!pre.clusterInfo) {
    compares.push({ key: keys.clusterInformation, modRevision: 0 });
    ops.push({ op: 'put', key: keys.clusterInformation, value: clusterInformation(VERSION) });
  }
  for (let attempt = 0; attempt < 5; attempt++) {
    const res = await s.store.txn(compares, ops);
    if (res.succeeded) return res.revision;
    // Only the profile or ClusterInformation can have been created meanwhile by another pod: re-read and retry.
    const fresh = await readPreamble(s);
    if ((fresh.existing?.kv.modRevision ?? 0) !== (pre.existing?.kv.modRevision ?? 0)) {
      throw new CniError(ErrorCode.TryAgainLater, `workload endpoint ${key} changed concurrently`);
    }
    for (let i = compares.length - 1; i >= 1; i--) {
      const c = compares[i] as Compare;
      if ((c.key === keys.profile(s.ctx.conf.name) && fresh.profile) || (c.key === keys.clusterInformation && fresh.clusterInfo)) {
        compares.splice(i, 1);
        ops.splice(i, 1);
      }
    }
  }
  throw new CniError(ErrorCode.TryAgainLater, `failed to write workload endpoint ${key}: too many concurrent changes`);
}

async function cmdAdd(s: Session): Promise<Result> {
  const { ctx, id } = s;
  const log = ctx.log;
  validateBatchIfname(ctx.env.ifname);
  const pre = await readPreamble(s);
  const mtu = resolveMtu(ctx.conf);

  // A repeated ADD for a workload that already has its endpoint: no IPAM, no networking (upstream).
  if (pre.existing && pre.existing.wep.spec.containerID === ctx.env.containerId) {
    const wep = pre.existing.wep;
    const profiles = wep.spec.profiles ?? [];
    if (!profiles.includes(ctx.conf.name) && !ctx.conf.policy?.type) {
      await writeEndpoint(s, pre, { ...wep, spec: { ...wep.spec, profiles: [...profiles, ctx.conf.name] } });
    }
    const ips = (wep.spec.ipNetworks ?? []).map((n) => ({ family: (isV6Cidr(n) ? 6 : 4) as 4 | 6, ip: n.split('/')[0] ?? '' }));
    log.info('endpoint exists; returning its addresses', { endpoint: id.name });
    return buildResult(s, ips, wep.spec.interfaceName ?? id.hostIfname, wep.spec.mac ?? '', mtu);
  }

  const ipamResult = await ipamAddFor(s);
  log.debug('ipam done', { t: log.elapsed() });
  let ips: WorkloadIp[] = [];
  let created: string | undefined;
  let written: number | undefined;
  try {
    ips = workloadIps(ipamResult);
    if (ips.length === 0) throw new CniError(ErrorCode.Internal, 'IPAM plugin returned no IP addresses in result');
    const side = await setUpContainerSide(
      {
        containerId: ctx.env.containerId,
        netns: ctx.env.netns,
        ifname: ctx.env.ifname,
        hostIfname: id.hostIfname,
        hostIfnameFallback: id.hostIfnameFallback,
        mtu,
        numQueues: ctx.conf.num_queues ?? 1,
        ips,
        allowIpForwarding: ctx.conf.container_settings?.allow_ip_forwarding ?? false,
        vethNamedByPod: id.orchestrator === 'k8s',
      },
      log,
    );
    const { hostIfname, containerMac } = side;
    created = hostIfname;
    const wep = buildWorkloadEndpoint(
      id,
      { profiles: ctx.conf.policy?.type ? [] : [ctx.conf.name], ipNetworks: ips.map(cidrOf), interfaceName: hostIfname, mac: containerMac },
      pre.existing?.wep.metadata,
    );
    // The host end and the endpoint record need nothing of each other: the endpoint's round trip runs
    // during the host's `ip` exec. Either failing undoes both (below).
    const [host, endpoint] = await Promise.allSettled([
      setUpHostEnd(side, log),
      writeEndpoint(s, pre, wep).then((rev) => {
        written = rev;
      }),
    ]);
    if (host.status === 'rejected') throw host.reason;
    if (endpoint.status === 'rejected') throw endpoint.reason;
    log.info('workload networked', { endpoint: id.name, ips: ips.map(cidrOf), hostIfname, t: log.elapsed() });
    return buildResult(s, ips, hostIfname, containerMac, mtu);
  } catch (e) {
    const err = toCniError(e);
    log.error('ADD failed; undoing', { error: err.message });
    if (written !== undefined) {
      const key = workloadEndpointKey(id);
      // Back to what was there before (a pod's earlier sandbox keeps its endpoint), unless changed since.
      const restore: Op = pre.existing ? { op: 'put', key, value: pre.existing.kv.value } : { op: 'delete', key };
      await s.store.txn([{ key, modRevision: written }], [restore]).catch((we: unknown) => log.error('rollback: failed to remove the endpoint', { error: errorMessage(we) }));
    }
    if (created) {
      await tearDown({ containerId: ctx.env.containerId, netns: ctx.env.netns, ifname: ctx.env.ifname, hostIfnames: [created] }, log, { force: true }).catch(
        (te: unknown) => log.error('rollback: failed to remove interfaces', { error: errorMessage(te) }),
      );
    }
    await ipamVerb(s, 'DEL').catch((re: unknown) => log.error('rollback: failed to release addresses', { error: errorMessage(re) }));
    throw err;
  }
}

/** The host veth names this workload may have: the usual one, and the fallback ADD takes on a collision. */
function hostIfnames(id: WorkloadIdentity): string[] {
  return [id.hostIfname, ...(id.hostIfnameFallback ? [id.hostIfnameFallback] : [])];
}

/** Deletes this workload's endpoint, unless a newer sandbox of the same pod owns it now. */
async function deleteOwnEndpoint(s: Session, existing: Preamble['existing']): Promise<void> {
  if (!existing) return;
  const owner = existing.wep.spec.containerID;
  if (owner && owner !== s.ctx.env.containerId) {
    s.ctx.log.info('keeping endpoint of a newer container', { endpoint: s.id.name, owner });
    return;
  }
  await s.store.txn([{ key: existing.kv.key, modRevision: existing.kv.modRevision }], [{ op: 'delete', key: existing.kv.key }]);
}

/**
 * What DEL's release will read: both handle forms, and the blocks that prevResult's addresses are in at
 * Calico's default block sizes. That is a guess (a pool of another block size has other blocks, which the
 * release then reads itself); when it holds, the release needs no read of its own.
 */
function releaseKeys(s: Session): string[] {
  const handles = releasedHandleIds(ipamCall(s)).map((id) => keys.handle(id));
  return [...handles, ...blockKeysOf(s.ctx.conf.prevResult, s.ctx.version)];
}

function blockKeysOf(prevResult: unknown, version: string): string[] {
  if (prevResult === undefined) return [];
  try {
    return workloadIps(parseAnyResult(prevResult, version)).flatMap((a) => {
      const block = canonicalCidr(`${a.ip}/${DEFAULT_BLOCK_SIZE[a.family]}`);
      return block ? [keys.block(a.family, block)] : [];
    });
  } catch {
    return []; // A DEL must not fail on a prevResult it only reads for a guess.
  }
}

/** The first failure among settled outcomes, as a CNI error. */
function firstFailure(outcomes: readonly PromiseSettledResult<unknown>[]): CniError | undefined {
  const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
  return failed ? toCniError(failed.reason) : undefined;
}

/**
 * The interfaces, the addresses and the endpoint are independent of each other, so they go at once: etcd's
 * round trips then hide behind the kernel's ~20 ms of veth teardown. The interfaces need no datastore and
 * go first; the datastore's part waits for its readiness check, as upstream's DEL does. Each part is
 * attempted whatever the others do; the first failure is reported, and a retry finds the rest gone.
 */
async function cmdDel(s: Session): Promise<void> {
  const { ctx, id } = s;
  const interfaces = tearDown({ containerId: ctx.env.containerId, netns: ctx.env.netns, ifname: ctx.env.ifname, hostIfnames: hostIfnames(id) }, ctx.log).then(() =>
    ctx.log.debug('interfaces gone', { t: ctx.log.elapsed() }),
  );
  // With calico-ipam in this process, what its release reads is read along with the readiness check.
  const datastore = readPreamble(s, s.inProcessIpam ? releaseKeys(s) : []).then(async ({ existing, along }) => {
    const failure = firstFailure(
      await Promise.allSettled([
        ipamVerb(s, 'DEL', along).catch((e: unknown) => Promise.reject(toCniError(e, 'failed to release addresses'))),
        deleteOwnEndpoint(s, existing),
      ]),
    );
    if (failure) throw failure;
    ctx.log.debug('addresses and endpoint released', { t: ctx.log.elapsed(), roundTrips: s.store.roundTrips });
  });
  const failure = firstFailure(await Promise.allSettled([datastore, interfaces]));
  if (failure) throw failure;
}

async function cmdCheck(s: Session): Promise<void> {
  const { ctx, id } = s;
  if (ctx.conf.prevResult === undefined) throw new CniError(ErrorCode.InvalidConfig, 'CHECK needs prevResult in the network configuration');
  const prev = parseAnyResult(ctx.conf.prevResult, ctx.version);
  const want = workloadIps(prev);
  const v6 = want.some((a) => a.family === 6);
  const { link, routes } = await inspectContainer(ctx.env.netns, ctx.env.ifname, v6);
  if (!link) throw new CniError(ErrorCode.InvalidConfig, `CHECK: interface ${ctx.env.ifname} not found in ${ctx.env.netns}`);
  const have = new Set((link.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`));
  for (const a of want) {
    if (!have.has(cidrOf(a))) throw new CniError(ErrorCode.InvalidConfig, `CHECK: ${ctx.env.ifname} in ${ctx.env.netns} lacks address ${cidrOf(a)}`);
  }
  const expectRoute = (dst: string, gw: string | undefined) => {
    const ok = routes.some((r) => r.dst === dst && r.dev === ctx.env.ifname && (gw === undefined ? r.scope === 'link' : r.gateway === gw));
    if (!ok) throw new CniError(ErrorCode.InvalidConfig, `CHECK: route ${dst}${gw ? ` via ${gw}` : ' scope link'} missing in ${ctx.env.netns}`);
  };
  if (want.some((a) => a.family === 4)) {
    expectRoute(GATEWAY_V4, undefined);
    expectRoute('default', GATEWAY_V4);
  }
  if (v6) expectRoute('default', GATEWAY_V6);
  const hostIfname = ownHostVeth(ctx.env.containerId, hostIfnames(id));
  if (!hostIfname) throw new CniError(ErrorCode.InvalidConfig, `CHECK: host interface ${hostIfnames(id).join(' or ')} of container ${ctx.env.containerId} not found`);
  const hostRoutes = await hostRoutesVia(hostIfname);
  for (const a of want) {
    if (!hostRoutes.some((r) => r.dst === a.ip || r.dst === cidrOf(a))) {
      throw new CniError(ErrorCode.InvalidConfig, `CHECK: host route ${cidrOf(a)} dev ${hostIfname} missing`);
    }
  }
  const pre = await readPreamble(s);
  if (!pre.existing) throw new CniError(ErrorCode.InvalidConfig, `CHECK: workload endpoint ${id.namespace}/${id.name} not found in etcd`);
  await ipamVerb(s, 'CHECK');
}

async function cmdStatus(s: Session): Promise<void> {
  try {
    await readPreamble(s);
  } catch (e) {
    throw new CniError(ErrorCode.NotAvailable, `calico not available: ${errorMessage(e)}`);
  }
  if (s.inProcessIpam) return ipamStatus({ ...ipamCall(s) });
  const type = s.ctx.conf.ipam?.type;
  if (type) await delegate({ plugin: type, verb: 'STATUS', stdin: s.ctx.stdin, cniPath: s.ctx.env.path, env: s.ctx.env.vars, fallbackVersion: s.ctx.version });
}

/**
 * GC: for this network on this node, removes endpoints and host veths of attachments the runtime no longer
 * knows, and releases their addresses (in-process IPAM) or forwards GC to the delegated IPAM plugin.
 */
async function cmdGc(s: Session): Promise<void> {
  const { ctx } = s;
  const valid = validAttachments(ctx.conf);
  const keep = new Set(valid.map((a) => `${a.containerID}/${a.ifname}`));
  const failures: string[] = [];
  const [weps] = await s.store.read([{ prefix: keys.workloadEndpointPrefix }]);
  for (const kv of weps ?? []) {
    try {
      const wep = decodeWorkloadEndpoint(kv.value);
      const sp = wep.spec;
      if (sp.node !== s.node || !(sp.profiles ?? []).includes(ctx.conf.name)) continue;
      if (keep.has(`${sp.containerID}/${sp.endpoint}`)) continue;
      await s.store.txn([{ key: kv.key, modRevision: kv.modRevision }], [{ op: 'delete', key: kv.key }]);
      if (sp.interfaceName && linkAlias(sp.interfaceName) === `${ALIAS_PREFIX}${sp.containerID ?? ''}`) {
        await deleteHostLink(sp.interfaceName);
      }
      ctx.log.info('gc: removed endpoint', { endpoint: wep.metadata.name, containerID: sp.containerID });
    } catch (e) {
      failures.push(`${kv.key}: ${errorMessage(e)}`);
    }
  }
  if (s.inProcessIpam) {
    await ipamGc({ ...ipamCall(s) }, valid).catch((e: unknown) => failures.push(errorMessage(e)));
  } else if (ctx.conf.ipam?.type) {
    await delegate({ plugin: ctx.conf.ipam.type, verb: 'GC', stdin: ctx.stdin, cniPath: ctx.env.path, env: ctx.env.vars, fallbackVersion: ctx.version }).catch((e: unknown) =>
      failures.push(errorMessage(e)),
    );
  }
  if (failures.length) throw new CniError(ErrorCode.TryAgainLater, `GC incomplete: ${failures.join('; ')}`);
}

export const calicoPlugin: PluginImpl = {
  add: (ctx) => withSession(ctx, cmdAdd),
  del: (ctx) => withSession(ctx, cmdDel),
  check: (ctx) => withSession(ctx, cmdCheck),
  status: (ctx) => withSession(ctx, cmdStatus),
  gc: (ctx) => withSession(ctx, cmdGc),
};
