import { CniError, ErrorCode } from '../cni/errors';
import type { Logger } from '../cni/log';
import { keys, parseAffinityKey, parseBlockKey, type Family } from '../calico/keys';
import {
  affinityConfirmed,
  decodeAffinity,
  decodeBlock,
  decodeHandle,
  decodeNode,
  decodePool,
  effectiveIpamConfig,
  encodeAffinity,
  encodeBlock,
  encodeHandle,
  newMetadata,
  parseJsonAt,
  resource,
  type Block,
  type EffectiveIpamConfig,
  type IpPool,
} from '../calico/model';
import { guard, type Compare, type KeyValue, type Op, type Read, type Store } from '../store/store';
import { allocateOrdinal, freeCount, isEmpty, newBlock, ordinalAddress, ordinalsOf, pickOrdinal, releaseOrdinals } from './block';
import { cidrContains, cidrSize, fnv1, formatCidr, parseCidr, parseIp, subnetAt, type Cidr } from './cidr';
import { selectorMatches } from './selector';

/**
 * Keys a caller has already read, by etcd key (undefined: absent). The calico plugin's DEL reads a
 * release's handles, and the blocks its prevResult's addresses would be in, with its readiness check, in
 * one round trip. A release's first attempt takes them instead of reading them again; its transaction is
 * guarded by their revisions as by its own reads, and a retry reads afresh. Absence is taken on trust for
 * no block, and for a handle only beside one that holds something (and guarded as absent then).
 */
export type KnownKeys = ReadonlyMap<string, KeyValue | undefined>;

/** One address held by a handle, with the block it came from. */
export interface Allocation {
  family: Family;
  ip: string;
  blockCidr: string;
  /** The address with the block's prefix, as upstream calico-ipam reports it (e.g. 10.0.0.5/26). */
  address: string;
}

export interface FamilyRequest {
  family: Family;
  /** Pool names or CIDRs the address must come from (ipam.ipv4_pools / ipv6_pools). */
  pools?: string[];
}

export interface AssignRequest {
  handleId: string;
  /** Stored as the allocation's `secondary` attributes (node, timestamp, pod, namespace). */
  attrs: Record<string, string>;
  families: FamilyRequest[];
  /** Exact addresses to assign instead (CNI_ARGS IP=, runtimeConfig.ips). */
  ips?: string[];
}

export interface AssignOutcome {
  allocations: Allocation[];
  /** True when the handle already held addresses and nothing was allocated (a repeated ADD). */
  existing: boolean;
  /** How many ADDs the transaction that made this assignment served, when more than one. */
  together?: number;
}

export interface AllocatorOptions {
  store: Store;
  node: string;
  log?: Logger | undefined;
  now?: () => number;
  random?: () => number;
  /** CAS attempts per operation before giving up with "try again later" (upstream: 100). */
  maxAttempts?: number;
}

export interface AllocatorStats {
  attempts: number;
  conflicts: number;
}

interface Snapshot {
  handle: KeyValue | undefined;
  /** Every handle read (the first is `handle`), by id: several when ADDs are assigned together. */
  handles: Map<string, KeyValue | undefined>;
  config: EffectiveIpamConfig;
  pools: IpPool[];
  node: KeyValue | undefined;
  nodeLabels: Record<string, string>;
  affinities: Map<Family, HostAffinity[]>;
}

interface HostAffinity {
  cidr: string;
  kv: KeyValue;
  confirmed: boolean;
  /** When a pending claim started (calico-ts writes it); undefined for confirmed or foreign ones. */
  claimTime: number | undefined;
}

/**
 * A pending claim younger than this may be another process of this host at work; a live claim completes
 * in milliseconds, so after MAX_CLAIM_WAITS retries (about a second of backoff) it is taken over as a
 * leftover of a killed process.
 */
const CLAIM_IN_FLIGHT_MS = 30_000;
const MAX_CLAIM_WAITS = 25;

/** Rounds of assigning a group of requests together before the rest go one by one. */
const GROUP_ROUNDS = 4;

/** A conflict on a guarded write: re-read everything and try again. */
class Conflict extends Error {}

/**
 * The IPAM allocator: pure logic over the Store interface, with libcalico-go's data model. Every write is
 * one transaction guarded by the mod_revisions of what it read, so concurrent allocators on any number of
 * hosts can never hand out an address twice; the block and the handle always change together.
 */
export class Allocator {
  readonly stats: AllocatorStats = { attempts: 0, conflicts: 0 };
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly maxAttempts: number;

  constructor(private readonly opts: AllocatorOptions) {
    this.now = opts.now ?? Date.now;
    this.random = opts.random ?? Math.random;
    this.maxAttempts = opts.maxAttempts ?? 100;
  }

  private get store(): Store {
    return this.opts.store;
  }

  private get node(): string {
    return this.opts.node;
  }

  // ---- public operations ---------------------------------------------------------------------------

