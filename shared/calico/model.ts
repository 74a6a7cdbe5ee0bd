import { randomUUID } from 'node:crypto';
import * as z from 'zod/mini';
import { CniError, ErrorCode } from '../cni/errors';
import { parseWith } from '../cni/schema';

/*
 * Calico's stored JSON, read with zod and written in libcalico-go's field order. Unknown fields are kept
 * on read and written back, so a block or resource written by a newer Calico survives our updates.
 */

// ---- uint64 sequence numbers ------------------------------------------------------------------------
// Block sequence numbers start at the creation time in nanoseconds (~1.7e18), beyond a double's 2^53, so
// they are quoted before JSON.parse and unquoted after JSON.stringify, and held as bigint in between.

const BIG_MARK = '\u0001u64:';

function quoteSequenceNumbers(text: string): string {
  return text
    .replace(/"sequenceNumber"(\s*):(\s*)(\d+)/, '"sequenceNumber"$1:$2"$3"')
    .replace(/"sequenceNumberForAllocation"(\s*):(\s*)\{([^}]*)\}/, (_m, a: string, b: string, body: string) =>
      `"sequenceNumberForAllocation"${a}:${b}{${body.replace(/:(\s*)(\d+)/g, ':$1"$2"')}}`,
    );
}

function stringifyWithU64(value: unknown): string {
  const text = JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `${BIG_MARK}${v.toString()}` : v));
  return text.replace(/"\\u0001u64:(\d+)"/g, '$1');
}

const U64 = z.pipe(z.union([z.string().check(z.regex(/^\d+$/)), z.int().check(z.nonnegative())]), z.transform((v) => BigInt(v)));

// ---- IPAM block -------------------------------------------------------------------------------------

export const AllocationAttributeSchema = z.looseObject({
  handle_id: z.optional(z.nullable(z.string())),
  secondary: z.optional(z.nullable(z.record(z.string(), z.string()))),
});

export const BlockSchema = z.looseObject({
  cidr: z.string(),
  affinity: z.optional(z.nullable(z.string())),
  affinity_claim_time: z.optional(z.string()),
  allocations: z.array(z.nullable(z.int().check(z.nonnegative()))),
  unallocated: z.array(z.int().check(z.nonnegative())),
  attributes: z.optional(z.nullable(z.array(AllocationAttributeSchema))),
  sequenceNumber: z.optional(U64),
  sequenceNumberForAllocation: z.optional(z.nullable(z.record(z.string(), U64))),
  deleted: z.optional(z.boolean()),
  /** calico-ts extension: when each free ordinal was released (unix ms), for the reuse cooldown. */
  releaseTimes: z.optional(z.record(z.string(), z.number())),
});

export type AllocationAttribute = z.infer<typeof AllocationAttributeSchema>;
export type Block = z.infer<typeof BlockSchema>;

export function decodeBlock(text: string): Block {
  return parseStored(BlockSchema, JSON.parse(quoteSequenceNumbers(text)), 'IPAM block');
}

export function encodeBlock(b: Block): string {
  const { cidr, affinity, affinity_claim_time, allocations, unallocated, attributes, sequenceNumber, sequenceNumberForAllocation, deleted, releaseTimes, ...rest } = b;
  const ordered: Record<string, unknown> = { cidr, affinity: affinity ?? null };
  if (affinity_claim_time) ordered.affinity_claim_time = affinity_claim_time;
  Object.assign(ordered, {
    allocations,
    unallocated,
    attributes: (attributes ?? []).map((a) => ({ ...a, handle_id: a.handle_id ?? null, secondary: a.secondary ?? null })),
    sequenceNumber: sequenceNumber ?? 0n,
    sequenceNumberForAllocation: sequenceNumberForAllocation ?? {},
    deleted: deleted ?? false,
  });
  if (releaseTimes && Object.keys(releaseTimes).length > 0) ordered.releaseTimes = releaseTimes;
  return stringifyWithU64({ ...ordered, ...rest });
}

// ---- affinity, handle, IPAM config -----------------------------------------------------------------

