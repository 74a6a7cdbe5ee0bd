import { keys, parseAffinityKey } from '../calico/keys';
import { affinityConfirmed, decodeAffinity, decodeBlock, decodeHandle, decodeWorkloadEndpoint, encodeAffinity, type Block } from '../calico/model';
import type { KeyValue, Op, Store } from '../store/store';
import { Allocator } from './allocator';
import { ordinalsOf, ordinalAddress } from './block';
import { parseCidr } from './cidr';

/*
 * Node-local garbage collection, the release path upstream lacks without Kubernetes: on one node, find
 * allocations whose container is gone (no workload endpoint, no host veth that names it) and claims a
 * killed process left pending, and release them once they are older than a grace period, so an ADD that
 * is still running is never touched.
 */

export interface GcOptions {
  node: string;
  graceMs: number;
  dryRun: boolean;
  now?: number;
  /** The container id a host veth names in its alias (calico-ts:<id>), or undefined if there is no such link. */
  vethOwner: (ifname: string) => string | undefined;
  /** Container ids with a host veth on this node (from the aliases). */
  liveVethContainers: ReadonlySet<string>;
  /** Waits (the tests pass a fake); see PENDING_SETTLE_MS. */
  sleep?: (ms: number) => Promise<void>;
}

/**
 * A pending affinity upstream Calico wrote carries no claim time, so its age is unknown: it counts as
 * stale only if it is still unchanged this long later (a live claim completes in milliseconds), or the
 * grace period if that is shorter (`--grace 0`: at once).
 */
export const PENDING_SETTLE_MS = 5_000;

export interface GcAction {
  kind: 'release-handle' | 'remove-pending-affinity' | 'confirm-affinity' | 'remove-endpoint';
  target: string;
  detail: string;
}

/** "2024-01-01 00:00:00.123456789 +0000 UTC" (Go's time.String) -> unix ms. */
export function parseGoTimestamp(s: string | undefined): number | undefined {
  if (!s) return undefined;
  const m = /^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})(\.\d+)? \+0000 UTC$/.exec(s);
  if (!m) {
    const t = Date.parse(s);
    return Number.isNaN(t) ? undefined : t;
  }
  return Date.parse(`${m[1]}T${m[2]}${(m[3] ?? '').slice(0, 4)}Z`);
}

/** The container id a handle belongs to: `<network>.<container id>`, matched against known ids. */
function handleContainer(handleId: string, ids: Iterable<string>): string | undefined {
  for (const id of ids) if (handleId.endsWith(`.${id}`) || handleId === id) return id;
  return undefined;
}