  /** ADD: the handle's existing addresses, or one new address per requested family (all or nothing). */
  async assign(req: AssignRequest): Promise<AssignOutcome> {
    const families = req.ips?.length ? [...new Set(req.ips.map((ip) => this.requestedFamily(ip)))] : req.families.map((f) => f.family);
    const snap = await this.readSnapshot(req.handleId, families);
    if (snap.handle) {
      const held = await this.handleAllocations(req.handleId, snap.handle);
      if (held.length > 0) return { allocations: held, existing: true };
    }
    const out: Allocation[] = [];
    try {
      // The snapshot read above serves the first attempt of the first address; later ones read afresh.
      let fresh: Snapshot | undefined = snap;
      const once = () => {
        const s = fresh;
        fresh = undefined;
        return s;
      };
      if (req.ips?.length) {
        for (const ip of req.ips) out.push(await this.retrying(`assign ${ip}`, () => this.assignExactOnce(req, ip, once())));
      } else {
        for (const f of req.families) {
          out.push(
            await this.retrying(`assign an IPv${f.family} address`, (attempt) =>
              this.assignAutoOnce(req, f, once(), attempt > 0 ? out : undefined, attempt < MAX_CLAIM_WAITS),
            ),
          );
        }
      }
    } catch (e) {
      // All or nothing: a dual-stack ADD that got one family but not the other gives the first one back.
      if (out.length > 0) {
        this.opts.log?.warn('releasing partial assignment after failure', { handle: req.handleId, released: out.map((a) => a.ip) });
        await this.releaseHandle(req.handleId).catch((re: unknown) =>
          this.opts.log?.error('failed to release partial assignment', { handle: req.handleId, error: String(re) }),
        );
      }
      throw e;
    }
    return { allocations: out, existing: false };
  }

  /**
   * Several ADDs of this host at once (calls queued in the node agent): when the host's blocks have room,
   * one snapshot, one read of the blocks and one transaction serve all of them, guarded exactly as one
   * assignment is (every block's revision, every handle absent), so nothing can be handed out twice.
   * What that path does not cover (a handle that holds addresses, no room left, a lost race) is assigned
   * on its own, as `assign` does it; exact addresses go first, so that no automatic pick takes one. One
   * outcome per request, in order; `settle(i, outcome)` hears each as soon as it is known.
   */
  async assignTogether(
    reqs: readonly AssignRequest[],
    settle: (i: number, outcome: PromiseSettledResult<AssignOutcome>) => void = () => undefined,
  ): Promise<PromiseSettledResult<AssignOutcome>[]> {
    const done = new Map<AssignRequest, PromiseSettledResult<AssignOutcome>>();
    const record = (req: AssignRequest, outcome: PromiseSettledResult<AssignOutcome>): void => {
      done.set(req, outcome);
      settle(reqs.indexOf(req), outcome);
    };
    const alone = async (req: AssignRequest): Promise<void> => record(req, await settledOf(this.assign(req)));
    for (const req of reqs) if (req.ips?.length) await alone(req);
    let pending = reqs.filter((r) => !r.ips?.length);
    // Each round assigns together what fits; the first request that did not then goes alone, which may
    // claim a block the next round fills. Bounded, so requests that never fit cost few wasted reads; an
    // error other than a lost race (etcd down) ends the grouping at once.
    for (let round = 0; pending.length > 1 && round < GROUP_ROUNDS; round++) {
      this.stats.attempts++;
      let together: Map<AssignRequest, Allocation[]>;
      try {
        together = await this.assignInOneTxn(pending);
      } catch (e) {
        this.opts.log?.debug('assigning together failed', { requests: pending.length, why: String(e) });
        if (!(e instanceof Conflict)) break;
        this.stats.conflicts++;
        together = new Map();
      }
      for (const [req, allocations] of together) record(req, { status: 'fulfilled', value: { allocations, existing: false, together: together.size } });
      pending = pending.filter((r) => !together.has(r));
      const first = pending.shift();
      if (first) await alone(first);
    }
    for (const req of pending) await alone(req);
    return reqs.map((r) => done.get(r) ?? { status: 'rejected', reason: new Error(`no outcome for ${r.handleId}`) });
  }

