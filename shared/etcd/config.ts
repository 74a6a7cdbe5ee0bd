import fs from 'node:fs';
import { CniError, ErrorCode, errorMessage } from '../cni/errors';
import type { NetConf } from '../cni/config';

/** How to reach etcd: resolved from the netconf first, then from the environment, as upstream does. */
export type EtcdTransport = 'grpc' | 'http';

export interface EtcdConfig {
  endpoints: string[];
  /**
   * http (default): etcd's v3 JSON gateway over node:http, the same keys and transactions at a fraction of
   * the start-up time and memory; grpc: the etcd3 client, for clusters that turn the gateway off.
   */
  transport: EtcdTransport;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  username?: string;
  password?: string;
  /** Per-request deadline; a request that takes longer fails with "try again later". */
  requestTimeoutMs: number;
}

export const DEFAULT_REQUEST_TIMEOUT_MS = 5_000;

type Env = Readonly<Record<string, string | undefined>>;

function pick(...vals: (string | undefined)[]): string | undefined {
  return vals.find((v) => v !== undefined && v !== '');
}

export function parseEndpoints(raw: string): string[] {
  const eps = raw.split(',').map((s) => s.trim()).filter((s) => s !== '');
  for (const ep of eps) {
    let url: URL;
    try {
      url = new URL(ep);
    } catch {
      throw new CniError(ErrorCode.InvalidConfig, `invalid etcd endpoint ${JSON.stringify(ep)}: expected http(s)://host:port or unix:///path`);
    }
    // unix:// reaches an etcd listening on a socket file, from any network namespace.
    if (url.protocol !== 'http:' && url.protocol !== 'https:' && url.protocol !== 'unix:') {
      throw new CniError(ErrorCode.InvalidConfig, `invalid etcd endpoint ${JSON.stringify(ep)}: scheme must be http, https or unix`);
    }
  }
  return eps;
}

/**
 * Netconf keys win over ETCD_* variables (upstream exports the netconf into the environment and then reads
 * it). Only the etcdv3 datastore exists here; "kubernetes" is refused with a clear message.
 */
export function resolveEtcdConfig(conf: Pick<NetConf, 'etcd_transport' | 'datastore_type' | 'etcd_endpoints' | 'etcd_discovery_srv' | 'etcd_key_file' | 'etcd_cert_file' | 'etcd_ca_cert_file' | 'etcd_username' | 'etcd_password'>, env: Env): EtcdConfig {
  const endpoints = pick(conf.etcd_endpoints, env.ETCD_ENDPOINTS, env.CALICO_ETCD_ENDPOINTS);
  const type = pick(conf.datastore_type, env.DATASTORE_TYPE, env.CALICO_DATASTORE_TYPE) ?? (endpoints ? 'etcdv3' : 'kubernetes');
  if (type !== 'etcdv3') {
    throw new CniError(ErrorCode.UnsupportedField, `unsupported datastore_type ${JSON.stringify(type)}: only "etcdv3" is supported; set etcd_endpoints`);
  }
  if (pick(conf.etcd_discovery_srv, env.ETCD_DISCOVERY_SRV)) {
    throw new CniError(ErrorCode.UnsupportedField, 'unsupported field etcd_discovery_srv: list the endpoints in etcd_endpoints instead');
  }
  if (!endpoints) {
    throw new CniError(ErrorCode.InvalidConfig, 'no etcd endpoints configured: set etcd_endpoints in the network configuration or ETCD_ENDPOINTS');
  }
  const transport = pick(conf.etcd_transport, env.CALICO_ETCD_TRANSPORT) ?? 'http';
  if (transport !== 'grpc' && transport !== 'http') {
    throw new CniError(ErrorCode.InvalidConfig, `invalid etcd_transport ${JSON.stringify(transport)}: expected "grpc" or "http"`);
  }
  const cfg: EtcdConfig = { endpoints: parseEndpoints(endpoints), transport, requestTimeoutMs: DEFAULT_REQUEST_TIMEOUT_MS };
  const ca = pick(conf.etcd_ca_cert_file, env.ETCD_CA_CERT_FILE);
  const cert = pick(conf.etcd_cert_file, env.ETCD_CERT_FILE);
  const key = pick(conf.etcd_key_file, env.ETCD_KEY_FILE);
  const user = pick(conf.etcd_username, env.ETCD_USERNAME);
  const pass = pick(conf.etcd_password, env.ETCD_PASSWORD);
  if (ca) cfg.caFile = ca;
  if (cert) cfg.certFile = cert;
  if (key) cfg.keyFile = key;
  if (user) cfg.username = user;
  if (pass) cfg.password = pass;
  if (Boolean(cert) !== Boolean(key)) {
    throw new CniError(ErrorCode.InvalidConfig, 'etcd_cert_file and etcd_key_file must be set together');
  }
  const timeout = Number(env.CALICO_ETCD_TIMEOUT_MS);
  if (Number.isFinite(timeout) && timeout > 0) cfg.requestTimeoutMs = timeout;
  return cfg;
}

/** The identity (Store.identity) of a store opened with this config: the same cluster, reached the same way. */
export function etcdIdentity(cfg: EtcdConfig): string {
  return `etcd:${JSON.stringify(cfg)}`;
}

/** Reads a certificate or key file the config names; a missing or unreadable file is a config error. */
export function readCredentialFile(what: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new CniError(ErrorCode.InvalidConfig, `failed to read ${what} ${JSON.stringify(file)}: ${errorMessage(e)}`);
  }
}

/** A datastore call no endpoint answered: "try again later" (11), naming TLS when that is what failed. */
export function etcdUnavailable(cfg: Pick<EtcdConfig, 'endpoints'>, detail: string): CniError {
  const what = /certificate|SSL|TLS|handshake|alert|self.signed/i.test(detail) ? 'etcd TLS handshake failed' : 'etcd unavailable';
  return new CniError(ErrorCode.TryAgainLater, `${what} at [${cfg.endpoints.join(', ')}]: ${detail}`);
}
