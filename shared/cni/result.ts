import * as z from 'zod/mini';
import { CniError, ErrorCode } from './errors';
import { parseWith } from './schema';
import { compareVersions } from './version';

/**
 * The internal result is the 1.1.0 shape; every other version is derived from it on output, and every
 * version a delegated plugin may print is read back into it.
 */
export const InterfaceSchema = z.looseObject({
  name: z.string(),
  mac: z.optional(z.string()),
  mtu: z.optional(z.int()),
  sandbox: z.optional(z.string()),
  socketPath: z.optional(z.string()),
  pciID: z.optional(z.string()),
});

export const IpConfigSchema = z.looseObject({
  interface: z.optional(z.int().check(z.minimum(0))),
  address: z.string(),
  gateway: z.optional(z.string()),
});

export const RouteSchema = z.looseObject({
  dst: z.string(),
  gw: z.optional(z.string()),
  mtu: z.optional(z.int()),
  advmss: z.optional(z.int()),
  priority: z.optional(z.int()),
  table: z.optional(z.int()),
  scope: z.optional(z.int()),
});

export const DnsSchema = z.looseObject({
  nameservers: z.optional(z.array(z.string())),
  domain: z.optional(z.string()),
  search: z.optional(z.array(z.string())),
  options: z.optional(z.array(z.string())),
});

export const ResultSchema = z.object({
  cniVersion: z.string(),
  interfaces: z.optional(z.array(InterfaceSchema)),
  ips: z.optional(z.array(IpConfigSchema)),
  routes: z.optional(z.array(RouteSchema)),
  dns: z.optional(DnsSchema),
});

export type Interface = z.infer<typeof InterfaceSchema>;
export type IpConfig = z.infer<typeof IpConfigSchema>;
export type Route = z.infer<typeof RouteSchema>;
export type Dns = z.infer<typeof DnsSchema>;
export type Result = z.infer<typeof ResultSchema>;

const LegacyIpSchema = z.object({
  ip: z.string(),
  gateway: z.optional(z.string()),
  routes: z.optional(z.array(z.pick(RouteSchema, { dst: true, gw: true }))),
});
const LegacyResultSchema = z.object({
  cniVersion: z.optional(z.string()),
  ip4: z.optional(LegacyIpSchema),
  ip6: z.optional(LegacyIpSchema),
  dns: z.optional(DnsSchema),
});

export function isV6Cidr(cidr: string): boolean {
  return cidr.includes(':');
}

function dnsIsEmpty(dns: Dns | undefined): boolean {
  if (!dns) return true;
  return !dns.nameservers?.length && !dns.domain && !dns.search?.length && !dns.options?.length;
}

/** Reads a result printed in any supported version (e.g. by a delegated IPAM plugin) into the internal shape. */
export function parseAnyResult(raw: unknown, fallbackVersion: string): Result {
  const version = typeof raw === 'object' && raw !== null && 'cniVersion' in raw && typeof raw.cniVersion === 'string' && raw.cniVersion !== ''
    ? raw.cniVersion
    : fallbackVersion;
  if (compareVersions(version, '0.3.0') < 0) {
    const legacy = parseWith(LegacyResultSchema, raw, ErrorCode.DecodeFailure, `failed to decode ${version} result`);
    const ips: IpConfig[] = [];
    const routes: Route[] = [];
    for (const ip of [legacy.ip4, legacy.ip6]) {
      if (!ip) continue;
      ips.push(ip.gateway ? { address: ip.ip, gateway: ip.gateway } : { address: ip.ip });
      for (const r of ip.routes ?? []) routes.push(r.gw ? { dst: r.dst, gw: r.gw } : { dst: r.dst });
    }
    const out: Result = { cniVersion: version, ips, routes };
    if (!dnsIsEmpty(legacy.dns) && legacy.dns) out.dns = legacy.dns;
    return out;
  }
  const r = parseWith(ResultSchema, { ...(raw as object), cniVersion: version }, ErrorCode.DecodeFailure, `failed to decode ${version} result`);
  // 0.3.x/0.4.0 carry ips[].version; the internal shape derives it from the address.
  return { ...r, ips: r.ips?.map(({ version: _v, ...ip }) => ip) };
}

function pick<T extends object, K extends keyof T>(o: T, keys: readonly K[]): Pick<T, K> {
  const out = {} as Pick<T, K>;
  for (const k of keys) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

const IFACE_1_0 = ['name', 'mac', 'sandbox'] as const;
const ROUTE_1_0 = ['dst', 'gw'] as const;
const IP_1_0 = ['interface', 'address', 'gateway'] as const;

/** Converts the internal result to the JSON object the given spec version prints. */
export function formatResult(r: Result, version: string): Record<string, unknown> {
  if (compareVersions(version, '0.3.0') < 0) return formatLegacy(r, version);
  const is11 = compareVersions(version, '1.1.0') >= 0;
  const is1x = compareVersions(version, '1.0.0') >= 0;
  const interfaces = r.interfaces?.map((i) => (is11 ? { ...i } : pick(i, IFACE_1_0)));
  const ips = r.ips?.map((ip) => {
    const base = pick(ip, IP_1_0);
    return is1x ? base : { version: isV6Cidr(ip.address) ? '6' : '4', ...base };
  });
  const routes = r.routes?.map((rt) => (is11 ? { ...rt } : pick(rt, ROUTE_1_0)));
  const out: Record<string, unknown> = { cniVersion: version };
  if (interfaces?.length) out.interfaces = interfaces;
  if (ips?.length) out.ips = ips;
  if (routes?.length) out.routes = routes;
  // 1.x omits an empty dns; 0.3.x/0.4.0 always print the struct (as libcni does).
  if (!dnsIsEmpty(r.dns)) out.dns = r.dns;
  else if (!is1x) out.dns = {};
  return out;
}

function formatLegacy(r: Result, version: string): Record<string, unknown> {
  const out: Record<string, unknown> = { cniVersion: version };
  const v4 = r.ips?.find((ip) => !isV6Cidr(ip.address));
  const v6 = r.ips?.find((ip) => isV6Cidr(ip.address));
  if (!v4 && !v6) {
    throw new CniError(ErrorCode.IncompatibleVersion, `cannot convert result to version ${version}: it needs at least one IP address`);
  }
  const legacyIp = (ip: IpConfig, v6Family: boolean): Record<string, unknown> => {
    const o: Record<string, unknown> = { ip: ip.address };
    if (ip.gateway) o.gateway = ip.gateway;
    const routes = (r.routes ?? []).filter((rt) => isV6Cidr(rt.dst) === v6Family).map((rt) => pick(rt, ROUTE_1_0));
    if (routes.length) o.routes = routes;
    return o;
  };
  if (v4) out.ip4 = legacyIp(v4, false);
  if (v6) out.ip6 = legacyIp(v6, true);
  out.dns = dnsIsEmpty(r.dns) ? {} : r.dns;
  return out;
}