  /**
   * The requests (none with exact addresses: assignTogether serves those first) that fit in this host's
   * blocks as they are, written in one guarded transaction.
   */
  private async assignInOneTxn(candidates: readonly AssignRequest[]): Promise<Map<AssignRequest, Allocation[]>> {
    if (candidates.length === 0) return new Map();
    const families = [...new Set(candidates.flatMap((r) => r.families.map((f) => f.family)))];
    const snap = await this.readSnapshot(candidates.map((r) => r.handleId), families);
    const affine = families.flatMap((f) => (snap.affinities.get(f) ?? []).filter((a) => a.confirmed).map((a) => a.cidr));
    let blocks = new Map<string, { kv: KeyValue; block: Block }>();
    for (const b of await this.readBlocks(affine)) {
      if (b.kv && b.block?.affinity === `host:${this.node}`) blocks.set(b.cidr, { kv: b.kv, block: b.block });
    }
    const taken = new Map<AssignRequest, Allocation[]>();
    const handles = new Set<string>();
    for (const req of candidates) {
      // A handle holding addresses is a repeated ADD, and one handle twice in a batch would be one key
      // written twice in a transaction: both are left to `assign`.
      if (snap.handles.get(req.handleId) || handles.has(req.handleId)) continue;
      const trial = new Map(blocks);
      const got = this.fitInBlocks(req, snap, trial);
      if (!got) continue;
      blocks = trial;
      taken.set(req, got);
      handles.add(req.handleId);
    }
    if (taken.size === 0) return taken;
    const touched = new Set([...taken.values()].flat().map((a) => a.blockCidr));
    const written = [...blocks.values()].filter((b) => touched.has(b.block.cidr));
    const compares: Compare[] = [
      ...written.map((b) => ({ key: b.kv.key, modRevision: b.kv.modRevision })),
      ...[...handles].map((h) => guard(keys.handle(h), undefined)),
      ...this.nodeGuards(snap),
    ];
    const ops: Op[] = [
      ...written.map((b): Op => ({ op: 'put', key: b.kv.key, value: encodeBlock(b.block) })),
      ...[...taken].map(([req, allocs]): Op => ({ op: 'put', key: keys.handle(req.handleId), value: encodeHandle(countByBlock(allocs)) })),
      ...this.nodeOps(snap),
    ];
    const res = await this.store.txn(compares, ops);
    if (!res.succeeded) throw new Conflict('the blocks or handles of a group of assignments changed');
    return taken;
  }

  /** One address per family of `req` from the host's blocks in `blocks` (updated in place), or undefined. */
  private fitInBlocks(req: AssignRequest, snap: Snapshot, blocks: Map<string, { kv: KeyValue; block: Block }>): Allocation[] | undefined {
    const got: Allocation[] = [];
    for (const f of req.families) {
      let pools: { pool: IpPool; cidr: Cidr }[];
      try {
        pools = this.allowedPools(snap, f);
      } catch {
        return undefined; // `assign` reports it
      }
      const usable = [...blocks].flatMap(([at, b]) => {
        const c = parseCidr(b.block.cidr);
        return c !== undefined && c.family === f.family && pools.some((p) => cidrContains(p.cidr, c.family, c.base)) ? [{ at, ...b }] : [];
      });
      const choice = this.chooseBlock(usable, snap.config);
      if (!choice) return undefined;
      const updated = allocateOrdinal(choice.block, choice.ord, req.handleId, req.attrs);
      blocks.set(choice.at, { kv: choice.kv, block: updated });
      got.push(...this.allocationsIn(updated, [choice.ord]));
    }
    return got;
  }

  /** DEL: frees every address the handle holds and removes the handle. A missing handle frees nothing. */
  async releaseHandle(handleId: string): Promise<Allocation[]> {
    return this.releaseHandles([handleId]);
  }

  /**
   * Frees the addresses of several handles (calico's DEL releases both of upstream's handle forms) in one
   * read of the handles, one of their blocks and one transaction. Missing handles free nothing.
   */
  async releaseHandles(handleIds: readonly string[], known?: KnownKeys): Promise<Allocation[]> {
    const byHandle = await this.retrying(`release handle ${handleIds.join(', ')}`, (i) => this.releaseHandlesOnce([...new Set(handleIds)], i === 0 ? known : undefined));
    return [...byHandle.values()].flat();
  }

  /**
   * Several DELs of this host at once (calls queued in the node agent), each with its handles, released in
   * one read of the handles, one of their blocks and one transaction; if that fails, one by one. A handle
   * listed twice counts once, for the first call that lists it. One outcome per call, in order;
   * `settle(i, outcome)` hears each as soon as it is known.
   */
  async releaseTogether(
    calls: readonly (readonly string[])[],
    settle: (i: number, outcome: PromiseSettledResult<Allocation[]>) => void = () => undefined,
    known?: KnownKeys,
  ): Promise<PromiseSettledResult<Allocation[]>[]> {
    if (calls.length > 1) {
      try {
        const byHandle = await this.retrying(`release ${calls.length} calls' handles`, (i) => this.releaseHandlesOnce([...new Set(calls.flat())], i === 0 ? known : undefined));
        const counted = new Set<string>();
        return calls.map((ids) => {
          const fresh = [...new Set(ids)].filter((id) => !counted.has(id));
          fresh.forEach((id) => counted.add(id));
          return { status: 'fulfilled', value: fresh.flatMap((id) => byHandle.get(id) ?? []) };
        });
      } catch (e) {
        this.opts.log?.debug('releasing together failed, releasing one by one', { calls: calls.length, why: String(e) });
      }
    }
    const out: PromiseSettledResult<Allocation[]>[] = [];
    for (const [i, ids] of calls.entries()) {
      // After a failed group attempt, what was known is stale: each call reads afresh.
      const outcome = await settledOf(this.releaseHandles(ids, calls.length > 1 ? undefined : known));
      out.push(outcome);
      settle(i, outcome);
    }
    return out;
  }

