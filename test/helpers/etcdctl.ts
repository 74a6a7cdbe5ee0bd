/**
 * Raw key access through the real `etcdctl` for any endpoint list (a cluster, a TLS etcd), so assertions on
 * stored state never depend on our own etcd client code. Complements helpers/etcd.ts, whose accessors are
 * bound to one plain-http single-member server.
 */
import { execFile } from 'node:child_process';
import { ETCDCTL_BIN } from './etcd';

export interface EtcdctlTls {
  caFile: string;
  certFile: string;
  keyFile: string;
}

export interface EtcdctlTarget {
  /** Comma-separated client URLs. */
  endpoints: string;
  tls?: EtcdctlTls;
}

export function etcdctl(target: EtcdctlTarget, args: readonly string[], timeoutMs = 20_000): Promise<string> {
  const tls = target.tls ? ['--cacert', target.tls.caFile, '--cert', target.tls.certFile, '--key', target.tls.keyFile] : [];
  return new Promise((resolve, reject) => {
    execFile(
      ETCDCTL_BIN,
      ['--endpoints', target.endpoints, '--command-timeout', '10s', ...tls, ...args],
      { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ETCDCTL_API: '3' }, maxBuffer: 512 * 1024 * 1024, encoding: 'utf8', timeout: timeoutMs, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`etcdctl ${args.join(' ')} failed: ${err.message}\n${stderr}`));
        else resolve(stdout);
      },
    );
  });
}

/** Every key under `prefix` with its value, and the store's revision, from one consistent read. */
export async function getPrefixAt(target: EtcdctlTarget, prefix: string): Promise<{ kv: Map<string, string>; revision: number }> {
  const out = await etcdctl(target, ['get', '--prefix', '-w', 'json', '--', prefix]);
  const parsed = JSON.parse(out) as { header?: { revision?: number | string }; kvs?: { key: string; value?: string }[] };
  const kv = new Map<string, string>();
  for (const e of parsed.kvs ?? []) kv.set(Buffer.from(e.key, 'base64').toString('utf8'), Buffer.from(e.value ?? '', 'base64').toString('utf8'));
  return { kv, revision: Number(parsed.header?.revision ?? 0) };
}

/** Every key under `prefix` with its value (a consistent read through etcdctl's JSON output). */
export async function getPrefix(target: EtcdctlTarget, prefix: string): Promise<Map<string, string>> {
  return (await getPrefixAt(target, prefix)).kv;
}

/** The store's current revision: any write, including one that changes nothing visible, moves it. */
export async function revision(target: EtcdctlTarget): Promise<number> {
  const out = await etcdctl(target, ['get', '-w', 'json', '--', '/']);
  const parsed = JSON.parse(out) as { header?: { revision?: number | string } };
  return Number(parsed.header?.revision ?? 0);
}
