import { z } from 'zod';
import { CniError, ErrorCode } from './errors';
import { DnsSchema } from './result';

/** libcni's rule for network names, which Calico also uses as the profile name and handle prefix. */
export const NETWORK_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** Upstream reads assign_ipv4/assign_ipv6 as strings ("true"/"false"); booleans are accepted too. */
const BoolString = z.union([z.string(), z.boolean()]).transform((v) => String(v).toLowerCase());

export const IpamConfSchema = z.looseObject({
  type: z.string().min(1, 'ipam.type must name an IPAM plugin'),
  assign_ipv4: BoolString.optional(),
  assign_ipv6: BoolString.optional(),
  ipv4_pools: z.array(z.string().min(1)).optional(),
  ipv6_pools: z.array(z.string().min(1)).optional(),
  subnet: z.string().optional(),
});

export const AttachmentSchema = z.looseObject({ containerID: z.string(), ifname: z.string() });

export const RuntimeConfigSchema = z.looseObject({
  ips: z.array(z.string()).optional(),
});

export const NetConfSchema = z.looseObject({
  cniVersion: z.string().optional(),
  cniVersions: z.array(z.string()).optional(),
  name: z.string().regex(NETWORK_NAME, 'must start with a letter or digit and contain only letters, digits, "_", "." and "-"'),
  type: z.string().min(1),
  ipam: IpamConfSchema.optional(),
  dns: DnsSchema.optional(),
  prevResult: z.unknown().optional(),
  runtimeConfig: RuntimeConfigSchema.optional(),
  args: z.record(z.string(), z.unknown()).optional(),
  'cni.dev/valid-attachments': z.array(AttachmentSchema).optional(),
  // libcni 1.2.3+ sends both keys (cni#1101); either is accepted.
  'cni.dev/attachments': z.array(AttachmentSchema).optional(),

  // Calico's netconf (cni-plugin/pkg/types/types.go).
  datastore_type: z.string().optional(),
  /** calico-ts: "grpc" (etcd3 client, default) or "http" (etcd's JSON gateway; much faster start). */
  etcd_transport: z.enum(['grpc', 'http']).optional(),
  etcd_endpoints: z.string().optional(),
  etcd_discovery_srv: z.string().optional(),
  etcd_key_file: z.string().optional(),
  etcd_cert_file: z.string().optional(),
  etcd_ca_cert_file: z.string().optional(),
  etcd_username: z.string().optional(),
  etcd_password: z.string().optional(),
  log_level: z.string().optional(),
  log_file_path: z.string().optional(),
  mtu: z.number().int().min(0).max(65535).optional(),
  require_mtu_file: z.boolean().optional(),
  num_queues: z.number().int().optional(),
  nodename: z.string().optional(),
  nodename_file: z.string().optional(),
  nodename_file_optional: z.boolean().optional(),
  hostname: z.string().optional(),
  ipam_lock_file: z.string().optional(),
  container_settings: z.looseObject({ allow_ip_forwarding: z.boolean().optional() }).optional(),
  policy: z.looseObject({ type: z.string().optional() }).optional(),
  feature_control: z.looseObject({ ip_addrs_no_ipam: z.boolean().optional(), floating_ips: z.boolean().optional() }).optional(),
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
  const parsed = NetConfSchema.safeParse(raw);
  if (!parsed.success) {
    throw new CniError(ErrorCode.InvalidConfig, `invalid network configuration: ${describeIssues(parsed.error)}`);
  }
  return parsed.data;
}

export function describeIssues(err: z.ZodError): string {
  return err.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`).join('; ');
}

/** The attachments a GC must keep. */
export function validAttachments(conf: NetConf): Attachment[] {
  return conf['cni.dev/valid-attachments'] ?? conf['cni.dev/attachments'] ?? [];
}