  /** The addresses a handle holds now (for CHECK and for reporting). */
  async addressesOf(handleId: string): Promise<Allocation[]> {
    const [h] = await this.store.read([{ key: keys.handle(handleId) }]);
    const kv = h?.[0];
    return kv ? this.handleAllocations(handleId, kv) : [];
  }

  // ---- reading ---------------------------------------------------------------------------------------

  private requestedFamily(ip: string): Family {
    const parsed = parseIp(ip.split('/')[0] ?? '');
    if (!parsed) throw new CniError(ErrorCode.InvalidConfig, `requested address ${JSON.stringify(ip)} is not an IP address`);
    return parsed.family;
  }

  private async readSnapshot(handleIds: string | readonly string[], families: readonly Family[]): Promise<Snapshot> {
    const ids = typeof handleIds === 'string' ? [handleIds] : handleIds;
    const n = ids.length;
    const reads: Read[] = [
      ...ids.map((id) => ({ key: keys.handle(id) })),
      { key: keys.ipamConfig },
      { prefix: keys.poolPrefix },
      { key: keys.node(this.node) },
      ...families.map((f) => ({ prefix: keys.hostAffinityPrefix(this.node, f) })),
    ];
    const res = await this.store.read(reads);
    const handles = new Map(ids.map((id, i) => [id, res[i]?.[0]]));
    const [config, pools, node] = [res[n]?.[0], res[n + 1] ?? [], res[n + 2]?.[0]];
    const affinities = new Map<Family, HostAffinity[]>();
    families.forEach((f, i) => {
      const list = (res[n + 3 + i] ?? []).flatMap((kv) => {
        const parsed = parseAffinityKey(kv.key);
        if (!parsed) return [];
        const aff = parseJsonAt(kv.key, kv.value, decodeAffinity);
        return [{ cidr: parsed.cidr, kv, confirmed: affinityConfirmed(aff), claimTime: aff.claimTime }];
      });
      affinities.set(f, list);
    });
    const nodeLabels = node ? (parseJsonAt(node.key, node.value, decodeNode).metadata.labels ?? {}) : {};
    return {
      handle: res[0]?.[0],
      handles,
      config: effectiveIpamConfig(config?.value),
      pools: pools.flatMap((kv) => {
        try {
          return [decodePool(kv.value)];
        } catch (e) {
          this.opts.log?.warn('ignoring malformed IP pool', { key: kv.key, error: String(e) });
          return [];
        }
      }),
      node,
      nodeLabels: { 'projectcalico.org/name': this.node, ...nodeLabels },
      affinities,
    };
  }

  /** Reads the blocks a handle points at and returns the addresses in them that carry the handle. */
  private async handleAllocations(handleId: string, handleKv: KeyValue): Promise<Allocation[]> {
    const cidrs = Object.keys(parseJsonAt(handleKv.key, handleKv.value, decodeHandle).block ?? {});
    if (cidrs.length === 0) return [];
    const blocks = await this.readBlocks(cidrs);
    return blocks.flatMap(({ block }) => (block ? this.allocationsIn(block, ordinalsOf(block, handleId)) : []));
  }

  /** The blocks, read in one round trip; those `known` holds are taken from it (none when it has them all). */
  private async readBlocks(cidrs: readonly string[], known?: KnownKeys): Promise<{ cidr: string; kv: KeyValue | undefined; block: Block | undefined }[]> {
    const valid = cidrs.flatMap((cidr) => {
      const parsed = parseCidr(cidr);
      return parsed ? [{ cidr, key: keys.block(parsed.family, cidr) }] : [];
    });
    const toRead = valid.filter((b) => !known?.get(b.key));
    const res = toRead.length > 0 ? await this.store.read(toRead.map((b) => ({ key: b.key }))) : [];
    const read = new Map(toRead.map((b, i) => [b.key, res[i]?.[0]]));
    return valid.map((b) => {
      const kv = known?.get(b.key) ?? read.get(b.key);
      return { cidr: b.cidr, kv, block: kv ? parseJsonAt(kv.key, kv.value, decodeBlock) : undefined };
    });
  }

  private allocationsIn(block: Block, ords: readonly number[]): Allocation[] {
    const prefix = block.cidr.split('/')[1];
    return ords.map((ord) => {
      const { family, ip } = ordinalAddress(block, ord);
      return { family, ip, blockCidr: block.cidr, address: `${ip}/${prefix}` };
    });
  }

  // ---- pools -----------------------------------------------------------------------------------------

  private poolLabel(p: IpPool): string {
    return `${p.metadata.name} (${p.spec.cidr})`;
  }

  private poolUsable(p: IpPool): boolean {
    return !p.spec.disabled && (p.spec.allowedUses ?? ['Workload']).includes('Workload');
  }

