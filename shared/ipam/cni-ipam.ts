import { CniError, ErrorCode } from '../cni/errors';
import type { NetConf } from '../cni/config';
import type { CniEnv } from '../cni/env';
import type { Logger } from '../cni/log';
import { parseAnyResult, type Result } from '../cni/result';
import type { Family } from '../calico/keys';
import type { Store } from '../store/store';
import { Allocator, type Allocation, type AssignOutcome, type AssignRequest, type FamilyRequest, type KnownKeys } from './allocator';
import { ordinalsOf } from './block';
import { parseCidr, parseIp } from './cidr';
import { inGroup } from '../sync/group';
import { listPools } from './pools';
import { keys } from '../calico/keys';
import { decodeBlock, decodeHandle } from '../calico/model';

/*
 * calico-ipam's CNI verbs over the allocator. The calico plugin calls these in-process when ipam.type is
 * calico-ipam; the calico-ipam binary calls them when a runtime or another plugin execs it.
 */

export interface IpamCall {
  env: CniEnv;
  conf: NetConf;
  version: string;
  log: Logger;
  store: Store;
  node: string;
}

/** `<network name>.<container id>`, upstream's handle id. */
export function handleIdFor(conf: Pick<NetConf, 'name'>, containerId: string): string {
  return `${conf.name}.${containerId}`;
}

/** Upstream's handle before v3 (and after CRI container-id rotation): the workload id. */
function legacyHandleId(env: CniEnv): string {
  return env.args.k8sPodNamespace && env.args.k8sPodName ? `${env.args.k8sPodNamespace}.${env.args.k8sPodName}` : env.containerId;
}

/** Go's time.Time.String() in UTC, as upstream stores the allocation timestamp. */
export function goTimestamp(d: Date): string {
  const iso = d.toISOString(); // 2024-01-01T00:00:00.123Z
  const [date, rest] = iso.split('T') as [string, string];
  const [hms, frac] = rest.replace('Z', '').split('.') as [string, string | undefined];
  const f = (frac ?? '').replace(/0+$/, '');
  return `${date} ${hms}${f ? `.${f}` : ''} +0000 UTC`;
}

function families(conf: NetConf): FamilyRequest[] {
  const ipam = conf.ipam;
  // Only the exact string "false" turns IPv4 off and only "true" turns IPv6 on, as upstream.
  const v4 = ipam?.assign_ipv4 !== 'false';
  const v6 = ipam?.assign_ipv6 === 'true';
  const out: FamilyRequest[] = [];
  const withPools = (family: Family, pools: string[] | undefined): FamilyRequest => (pools?.length ? { family, pools } : { family });
  if (v4) out.push(withPools(4, ipam?.ipv4_pools));
  if (v6) out.push(withPools(6, ipam?.ipv6_pools));
  if (out.length === 0) throw new CniError(ErrorCode.InvalidConfig, 'ipam: assign_ipv4 is "false" and assign_ipv6 is not "true": nothing to assign');
  return out;
}

/** Exact addresses from CNI_ARGS IP= (comma separated) or runtimeConfig.ips, prefixes dropped. */
export function requestedIps(env: CniEnv, conf: NetConf): string[] {
  const raw = env.args.ip ? env.args.ip.split(',') : (conf.runtimeConfig?.ips ?? []);
  return raw.map((s) => s.trim()).filter((s) => s !== '').map((s) => {
    const ip = s.split('/')[0] ?? '';
    if (!parseIp(ip)) throw new CniError(ErrorCode.InvalidConfig, `requested address ${JSON.stringify(s)} is not an IP address`);
    return ip;
  });
}

export function assignRequest(call: Pick<IpamCall, 'env' | 'conf' | 'node'>): AssignRequest {
  const attrs: Record<string, string> = { node: call.node, timestamp: goTimestamp(new Date()) };
  if (call.env.args.k8sPodNamespace && call.env.args.k8sPodName) {
    attrs.namespace = call.env.args.k8sPodNamespace;
    attrs.pod = call.env.args.k8sPodName;
  }
  const req: AssignRequest = { handleId: handleIdFor(call.conf, call.env.containerId), attrs, families: families(call.conf) };
  const ips = requestedIps(call.env, call.conf);
  if (ips.length) req.ips = ips;
  return req;
}

