import fs from 'node:fs';
import path from 'node:path';
import { ETCD3_PROTOS } from './etcd3-protos.generated';

/**
 * etcd3 reads rpc.proto (which imports kv.proto and auth.proto) from disk when it is first required. A
 * single-file binary has no such files beside it, so for the duration of that require the bundle serves
 * the copies it embedded at build time (scripts/gen-etcd3-protos.mjs); every other read goes to disk.
 */
export async function withEmbeddedProtos<T>(load: () => Promise<T>): Promise<T> {
  const original = fs.readFileSync;
  const served = (p: unknown): string | undefined => {
    if (typeof p !== 'string') return undefined;
    const text = ETCD3_PROTOS[path.basename(p)];
    return text !== undefined && !fs.existsSync(p) ? text : undefined;
  };
  const patched = function (this: unknown, p: fs.PathOrFileDescriptor, options?: unknown): string | Buffer {
    const text = served(p);
    if (text !== undefined) return options ? text : Buffer.from(text);
    return (original as (p: fs.PathOrFileDescriptor, o?: unknown) => string | Buffer).call(fs, p, options);
  };
  (fs as { readFileSync: unknown }).readFileSync = patched;
  try {
    return await load();
  } finally {
    (fs as { readFileSync: unknown }).readFileSync = original;
  }
}