  /** Pools this ADD may allocate from, in a stable order: named ones as asked, else those selecting the node. */
  private allowedPools(snap: Snapshot, req: FamilyRequest): { pool: IpPool; cidr: Cidr }[] {
    const ofFamily = snap.pools
      .map((pool) => ({ pool, cidr: parseCidr(pool.spec.cidr) }))
      .filter((p): p is { pool: IpPool; cidr: Cidr } => p.cidr !== undefined && p.cidr.family === req.family)
      .filter((p) => (p.pool.spec.blockSize ?? 0) >= p.cidr.prefix && (p.pool.spec.blockSize ?? 0) <= (req.family === 4 ? 32 : 128));
    if (req.pools?.length) {
      return req.pools.map((want) => {
        const asCidr = parseCidr(want);
        const found = ofFamily.find((p) => (asCidr ? formatCidr(p.cidr) === formatCidr(asCidr) : p.pool.metadata.name === want));
        if (asCidr && asCidr.family !== req.family) {
          throw new CniError(ErrorCode.InvalidConfig, `pool ${want} is not an IPv${req.family} pool but is listed in ipv${req.family}_pools`);
        }
        if (!found || !this.poolUsable(found.pool)) {
          throw new CniError(ErrorCode.InvalidConfig, `the given pool (${want}) does not exist, or is not enabled`);
        }
        return found;
      });
    }
    const usable = ofFamily.filter(
      (p) => this.poolUsable(p.pool) && p.pool.spec.assignmentMode !== 'Manual' && selectorMatches(p.pool.spec.nodeSelector, snap.nodeLabels),
    );
    if (usable.length === 0) {
      throw new CniError(
        ErrorCode.InvalidConfig,
        `no enabled IPv${req.family} pool selects node ${this.node}: create one (calico-ipam pool add <cidr>) or check the pools' nodeSelector`,
      );
    }
    return usable;
  }

  // ---- automatic assignment --------------------------------------------------------------------------

  private async assignAutoOnce(
    req: AssignRequest,
    f: FamilyRequest,
    given: Snapshot | undefined,
    retryAfter?: readonly Allocation[],
    mayWaitForClaim = true,
  ): Promise<Allocation> {
    const snap = given ?? (await this.readSnapshot(req.handleId, [f.family]));
    // A retry may follow a write that did commit although its reply was lost (the store's client retried
    // it elsewhere and that copy failed its compare): then the handle already holds our address. Take it
    // instead of allocating a second one that the result would not report.
    if (retryAfter && snap.handle) {
      const held = await this.handleAllocations(req.handleId, snap.handle);
      const mine = held.find((a) => a.family === f.family && !retryAfter.some((o) => o.ip === a.ip));
      if (mine) return mine;
    }
    const pools = this.allowedPools(snap, f);
    const inPools = (cidr: string) => {
      const c = parseCidr(cidr);
      return c !== undefined && pools.some((p) => cidrContains(p.cidr, c.family, c.base));
    };
    const owned = snap.affinities.get(f.family) ?? [];
    const affine = owned.filter((a) => a.confirmed && inPools(a.cidr));

    // 1. A free address in one of this host's blocks; rested addresses before recently released ones.
    if (affine.length > 0) {
      const blocks = await this.readBlocks(affine.map((a) => a.cidr));
      const mine = blocks.filter((b): b is typeof b & { kv: KeyValue; block: Block } => b.block !== undefined && b.kv !== undefined && b.block.affinity === `host:${this.node}`);
      const choice = this.chooseBlock(mine, snap.config);
      if (choice) return this.commitAllocation(req, snap, choice.kv, choice.block, choice.ord);
    }

    // 2. Claim a new block for this host.
    const hostBlocks = owned.length;
    const mayClaim = snap.config.autoAllocateBlocks && hostBlocks < snap.config.maxBlocksPerHost;
    if (snap.config.autoAllocateBlocks && !mayClaim) {
      throw new CniError(
        ErrorCode.BlockLimit,
        `cannot allocate new block due to per host block limit: node ${this.node} already has ${hostBlocks} IPv${f.family} blocks (maxBlocksPerHost ${snap.config.maxBlocksPerHost}) and they are full`,
      );
    }
    if (mayClaim) {
      // The blocks and this host's affinities are read at one revision: a snapshot older than a claim
      // another process of this host has made since would otherwise see that block as taken by someone
      // and claim a second one for this host (with two ADDs per node, enough to exhaust a small pool).
      const [existing, current] = await this.store.read([
        { prefix: keys.blockPrefix(f.family), keysOnly: true },
        { prefix: keys.hostAffinityPrefix(this.node, f.family) },
      ]);
      if (affinitiesChanged(owned, current ?? [])) throw new Conflict(`the block affinities of node ${this.node} changed`);
      const taken = new Set((existing ?? []).flatMap((kv) => parseBlockKey(kv.key)?.cidr ?? []));
      const pending = owned.filter((a) => !a.confirmed && !taken.has(a.cidr) && inPools(a.cidr));
      // Another process of this host is claiming a block right now: wait for that block instead of
      // claiming a second one (or stealing its claim).
      if (mayWaitForClaim && pending.some((a) => a.claimTime !== undefined && this.now() - a.claimTime < CLAIM_IN_FLIGHT_MS)) {
        throw new Conflict('a block claim of this host is in flight');
      }
      // An older pending affinity of ours with no block is a claim a killed process left half done: finish it.
      const stale = pending[0];
      const free = stale ? parseCidr(stale.cidr) : this.findFreeSubnet(pools, taken);
      if (free) return this.claimAndAllocate(req, snap, f.family, free);
    }

    // 3. Borrow from another host's block (upstream's default; off with strict affinity).
    if (!snap.config.strictAffinity) {
      const borrowed = await this.borrow(req, snap, f.family, inPools);
      if (borrowed) return borrowed;
    }
    const names = pools.map((p) => this.poolLabel(p.pool)).join(', ');
    throw new CniError(
      ErrorCode.PoolExhausted,
      snap.config.strictAffinity
        ? `no free IPv${f.family} address for node ${this.node} in pools [${names}]: no more free affine blocks and strict affinity enabled`
        : `no free IPv${f.family} address in pools [${names}]: the pools are exhausted`,
    );
  }