export const AffinitySchema = z.looseObject({
  state: z.optional(z.enum(['', 'pending', 'confirmed', 'pendingDeletion'])),
  deleted: z.optional(z.boolean()),
  /** calico-ts: when a pending claim started (unix ms), so GC can tell a stuck claim from a live one. */
  claimTime: z.optional(z.number()),
});
export type Affinity = z.infer<typeof AffinitySchema>;

/** An empty value or state reads as confirmed (legacy); pending counts as not (yet) owned. */
export function decodeAffinity(text: string): Affinity {
  if (text.trim() === '') return {};
  return parseStored(AffinitySchema, JSON.parse(text), 'block affinity');
}
export function affinityConfirmed(a: Affinity): boolean {
  return a.state === undefined || a.state === '' || a.state === 'confirmed';
}
export function encodeAffinity(state: 'pending' | 'confirmed' | 'pendingDeletion', claimTimeMs?: number): string {
  return JSON.stringify(claimTimeMs === undefined ? { state, deleted: false } : { state, deleted: false, claimTime: claimTimeMs });
}

export const HandleSchema = z.looseObject({
  block: z.optional(z.nullable(z.record(z.string(), z.int()))),
  deleted: z.optional(z.boolean()),
});
export type Handle = z.infer<typeof HandleSchema>;
export function decodeHandle(text: string): Handle {
  return parseStored(HandleSchema, JSON.parse(text), 'IPAM handle');
}
export function encodeHandle(blocks: Record<string, number>): string {
  return JSON.stringify({ block: blocks, deleted: false });
}

export const IpamConfigSchema = z.looseObject({
  strict_affinity: z.optional(z.boolean()),
  auto_allocate_blocks: z.optional(z.boolean()),
  maxBlocksPerHost: z.optional(z.int().check(z.nonnegative())),
  /** calico-ts: seconds a released address rests before reuse while others are free (upstream HEAD name). */
  ipCooldownSeconds: z.optional(z.number().check(z.nonnegative())),
});
export type IpamConfig = z.infer<typeof IpamConfigSchema>;

export interface EffectiveIpamConfig {
  strictAffinity: boolean;
  autoAllocateBlocks: boolean;
  maxBlocksPerHost: number;
  ipCooldownSeconds: number;
}

export const DEFAULT_MAX_BLOCKS_PER_HOST = 20;
export const DEFAULT_IP_COOLDOWN_SECONDS = 5;

export function effectiveIpamConfig(text: string | undefined): EffectiveIpamConfig {
  const c = text ? parseStored(IpamConfigSchema, JSON.parse(text), 'IPAM config') : {};
  return {
    strictAffinity: c.strict_affinity ?? false,
    // No config at all means automatic; a stored config without the field means false, as Go reads it.
    autoAllocateBlocks: text ? (c.auto_allocate_blocks ?? false) : true,
    maxBlocksPerHost: c.maxBlocksPerHost && c.maxBlocksPerHost > 0 ? c.maxBlocksPerHost : DEFAULT_MAX_BLOCKS_PER_HOST,
    ipCooldownSeconds: c.ipCooldownSeconds ?? DEFAULT_IP_COOLDOWN_SECONDS,
  };
}

// ---- v3 resources ------------------------------------------------------------------------------------

export const API_VERSION = 'projectcalico.org/v3';

export const MetadataSchema = z.looseObject({
  name: z.string(),
  namespace: z.optional(z.string()),
  uid: z.optional(z.string()),
  creationTimestamp: z.optional(z.string()),
  resourceVersion: z.optional(z.string()),
  labels: z.optional(z.record(z.string(), z.string())),
  annotations: z.optional(z.record(z.string(), z.string())),
});
export type Metadata = z.infer<typeof MetadataSchema>;

export const IpPoolSpecSchema = z.looseObject({
  cidr: z.string(),
  vxlanMode: z.optional(z.string()),
  ipipMode: z.optional(z.string()),
  natOutgoing: z.optional(z.boolean()),
  disabled: z.optional(z.boolean()),
  disableBGPExport: z.optional(z.boolean()),
  blockSize: z.optional(z.int()),
  nodeSelector: z.optional(z.string()),
  namespaceSelector: z.optional(z.string()),
  allowedUses: z.optional(z.array(z.string())),
  assignmentMode: z.optional(z.string()),
});
export const IpPoolSchema = z.looseObject({
  kind: z.literal('IPPool'),
  apiVersion: z.string(),
  metadata: MetadataSchema,
  spec: IpPoolSpecSchema,
});
export type IpPool = z.infer<typeof IpPoolSchema>;

