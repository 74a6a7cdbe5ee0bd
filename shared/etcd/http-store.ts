import http from 'node:http';
import https from 'node:https';
import { CniError, ErrorCode } from '../cni/errors';
import type { Compare, KeyValue, Op, Read, Store, TxnResult } from '../store/store';
import { etcdIdentity, etcdUnavailable, readCredentialFile, type EtcdConfig } from './config';
import { prefixEnd } from './prefix';

/*
 * Store over etcd's v3 gRPC-JSON gateway (POST /v3/kv/range and /v3/kv/txn, keys and values in base64),
 * with node:http keep-alive. It needs no gRPC or protobuf code at all, so a plugin process starts in a
 * fraction of the time and memory of the etcd3 client. Chosen with etcd_transport "http" (see README).
 */

interface GatewayKv {
  key: string;
  value?: string;
  mod_revision?: string;
}
interface GatewayResponse {
  header?: { revision?: string };
  succeeded?: boolean;
  responses?: { response_range?: { kvs?: GatewayKv[] } }[];
  kvs?: GatewayKv[];
  error?: string;
  message?: string;
  code?: number;
}

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

/** A transient failure of one endpoint: the next endpoint is tried. */
class EndpointDown extends Error {
  /** The request went out on a kept-alive connection the server had closed: it never reached etcd. */
  constructor(
    message: string,
    readonly staleConnection = false,
  ) {
    super(message);
  }
}

type Agent = http.Agent | https.Agent;

/**
 * Connections kept across calls, by endpoint and TLS material, in a long-lived process (the node agent):
 * each call then skips the connect and, with TLS, the handshake. A plugin process makes one call and
 * closes its own.
 */
let shared: Map<string, Agent> | undefined;
const MAX_SHARED = 16;

export function keepConnectionsAcrossCalls(): void {
  shared ??= new Map();
}

/** Closes the kept connections (a stopping agent), and goes back to a connection set per store. */
export function closeSharedConnections(): void {
  for (const a of shared?.values() ?? []) a.destroy();
  shared = undefined;
}

function sharedAgent(key: string, make: () => Agent): Agent {
  if (!shared) return make();
  let a = shared.get(key);
  if (!a) {
    // Rotated certificates leave older entries behind: start over rather than grow without bound.
    if (shared.size >= MAX_SHARED) {
      for (const old of shared.values()) old.destroy();
      shared.clear();
    }
    a = make();
    shared.set(key, a);
  }
  return a;
}

const STALE_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);

export class HttpEtcdStore implements Store {
  private trips = 0;
  private token: string | undefined;
  private readonly agents: Agent[];
  private readonly pooled = shared !== undefined;
  /** The endpoint that answered last; tried first next time. */
  private current = 0;

  constructor(private readonly cfg: EtcdConfig) {
    const tls = {
      ...(cfg.caFile ? { ca: readCredentialFile('etcd_ca_cert_file', cfg.caFile) } : {}),
      ...(cfg.certFile ? { cert: readCredentialFile('etcd_cert_file', cfg.certFile) } : {}),
      ...(cfg.keyFile ? { key: readCredentialFile('etcd_key_file', cfg.keyFile) } : {}),
    };
    this.agents = cfg.endpoints.map((ep) =>
      sharedAgent(JSON.stringify([ep, tls.ca ?? '', tls.cert ?? '', tls.key ?? '']), () =>
        ep.startsWith('https:') ? new https.Agent({ keepAlive: true, ...tls }) : new http.Agent({ keepAlive: true }),
      ),
    );
  }

  get identity(): string {
    return etcdIdentity(this.cfg);
  }

  get roundTrips(): number {
    return this.trips;
  }