  /** The first block with a rested free address, else the first with any free address. */
  private chooseBlock<T extends { kv: KeyValue; block: Block }>(candidates: readonly T[], config: EffectiveIpamConfig): (T & { ord: number }) | undefined {
    const now = this.now();
    let fallback: (T & { ord: number }) | undefined;
    for (const c of candidates) {
      const pick = pickOrdinal(c.block, now, config.ipCooldownSeconds * 1000);
      if (!pick) continue;
      if (pick.cool) return { ...c, ord: pick.ord };
      fallback ??= { ...c, ord: pick.ord };
    }
    return fallback;
  }

  /** Walks each pool's block-sized subnets from a per-host starting point; the first without a block wins. */
  private findFreeSubnet(pools: readonly { pool: IpPool; cidr: Cidr }[], taken: ReadonlySet<string>): Cidr | undefined {
    const seed = BigInt(fnv1(this.node));
    for (const { pool, cidr } of pools) {
      const blockSize = pool.spec.blockSize ?? (cidr.family === 4 ? 26 : 122);
      const count = cidrSize(cidr) / cidrSize({ family: cidr.family, base: 0n, prefix: blockSize });
      const start = seed % count;
      // Each step either finds a free subnet or passes a taken one, so this ends after |taken|+1 steps.
      for (let i = 0n; i < count; i++) {
        const sub = subnetAt(cidr, blockSize, (start + i) % count);
        if (!taken.has(formatCidr(sub))) return sub;
      }
    }
    return undefined;
  }

  /**
   * Two-phase claim as upstream: a pending affinity first, then (in one transaction) the block with our
   * address in it, the affinity confirmed and the handle. A lost race removes the pending affinity.
   */
  private async claimAndAllocate(req: AssignRequest, snap: Snapshot, family: Family, cidr: Cidr, exactOrd?: number): Promise<Allocation> {
    const blockCidr = formatCidr(cidr);
    const affKey = keys.hostAffinity(this.node, family, blockCidr);
    const blockKey = keys.block(family, blockCidr);
    const known = snap.affinities.get(family)?.find((a) => a.cidr === blockCidr);
    const pending = await this.store.txn([guard(affKey, known?.kv)], [{ op: 'put', key: affKey, value: encodeAffinity('pending', this.now()) }]);
    if (!pending.succeeded) throw new Conflict(`affinity ${affKey} changed`);
    const block = newBlock(cidr, this.node, this.now());
    const ord = exactOrd ?? pickOrdinal(block, this.now(), 0)?.ord ?? 0;
    const filled = allocateOrdinal(block, ord, req.handleId, req.attrs);
    const ops: Op[] = [
      { op: 'put', key: blockKey, value: encodeBlock(filled) },
      { op: 'put', key: affKey, value: encodeAffinity('confirmed') },
      ...this.handleOps(req.handleId, snap.handle, filled.cidr, +1),
      ...this.nodeOps(snap),
    ];
    const compares: Compare[] = [
      { key: blockKey, modRevision: 0 },
      { key: affKey, modRevision: pending.revision },
      guard(keys.handle(req.handleId), snap.handle),
      ...this.nodeGuards(snap),
    ];
    const res = await this.store.txn(compares, ops);
    if (!res.succeeded) {
      await this.store.txn([{ key: affKey, modRevision: pending.revision }], [{ op: 'delete', key: affKey }]);
      throw new Conflict(`block ${blockCidr} was claimed concurrently`);
    }
    this.opts.log?.info('claimed block', { node: this.node, block: blockCidr });
    return this.allocationsIn(filled, [ord])[0] as Allocation;
  }