export function allocatorFor(call: Pick<IpamCall, 'store' | 'node' | 'log'>): Allocator {
  return new Allocator({ store: call.store, node: call.node, log: call.log });
}

export function resultOf(version: string, allocations: readonly Allocation[]): Result {
  return { cniVersion: version, ips: allocations.map((a) => ({ address: a.address })) };
}

/**
 * The host lock's key: this node in this datastore. One IPAM change at a time per host, within one process
 * (upstream takes a host-wide file lock for the same reason). In a plugin process (one call) it costs
 * nothing; in the node agent, where many calls of one host run at once, it turns a storm of conflicting
 * transactions on the host's block (each loser re-reads and backs off) into a queue, whose waiting calls
 * are then served together (shared/sync/group.ts, Allocator.assignTogether and releaseTogether). Other
 * hosts and other processes are still kept apart by the guarded transactions, not by this.
 */
function hostKey(call: Pick<IpamCall, 'node' | 'store'>): string {
  return `ipam-host:${call.node}@${call.store.identity}`;
}

/**
 * Calls of one host that queue for its lock (in the node agent) are run as a group with the store of the
 * first: only calls whose stores reach the same etcd the same way (Store.identity) share a group.
 */
function groupKey(verb: string, call: Pick<IpamCall, 'node' | 'store'>): string {
  return `${verb}:${hostKey(call)}`;
}

/** Most calls in one group: keeps a group's transaction well under etcd's 128 operations (--max-txn-ops). */
const GROUP_MAX = 16;

export async function ipamAdd(call: IpamCall): Promise<Result> {
  const alloc = allocatorFor(call);
  const req = assignRequest(call);
  const outcome = await inGroup<AssignRequest, AssignOutcome>(
    { lock: hostKey(call), queue: groupKey('assign', call), max: GROUP_MAX, run: (reqs: AssignRequest[], settle) => alloc.assignTogether(reqs, settle) },
    req,
  );
  call.log.info(outcome.existing ? 'handle already holds addresses' : 'assigned', {
    handle: handleIdFor(call.conf, call.env.containerId),
    ips: outcome.allocations.map((a) => a.address),
    attempts: alloc.stats.attempts,
    roundTrips: call.store.roundTrips,
    ...(outcome.together ? { together: outcome.together } : {}),
  });
  // Upstream reports explicitly requested addresses (IP=, runtimeConfig.ips) as /32 or /128, not block-masked.
  const allocations = req.ips ? outcome.allocations.map((a) => ({ ...a, address: `${a.ip}/${a.family === 4 ? 32 : 128}` })) : outcome.allocations;
  return resultOf(call.version, allocations);
}

/** The handles a DEL releases: ours, and upstream's form before v3 (and after CRI container-id rotation). */
export function releasedHandleIds(call: Pick<IpamCall, 'conf' | 'env'>): string[] {
  return [handleIdFor(call.conf, call.env.containerId), legacyHandleId(call.env)];
}

interface Release {
  handles: string[];
  known: KnownKeys | undefined;
}

/**
 * Releases both handle forms; nothing held is success, so DEL can be repeated. `known`: keys the caller
 * read just before (the handles, their blocks; see KnownKeys), to spare round trips.
 */
export async function ipamDel(call: IpamCall, known?: KnownKeys): Promise<Allocation[]> {
  const released = await inGroup<Release, Allocation[]>(
    {
      lock: hostKey(call),
      queue: groupKey('release', call),
      max: GROUP_MAX,
      run: (calls: Release[], settle) =>
        allocatorFor(call).releaseTogether(
          calls.map((c) => c.handles),
          settle,
          mergedKnown(calls),
        ),
    },
    { handles: releasedHandleIds(call), known },
  );
  call.log.info('released', { handle: handleIdFor(call.conf, call.env.containerId), ips: released.map((a) => a.ip) });
  return released;
}