  private requestOnce(i: number, path: string, body: unknown): Promise<GatewayResponse> {
    const ep = this.cfg.endpoints[i] ?? '';
    const url = new URL(ep);
    const payload = JSON.stringify(body);
    const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) };
    if (this.token) headers.authorization = this.token;
    // unix:///path/to/socket: the whole URL path is the socket file.
    const target =
      url.protocol === 'unix:'
        ? { socketPath: decodeURIComponent(url.pathname), path }
        : { hostname: url.hostname, port: url.port || (url.protocol === 'https:' ? 443 : 80), path };
    const mod = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request({ ...target, method: 'POST', headers, agent: this.agents[i], timeout: this.cfg.requestTimeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode === 404) {
            return reject(new EndpointDown(`${ep}: no etcd v3 JSON gateway (HTTP 404 for ${path}); for an etcd started with --enable-grpc-gateway=false set etcd_transport "grpc"`));
          }
          let parsed: GatewayResponse;
          try {
            parsed = JSON.parse(text) as GatewayResponse;
          } catch {
            return reject(new EndpointDown(`${ep}: HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
          }
          if ((res.statusCode ?? 500) >= 500 || parsed.code === 14) return reject(new EndpointDown(`${ep}: ${parsed.message ?? parsed.error ?? `HTTP ${res.statusCode}`}`));
          if ((res.statusCode ?? 500) >= 400) return reject(new CniError(ErrorCode.TryAgainLater, `etcd at ${ep} refused ${path}: ${parsed.message ?? parsed.error ?? `HTTP ${res.statusCode}`}`));
          resolve(parsed);
        });
      });
      req.on('timeout', () => req.destroy(new EndpointDown(`${ep}: no answer within ${this.cfg.requestTimeoutMs} ms`)));
      req.on('error', (e: NodeJS.ErrnoException) =>
        reject(e instanceof EndpointDown ? e : new EndpointDown(`${ep}: ${e.message}`, req.reusedSocket && STALE_CODES.has(e.code ?? ''))),
      );
      req.end(payload);
    });
  }

  /** Tries each endpoint once, starting with the last good one; all down is "try again later". */
  private async request(path: string, body: unknown): Promise<GatewayResponse> {
    this.trips++;
    const errors: string[] = [];
    const n = this.cfg.endpoints.length;
    for (let k = 0; k < n; k++) {
      const i = (this.current + k) % n;
      try {
        if (this.cfg.username && this.cfg.password && !this.token) await this.authenticate(i);
        const res = await this.requestFresh(i, path, body);
        this.current = i;
        return res;
      } catch (e) {
        if (!(e instanceof EndpointDown)) throw e;
        errors.push(e.message);
      }
    }
    throw etcdUnavailable(this.cfg, errors.join('; '));
  }

  /** Sent on a kept connection etcd had closed meanwhile, a request never arrived: once more, afresh. */
  private requestFresh(i: number, path: string, body: unknown): Promise<GatewayResponse> {
    return this.requestOnce(i, path, body).catch((e: unknown) => {
      if (e instanceof EndpointDown && e.staleConnection) return this.requestOnce(i, path, body);
      throw e;
    });
  }

  private async authenticate(i: number): Promise<void> {
    const res = await this.requestFresh(i, '/v3/auth/authenticate', { name: this.cfg.username, password: this.cfg.password });
    this.token = (res as { token?: string }).token;
  }

  async read(reads: readonly Read[]): Promise<KeyValue[][]> {
    const success = reads.map((r) =>
      'key' in r
        ? { request_range: { key: b64(r.key) } }
        : { request_range: { key: b64(r.prefix), range_end: prefixEnd(r.prefix).toString('base64'), keys_only: r.keysOnly ?? false } },
    );
    const res = await this.request('/v3/kv/txn', { compare: [], success, failure: [] });
    return (res.responses ?? []).map((r) =>
      (r.response_range?.kvs ?? []).map((kv) => ({
        key: Buffer.from(kv.key, 'base64').toString('utf8'),
        value: Buffer.from(kv.value ?? '', 'base64').toString('utf8'),
        modRevision: Number(kv.mod_revision ?? 0),
      })),
    );
  }

  async txn(compares: readonly Compare[], ops: readonly Op[]): Promise<TxnResult> {
    const res = await this.request('/v3/kv/txn', {
      compare: compares.map((c) => ({ key: b64(c.key), target: 'MOD', result: 'EQUAL', mod_revision: String(c.modRevision) })),
      success: ops.map((op) => (op.op === 'put' ? { request_put: { key: b64(op.key), value: b64(op.value) } } : { request_delete_range: { key: b64(op.key) } })),
      failure: [],
    });
    return { succeeded: res.succeeded === true, revision: Number(res.header?.revision ?? 0) };
  }

  async close(): Promise<void> {
    if (!this.pooled) for (const a of this.agents) a.destroy();
  }
}