  private async borrow(req: AssignRequest, snap: Snapshot, family: Family, inPools: (cidr: string) => boolean): Promise<Allocation | undefined> {
    const all = await this.store.read([{ prefix: keys.blockPrefix(family) }]);
    const candidates = (all[0] ?? [])
      .map((kv) => ({ kv, block: parseJsonAt(kv.key, kv.value, decodeBlock) }))
      .filter((c) => inPools(c.block.cidr) && c.block.affinity !== `host:${this.node}` && freeCount(c.block) > 0);
    if (candidates.length === 0) return undefined;
    // Spread borrowers over the blocks instead of all starting at the first one.
    const start = fnv1(this.node) % candidates.length;
    const rotated = [...candidates.slice(start), ...candidates.slice(0, start)];
    const choice = this.chooseBlock(rotated, snap.config);
    if (!choice) return undefined;
    this.opts.log?.warn('borrowing an address from a block affine to another host', { block: choice.block.cidr, affinity: choice.block.affinity });
    return this.commitAllocation(req, snap, choice.kv, choice.block, choice.ord);
  }

  /** Writes one allocation into an existing block together with the handle, guarded by both revisions. */
  private async commitAllocation(req: AssignRequest, snap: Snapshot, kv: KeyValue, block: Block, ord: number): Promise<Allocation> {
    const updated = allocateOrdinal(block, ord, req.handleId, req.attrs);
    const res = await this.store.txn(
      [{ key: kv.key, modRevision: kv.modRevision }, guard(keys.handle(req.handleId), snap.handle), ...this.nodeGuards(snap)],
      [{ op: 'put', key: kv.key, value: encodeBlock(updated) }, ...this.handleOps(req.handleId, snap.handle, updated.cidr, +1), ...this.nodeOps(snap)],
    );
    if (!res.succeeded) throw new Conflict(`block ${block.cidr} changed`);
    return this.allocationsIn(updated, [ord])[0] as Allocation;
  }

  private handleOps(handleId: string, current: KeyValue | undefined, blockCidr: string, delta: number): Op[] {
    const counts = { ...((current && parseJsonAt(current.key, current.value, decodeHandle).block) ?? {}) };
    counts[blockCidr] = (counts[blockCidr] ?? 0) + delta;
    if ((counts[blockCidr] ?? 0) <= 0) delete counts[blockCidr];
    const key = keys.handle(handleId);
    return Object.keys(counts).length === 0 ? [{ op: 'delete', key }] : [{ op: 'put', key, value: encodeHandle(counts) }];
  }

  /** Upstream fails when the Calico Node is missing; with no calico/node to make it, we create it. */
  private nodeOps(snap: Snapshot): Op[] {
    return snap.node ? [] : [{ op: 'put', key: keys.node(this.node), value: resource('Node', newMetadata(this.node), {}) }];
  }

  private nodeGuards(snap: Snapshot): Compare[] {
    return snap.node ? [] : [{ key: keys.node(this.node), modRevision: 0 }];
  }

  // ---- exact addresses -------------------------------------------------------------------------------

  private async assignExactOnce(req: AssignRequest, rawIp: string, given: Snapshot | undefined): Promise<Allocation> {
    const ip = parseIp(rawIp.split('/')[0] ?? '');
    if (!ip) throw new CniError(ErrorCode.InvalidConfig, `requested address ${JSON.stringify(rawIp)} is not an IP address`);
    const snap = given ?? (await this.readSnapshot(req.handleId, [ip.family]));
    const pool = snap.pools
      .map((p) => ({ pool: p, cidr: parseCidr(p.spec.cidr) }))
      .find((p) => p.cidr && this.poolUsable(p.pool) && cidrContains(p.cidr, ip.family, ip.value));
    if (!pool?.cidr) {
      throw new CniError(ErrorCode.AddressNotInPool, `requested address ${rawIp} is not in any enabled IP pool`);
    }
    const blockSize = pool.pool.spec.blockSize ?? (ip.family === 4 ? 26 : 122);
    const blockCidr = parseCidr(`${rawIp.split('/')[0]}/${blockSize}`) as Cidr;
    const ord = Number(ip.value - blockCidr.base);
    const [blockRes] = await this.store.read([{ key: keys.block(ip.family, formatCidr(blockCidr)) }]);
    const kv = blockRes?.[0];
    if (!kv) {
      const owned = snap.affinities.get(ip.family)?.length ?? 0;
      if (owned >= snap.config.maxBlocksPerHost) {
        throw new CniError(ErrorCode.BlockLimit, `cannot allocate new block for ${rawIp} due to per host block limit (${snap.config.maxBlocksPerHost})`);
      }
      return this.claimAndAllocate(req, snap, ip.family, blockCidr, ord);
    }
    const block = parseJsonAt(kv.key, kv.value, decodeBlock);
    if (snap.config.strictAffinity && block.affinity !== `host:${this.node}`) {
      throw new CniError(ErrorCode.AddressInUse, `requested address ${rawIp} is in block ${block.cidr} affine to ${block.affinity ?? 'no host'} and strict affinity is enabled`);
    }
    const holder = block.allocations[ord];
    if (holder !== null && holder !== undefined) {
      const owner = block.attributes?.[holder]?.handle_id ?? 'unknown';
      // Already ours: a retry after a write whose reply was lost (see assignAutoOnce).
      if (owner === req.handleId) return this.allocationsIn(block, [ord])[0] as Allocation;
      throw new CniError(ErrorCode.AddressInUse, `requested address ${rawIp} is already in use (handle ${owner})`);
    }
    return this.commitAllocation(req, snap, kv, block, ord);
  }