/** The grouped calls' known keys together (a release reads its handles again unless each is known). */
function mergedKnown(calls: readonly Release[]): KnownKeys {
  return new Map(calls.flatMap((c) => [...(c.known ?? [])]));
}

/** CHECK: the handle exists and holds exactly the addresses of prevResult. */
export async function ipamCheck(call: IpamCall): Promise<void> {
  const handle = handleIdFor(call.conf, call.env.containerId);
  const held = (await allocatorFor(call).addressesOf(handle)).map((a) => a.ip).sort();
  if (held.length === 0) throw new CniError(ErrorCode.UnknownContainer, `IPAM handle ${handle} holds no addresses`);
  if (call.conf.prevResult === undefined) return;
  const prev = parseAnyResult(call.conf.prevResult, call.version);
  const expected = (prev.ips ?? []).map((ip) => ip.address.split('/')[0] ?? '').sort();
  if (expected.join(',') !== held.join(',')) {
    throw new CniError(ErrorCode.InvalidConfig, `IPAM handle ${handle} holds [${held.join(', ')}] but prevResult has [${expected.join(', ')}]`);
  }
}

/** STATUS: ready when etcd answers and an enabled pool exists for every family the conf asks for. */
export async function ipamStatus(call: Omit<IpamCall, 'env'>): Promise<void> {
  let pools;
  try {
    pools = await listPools(call.store);
  } catch (e) {
    throw new CniError(ErrorCode.NotAvailable, `calico-ipam not available: ${(e as Error).message}`);
  }
  for (const f of families(call.conf)) {
    const usable = pools.filter((p) => p.spec.cidr.includes(':') === (f.family === 6) && !p.spec.disabled);
    if (usable.length === 0) throw new CniError(ErrorCode.NotAvailable, `calico-ipam not available: no enabled IPv${f.family} pool`);
  }
}

/**
 * GC: releases every handle of this network whose container is not among the valid attachments and whose
 * addresses were allocated on this node. Errors are collected so one bad handle does not stop the rest.
 */
export async function ipamGc(call: Omit<IpamCall, 'env'>, valid: readonly { containerID: string }[]): Promise<string[]> {
  const keep = new Set(valid.map((a) => handleIdFor(call.conf, a.containerID)));
  const prefix = keys.handle(`${call.conf.name}.`);
  const [handles] = await call.store.read([{ prefix }]);
  const alloc = allocatorFor(call);
  const released: string[] = [];
  const failures: string[] = [];
  for (const kv of handles ?? []) {
    const handleId = kv.key.slice(keys.handlePrefix.length);
    if (keep.has(handleId)) continue;
    try {
      const onThisNode = await allocatedOnNode(call.store, handleId, kv.value, call.node);
      if (!onThisNode) continue;
      const freed = await alloc.releaseHandle(handleId);
      released.push(...freed.map((a) => `${handleId}=${a.ip}`));
    } catch (e) {
      failures.push(`${handleId}: ${(e as Error).message}`);
    }
  }
  call.log.info('gc', { released });
  if (failures.length) throw new CniError(ErrorCode.TryAgainLater, `GC could not release ${failures.length} handle(s): ${failures.join('; ')}`);
  return released;
}

async function allocatedOnNode(store: Store, handleId: string, handleValue: string, node: string): Promise<boolean> {
  const cidrs = Object.keys(decodeHandle(handleValue).block ?? {});
  const reads = cidrs.flatMap((c) => {
    const p = parseCidr(c);
    return p ? [{ key: keys.block(p.family, c) }] : [];
  });
  if (reads.length === 0) return true;
  const res = await store.read(reads);
  return res.some((r) => {
    const kv = r[0];
    if (!kv) return false;
    const b = decodeBlock(kv.value);
    return ordinalsOf(b, handleId).some((o) => {
      const idx = b.allocations[o];
      return idx !== null && idx !== undefined && (b.attributes?.[idx]?.secondary?.node ?? node) === node;
    });
  });
}