/** Upstream's defaults (libcalico-go clientv3/ippool.go), applied on read and on write. */
export function withPoolDefaults(pool: IpPool): IpPool {
  const v6 = pool.spec.cidr.includes(':');
  return {
    ...pool,
    spec: {
      ...pool.spec,
      vxlanMode: pool.spec.vxlanMode ?? 'Never',
      ipipMode: pool.spec.ipipMode ?? 'Never',
      blockSize: pool.spec.blockSize ?? (v6 ? 122 : 26),
      nodeSelector: pool.spec.nodeSelector || 'all()',
      allowedUses: pool.spec.allowedUses ?? ['Workload', 'Tunnel'],
      assignmentMode: pool.spec.assignmentMode ?? 'Automatic',
    },
  };
}

export function decodePool(text: string): IpPool {
  return withPoolDefaults(parseStored(IpPoolSchema, JSON.parse(text), 'IPPool'));
}

export const NodeSchema = z.looseObject({
  kind: z.literal('Node'),
  apiVersion: z.string(),
  metadata: MetadataSchema,
  spec: z.optional(z.record(z.string(), z.unknown())),
});
export type CalicoNode = z.infer<typeof NodeSchema>;
export function decodeNode(text: string): CalicoNode {
  return parseStored(NodeSchema, JSON.parse(text), 'Node');
}

export const WorkloadEndpointSpecSchema = z.looseObject({
  orchestrator: z.optional(z.string()),
  workload: z.optional(z.string()),
  node: z.optional(z.string()),
  containerID: z.optional(z.string()),
  pod: z.optional(z.string()),
  endpoint: z.optional(z.string()),
  serviceAccountName: z.optional(z.string()),
  ipNetworks: z.optional(z.array(z.string())),
  profiles: z.optional(z.array(z.string())),
  interfaceName: z.optional(z.string()),
  mac: z.optional(z.string()),
});
export const WorkloadEndpointSchema = z.looseObject({
  kind: z.literal('WorkloadEndpoint'),
  apiVersion: z.string(),
  metadata: MetadataSchema,
  spec: WorkloadEndpointSpecSchema,
});
export type WorkloadEndpoint = z.infer<typeof WorkloadEndpointSchema>;
export function decodeWorkloadEndpoint(text: string): WorkloadEndpoint {
  return parseStored(WorkloadEndpointSchema, JSON.parse(text), 'WorkloadEndpoint');
}

export const ClusterInformationSchema = z.looseObject({
  kind: z.literal('ClusterInformation'),
  apiVersion: z.string(),
  metadata: MetadataSchema,
  spec: z.looseObject({ datastoreReady: z.optional(z.boolean()) }),
});
export function decodeClusterInformation(text: string): z.infer<typeof ClusterInformationSchema> {
  return parseStored(ClusterInformationSchema, JSON.parse(text), 'ClusterInformation');
}

/** Metadata for a resource being created: clientv3 stamps a uid and creation time, never a resourceVersion. */
export function newMetadata(name: string, extra: Partial<Metadata> = {}): Metadata {
  return { name, ...extra, uid: randomUUID(), creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z') };
}

export function resource(kind: string, metadata: Metadata, spec: Record<string, unknown>): string {
  return JSON.stringify({ kind, apiVersion: API_VERSION, metadata, spec });
}

function parseStored<T extends z.ZodMiniType>(schema: T, raw: unknown, what: string): z.infer<T> {
  return parseWith(schema, raw, ErrorCode.DecodeFailure, `stored ${what} is malformed`);
}

/** JSON.parse that reports a corrupt stored value as a decode failure naming the key. */
export function parseJsonAt<T>(key: string, text: string, decode: (t: string) => T): T {
  try {
    return decode(text);
  } catch (e) {
    if (e instanceof CniError) throw e.withContext(`key ${key}`);
    throw new CniError(ErrorCode.DecodeFailure, `key ${key}: stored value is not valid JSON: ${(e as Error).message}`);
  }
}
