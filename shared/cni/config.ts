import * as z from 'zod/mini';
import { CniError, ErrorCode } from './errors';
import { DnsSchema } from './result';
import { parseWith } from './schema';

/** libcni's rule for network names, which Calico also uses as the profile name and handle prefix. */
export const NETWORK_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** Upstream reads assign_ipv4/assign_ipv6 as strings ("true"/"false"); booleans are accepted too. */
const BoolString = z.pipe(z.union([z.string(), z.boolean()]), z.transform((v) => String(v).toLowerCase()));

export const IpamConfSchema = z.looseObject({
  type: z.string().check(z.minLength(1, 'ipam.type must name an IPAM plugin')),
  assign_ipv4: z.optional(BoolString),
  assign_ipv6: z.optional(BoolString),
  ipv4_pools: z.optional(z.array(z.string().check(z.minLength(1)))),
  ipv6_pools: z.optional(z.array(z.string().check(z.minLength(1)))),
  subnet: z.optional(z.string()),
});

export const AttachmentSchema = z.looseObject({ containerID: z.string(), ifname: z.string() });

export const RuntimeConfigSchema = z.looseObject({
  ips: z.optional(z.array(z.string())),
});

export const NetConfSchema = z.looseObject({
  cniVersion: z.optional(z.string()),
  cniVersions: z.optional(z.array(z.string())),
  name: z.string().check(z.regex(NETWORK_NAME, 'must start with a letter or digit and contain only letters, digits, "_", "." and "-"')),
  type: z.string().check(z.minLength(1)),
  ipam: z.optional(IpamConfSchema),
  dns: z.optional(DnsSchema),
  prevResult: z.optional(z.unknown()),
  runtimeConfig: z.optional(RuntimeConfigSchema),
  args: z.optional(z.record(z.string(), z.unknown())),
  'cni.dev/valid-attachments': z.optional(z.array(AttachmentSchema)),
  // libcni 1.2.3+ sends both keys (cni#1101); either is accepted.
  'cni.dev/attachments': z.optional(z.array(AttachmentSchema)),

  // Calico's netconf (cni-plugin/pkg/types/types.go).
  datastore_type: z.optional(z.string()),
  /** calico-ts: "http" (etcd's v3 JSON gateway, default) or "grpc" (the etcd3 client). */
  etcd_transport: z.optional(z.enum(['grpc', 'http'])),
  /** calico-ts: the node agent's socket (`calico agent`); calls go there when it answers, else run here. */
  agent_socket: z.optional(z.string().check(z.regex(/^\/[^\0]*$/, 'must be an absolute path'))),
  etcd_endpoints: z.optional(z.string()),
  etcd_discovery_srv: z.optional(z.string()),
  etcd_key_file: z.optional(z.string()),
  etcd_cert_file: z.optional(z.string()),
  etcd_ca_cert_file: z.optional(z.string()),
  etcd_username: z.optional(z.string()),
  etcd_password: z.optional(z.string()),
  log_level: z.optional(z.string()),
  log_file_path: z.optional(z.string()),
  mtu: z.optional(z.int().check(z.minimum(0), z.maximum(65535))),
  require_mtu_file: z.optional(z.boolean()),
  num_queues: z.optional(z.int()),
  nodename: z.optional(z.string()),
  nodename_file: z.optional(z.string()),
  nodename_file_optional: z.optional(z.boolean()),
  hostname: z.optional(z.string()),
  ipam_lock_file: z.optional(z.string()),
  container_settings: z.optional(z.looseObject({ allow_ip_forwarding: z.optional(z.boolean()) })),
  policy: z.optional(z.looseObject({ type: z.optional(z.string()) })),
  feature_control: z.optional(z.looseObject({ ip_addrs_no_ipam: z.optional(z.boolean()), floating_ips: z.optional(z.boolean()) })),
});

export type NetConf = z.infer<typeof NetConfSchema>;
export type IpamConf = z.infer<typeof IpamConfSchema>;
export type Attachment = z.infer<typeof AttachmentSchema>;

/** Parses stdin: bad JSON is a decode failure (6); a wrong shape is an invalid config (7) naming the field. */
export function parseNetConf(stdin: string): NetConf {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (e) {
    throw new CniError(ErrorCode.DecodeFailure, `failed to parse network configuration: ${(e as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new CniError(ErrorCode.DecodeFailure, 'failed to parse network configuration: expected a JSON object');
  }
  return parseWith(NetConfSchema, raw, ErrorCode.InvalidConfig, 'invalid network configuration');
}

/** The attachments a GC must keep. */
export function validAttachments(conf: NetConf): Attachment[] {
  return conf['cni.dev/valid-attachments'] ?? conf['cni.dev/attachments'] ?? [];
}