  // ---- release -----------------------------------------------------------------------------------------

  private async releaseHandlesOnce(handleIds: readonly string[], known?: KnownKeys): Promise<Map<string, Allocation[]>> {
    // Known handles serve when one of them holds something; "none held" is only believed from a read of
    // its own, since nothing would guard it (a repeated DEL, or a DEL after a failed ADD, pays that read).
    const handleKeys = handleIds.map((id) => keys.handle(id));
    const useKnown = known !== undefined && handleKeys.every((k) => known.has(k)) && handleKeys.some((k) => known.get(k));
    const res = useKnown ? handleKeys.map((k) => known.get(k)) : (await this.store.read(handleKeys.map((key) => ({ key })))).map((r) => r[0]);
    const handles = handleIds.flatMap((id, i) => {
      const kv = res[i];
      return kv ? [{ id, kv, cidrs: Object.keys(parseJsonAt(kv.key, kv.value, decodeHandle).block ?? {}) }] : [];
    });
    const released = new Map<string, Allocation[]>();
    if (handles.length === 0) return released;
    const blocks = await this.readBlocks([...new Set(handles.flatMap((h) => h.cidrs))], known);
    const now = this.now();
    const compares: Compare[] = handles.map((h) => ({ key: h.kv.key, modRevision: h.kv.modRevision }));
    // A handle read as absent must still be absent, or this release would miss what it holds now.
    for (const [i, id] of handleIds.entries()) if (!res[i]) compares.push({ key: keys.handle(id), modRevision: 0 });
    const ops: Op[] = handles.map((h) => ({ op: 'delete', key: h.kv.key }));
    for (const { kv, block } of blocks) {
      if (!kv || !block) continue;
      let updated = block;
      for (const h of handles) {
        const ords = ordinalsOf(updated, h.id);
        if (ords.length === 0) continue;
        released.set(h.id, [...(released.get(h.id) ?? []), ...this.allocationsIn(updated, ords)]);
        updated = releaseOrdinals(updated, ords, now);
      }
      if (updated === block) continue;
      compares.push({ key: kv.key, modRevision: kv.modRevision });
      // An empty block nobody is affine to (a borrowed-from block whose host let go) goes away.
      ops.push(isEmpty(updated) && !updated.affinity ? { op: 'delete', key: kv.key } : { op: 'put', key: kv.key, value: encodeBlock(updated) });
    }
    const txn = await this.store.txn(compares, ops);
    if (!txn.succeeded) throw new Conflict(`handle ${handleIds.join(', ')} or its blocks changed`);
    return released;
  }

  // ---- retries -----------------------------------------------------------------------------------------

  /**
   * Runs one optimistic attempt at a time; a conflict re-reads and retries after a short random pause (so
   * racing processes spread out), a bounded number of times.
   */
  private async retrying<T>(what: string, attempt: (i: number) => Promise<T>): Promise<T> {
    for (let i = 0; i < this.maxAttempts; i++) {
      this.stats.attempts++;
      try {
        return await attempt(i);
      } catch (e) {
        if (!(e instanceof Conflict)) throw e;
        this.stats.conflicts++;
        this.opts.log?.debug('conflict, retrying', { what, attempt: i + 1, why: e.message });
        const cap = Math.min(50, 2 ** Math.min(i, 6));
        await new Promise((r) => setTimeout(r, this.random() * cap));
      }
    }
    throw new CniError(
      ErrorCode.TryAgainLater,
      `failed to ${what}: gave up after ${this.maxAttempts} attempts that each lost a race with another writer (excessive concurrent IPAM requests)`,
    );
  }
}

function settledOf<T>(p: Promise<T>): Promise<PromiseSettledResult<T>> {
  return p.then(
    (value) => ({ status: 'fulfilled', value }),
    (reason: unknown) => ({ status: 'rejected', reason }),
  );
}

function countByBlock(allocs: readonly Allocation[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const a of allocs) counts[a.blockCidr] = (counts[a.blockCidr] ?? 0) + 1;
  return counts;
}

/** Whether the affinities read now differ (a key added, removed or rewritten) from the snapshot's. */
function affinitiesChanged(before: readonly HostAffinity[], read: readonly KeyValue[]): boolean {
  // Keys the snapshot skipped (not an affinity key) are skipped here too, or they would never compare equal.
  const now = read.filter((kv) => parseAffinityKey(kv.key) !== undefined);
  if (before.length !== now.length) return true;
  const seen = new Map(before.map((a) => [a.kv.key, a.kv.modRevision]));
  return now.some((kv) => seen.get(kv.key) !== kv.modRevision);
}
