/** etcd keys of Calico's data model in etcd v3 mode (libcalico-go backend/model), byte for byte. */
export type Family = 4 | 6;

const RESOURCES = '/calico/resources/v3/projectcalico.org';

/** "10.0.0.0/26" -> "10.0.0.0-26": a block CIDR as it appears in a key. */
export function cidrToKeyPart(cidr: string): string {
  return cidr.replace('/', '-');
}

/** "10.0.0.0-26" -> "10.0.0.0/26". The last "-" is the separator (IPv6 addresses have none). */
export function keyPartToCidr(part: string): string {
  const i = part.lastIndexOf('-');
  return i < 0 ? part : `${part.slice(0, i)}/${part.slice(i + 1)}`;
}

export const keys = {
  blockPrefix: (family: Family) => `/calico/ipam/v2/assignment/ipv${family}/block/`,
  block: (family: Family, cidr: string) => `/calico/ipam/v2/assignment/ipv${family}/block/${cidrToKeyPart(cidr)}`,
  hostAffinityPrefix: (host: string, family: Family) => `/calico/ipam/v2/host/${host}/ipv${family}/block/`,
  hostAffinity: (host: string, family: Family, cidr: string) => `/calico/ipam/v2/host/${host}/ipv${family}/block/${cidrToKeyPart(cidr)}`,
  allAffinitiesPrefix: '/calico/ipam/v2/host/',
  handlePrefix: '/calico/ipam/v2/handle/',
  handle: (id: string) => `/calico/ipam/v2/handle/${id}`,
  ipamConfig: '/calico/ipam/v2/config',
  poolPrefix: `${RESOURCES}/ippools/`,
  pool: (name: string) => `${RESOURCES}/ippools/${name}`,
  node: (name: string) => `${RESOURCES}/nodes/${name}`,
  clusterInformation: `${RESOURCES}/clusterinformations/default`,
  profile: (name: string) => `${RESOURCES}/profiles/${name}`,
  workloadEndpointPrefix: `${RESOURCES}/workloadendpoints/`,
  workloadEndpoint: (namespace: string, name: string) => `${RESOURCES}/workloadendpoints/${namespace}/${name}`,
  ipReservationPrefix: `${RESOURCES}/ipreservations/`,
};

/** Parses an affinity key into its host, family and block CIDR. */
export function parseAffinityKey(key: string): { host: string; family: Family; cidr: string } | undefined {
  const m = /^\/calico\/ipam\/v2\/host\/([^/]+)\/ipv([46])\/block\/([^/]+)$/.exec(key);
  if (!m || !m[1] || !m[3]) return undefined;
  return { host: m[1], family: m[2] === '6' ? 6 : 4, cidr: keyPartToCidr(m[3]) };
}

export function parseBlockKey(key: string): { family: Family; cidr: string } | undefined {
  const m = /^\/calico\/ipam\/v2\/assignment\/ipv([46])\/block\/([^/]+)$/.exec(key);
  if (!m || !m[2]) return undefined;
  return { family: m[1] === '6' ? 6 : 4, cidr: keyPartToCidr(m[2]) };
}
