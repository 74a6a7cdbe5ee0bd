import type { Etcd3, IOptions } from 'etcd3';
import { errorMessage } from '../cni/errors';
import type { Compare, KeyValue, Op, Read, Store, TxnResult } from '../store/store';
import { etcdIdentity, etcdUnavailable, readCredentialFile, type EtcdConfig } from './config';
import { withEmbeddedProtos } from './protos';
import { prefixEnd } from './prefix';

type RangeKv = { key: Buffer; value: Buffer; mod_revision: string | number };

/** Store over etcd v3 (etcd3's gRPC client); every call has a deadline, and each method is one round trip. */
export class EtcdStore implements Store {
  private trips = 0;

  private constructor(
    private readonly client: Etcd3,
    private readonly cfg: EtcdConfig,
  ) {}

  static async connect(cfg: EtcdConfig): Promise<EtcdStore> {
    const secure = cfg.endpoints.some((e) => e.startsWith('https:'));
    const options: IOptions = {
      hosts: cfg.endpoints,
      dialTimeout: cfg.requestTimeoutMs,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + cfg.requestTimeoutMs }),
    };
    if (secure) {
      options.credentials = {
        rootCertificate: cfg.caFile ? readCredentialFile('etcd_ca_cert_file', cfg.caFile) : Buffer.alloc(0),
        ...(cfg.keyFile ? { privateKey: readCredentialFile('etcd_key_file', cfg.keyFile) } : {}),
        ...(cfg.certFile ? { certChain: readCredentialFile('etcd_cert_file', cfg.certFile) } : {}),
      };
      if (!cfg.caFile) delete options.credentials;
    }
    if (cfg.username && cfg.password) options.auth = { username: cfg.username, password: cfg.password };
    const mod = await withEmbeddedProtos(() => import(/* webpackMode: "eager" */ 'etcd3'));
    const { noop, retry, handleWhen, ConstantBackoff } = await import(/* webpackMode: "eager" */ 'cockatiel');
    // One try per endpoint, so a dead member fails over to the next instead of failing the call; no
    // per-host circuit breaker, since a plugin process lives for a single call. cockatiel's maxAttempts
    // counts retries after the first try, so endpoints - 1 of them: one try per endpoint in all.
    options.faultHandling = {
      host: () => noop,
      global: retry(handleWhen(mod.isRecoverableError), { maxAttempts: cfg.endpoints.length - 1, backoff: new ConstantBackoff(50) }),
    };
    return new EtcdStore(new mod.Etcd3(options), cfg);
  }

  get identity(): string {
    return etcdIdentity(this.cfg);
  }

  get roundTrips(): number {
    return this.trips;
  }

  async read(reads: readonly Read[]): Promise<KeyValue[][]> {
    const success = reads.map((r) =>
      'key' in r
        ? { request_range: { key: Buffer.from(r.key) } }
        : { request_range: { key: Buffer.from(r.prefix), range_end: prefixEnd(r.prefix), keys_only: r.keysOnly ?? false } },
    );
    this.trips++;
    let res;
    try {
      res = await this.client.kv.txn({ compare: [], success, failure: [] });
    } catch (e) {
      throw etcdUnavailable(this.cfg, errorMessage(e));
    }
    return res.responses.map((r) =>
      ((r.response_range?.kvs ?? []) as RangeKv[]).map((kv) => ({
        key: kv.key.toString(),
        value: kv.value.toString(),
        modRevision: Number(kv.mod_revision),
      })),
    );
  }

  async txn(compares: readonly Compare[], ops: readonly Op[]): Promise<TxnResult> {
    this.trips++;
    try {
      const res = await this.client.kv.txn({
        compare: compares.map((c) => ({ key: Buffer.from(c.key), target: 'Mod' as const, result: 'Equal' as const, mod_revision: c.modRevision })),
        success: ops.map((op) =>
          op.op === 'put'
            ? { request_put: { key: Buffer.from(op.key), value: Buffer.from(op.value) } }
            : { request_delete_range: { key: Buffer.from(op.key) } },
        ),
        failure: [],
      });
      return { succeeded: res.succeeded, revision: Number(res.header.revision) };
    } catch (e) {
      throw etcdUnavailable(this.cfg, errorMessage(e));
    }
  }

  async close(): Promise<void> {
    this.client.close();
  }
}