export async function collectGarbage(store: Store, opts: GcOptions): Promise<GcAction[]> {
  const now = opts.now ?? Date.now();
  const old = (t: number | undefined) => t === undefined || now - t >= opts.graceMs;
  const [handles, weps, affs, blocks4, blocks6] = await store.read([
    { prefix: keys.handlePrefix },
    { prefix: keys.workloadEndpointPrefix },
    { prefix: keys.hostAffinityPrefix(opts.node, 4).replace(/ipv4\/block\/$/, '') },
    { prefix: keys.blockPrefix(4) },
    { prefix: keys.blockPrefix(6) },
  ]);
  const actions: GcAction[] = [];
  const blocks = new Map<string, { block: Block; kv: KeyValue }>();
  for (const kv of [...(blocks4 ?? []), ...(blocks6 ?? [])]) {
    const block = decodeBlock(kv.value);
    blocks.set(block.cidr, { block, kv });
  }

  // Endpoints of this node whose host veth is gone (or names another container) are stale.
  const liveEndpoints = new Set<string>();
  for (const kv of weps ?? []) {
    const wep = decodeWorkloadEndpoint(kv.value);
    const sp = wep.spec;
    if (sp.node !== opts.node || !sp.containerID) continue;
    const vethOk = sp.interfaceName !== undefined && opts.vethOwner(sp.interfaceName) === sp.containerID;
    const created = wep.metadata.creationTimestamp ? Date.parse(wep.metadata.creationTimestamp) : undefined;
    if (vethOk || !old(created)) {
      liveEndpoints.add(sp.containerID);
      continue;
    }
    // Changed since it was read (a new ADD of the container): left for the next run to judge.
    if (!opts.dryRun && !(await store.txn([{ key: kv.key, modRevision: kv.modRevision }], [{ op: 'delete', key: kv.key }])).succeeded) continue;
    actions.push({ kind: 'remove-endpoint', target: kv.key, detail: `host veth ${sp.interfaceName ?? '?'} of container ${sp.containerID} is gone` });
  }

  // Handles with addresses allocated on this node whose container shows no sign of life.
  const known = new Set([...liveEndpoints, ...opts.liveVethContainers]);
  const alloc = new Allocator({ store, node: opts.node });
  for (const kv of handles ?? []) {
    const handleId = kv.key.slice(keys.handlePrefix.length);
    const cidrs = Object.keys(decodeHandle(kv.value).block ?? {});
    let mine = false;
    let newest: number | undefined;
    const ips: string[] = [];
    for (const c of cidrs) {
      const b = blocks.get(c)?.block;
      if (!b) continue;
      for (const ord of ordinalsOf(b, handleId)) {
        const attr = b.attributes?.[b.allocations[ord] ?? -1];
        if ((attr?.secondary?.node ?? '') !== opts.node) continue;
        mine = true;
        ips.push(ordinalAddress(b, ord).ip);
        const t = parseGoTimestamp(attr?.secondary?.timestamp);
        if (t !== undefined && (newest === undefined || t > newest)) newest = t;
      }
    }
    if (!mine || handleContainer(handleId, known) !== undefined || !old(newest)) continue;
    actions.push({ kind: 'release-handle', target: handleId, detail: `releases ${ips.join(', ')}: no endpoint and no host veth for its container` });
    if (!opts.dryRun) await alloc.releaseHandle(handleId);
  }

  // Pending affinities of this node: a claim a killed process left half done. Without its block, or with
  // the block gone to another host, the claim is dead; with the block ours, only the confirmation is
  // missing (upstream writes the block before it confirms), and confirming it lets this host use the block.
  const pending: KeyValue[] = [];
  const undated: KeyValue[] = [];
  for (const kv of affs ?? []) {
    const a = parseAffinityKey(kv.key);
    if (!a || a.host !== opts.node || !parseCidr(a.cidr)) continue;
    const aff = decodeAffinity(kv.value);
    if (affinityConfirmed(aff) || aff.state !== 'pending') continue;
    if (aff.claimTime === undefined) undated.push(kv);
    else if (old(aff.claimTime)) pending.push(kv);
  }
  pending.push(...(await unchangedAfter(store, undated, Math.min(opts.graceMs, PENDING_SETTLE_MS), opts.sleep)));
  for (const kv of pending) {
    const { family, cidr } = parseAffinityKey(kv.key) ?? { family: 4, cidr: '' };
    const block = blocks.get(cidr);
    const action = pendingAction(kv.key, cidr, block?.block, opts.node);
    if (!opts.dryRun) {
      // Guarded by the block too: a block created, released or re-assigned meanwhile is judged next run.
      const blockKey = keys.block(family, cidr);
      const then: Op = action.kind === 'confirm-affinity' ? { op: 'put', key: kv.key, value: encodeAffinity('confirmed') } : { op: 'delete', key: kv.key };
      const done = await store.txn([{ key: kv.key, modRevision: kv.modRevision }, { key: blockKey, modRevision: block?.kv.modRevision ?? 0 }], [then]);
      if (!done.succeeded) continue;
    }
    actions.push(action);
  }
  return actions;
}

function pendingAction(key: string, cidr: string, block: Block | undefined, node: string): GcAction {
  if (!block) return { kind: 'remove-pending-affinity', target: key, detail: `claim of ${cidr} never completed` };
  if (block.affinity === `host:${node}`) return { kind: 'confirm-affinity', target: key, detail: `block ${cidr} is this node's, its claim was never confirmed` };
  return { kind: 'remove-pending-affinity', target: key, detail: `claim of ${cidr} lost: the block is ${block.affinity ?? 'not affine to any host'}` };
}

/** The affinities among `kvs` that are still as they were after waiting `ms` (all of them when ms is 0). */
async function unchangedAfter(store: Store, kvs: readonly KeyValue[], ms: number, sleep = defaultSleep): Promise<KeyValue[]> {
  if (kvs.length === 0 || ms <= 0) return [...kvs];
  await sleep(ms);
  const now = await store.read(kvs.map((kv) => ({ key: kv.key })));
  return kvs.filter((kv, i) => now[i]?.[0]?.modRevision === kv.modRevision);
}

const defaultSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
