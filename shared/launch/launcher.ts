/**
 * The first code of each binary. The plugin itself (~1 MB bundled) rides behind this launcher inside a
 * block comment, brotli-compressed and base64-encoded (scripts/pack-payload.mjs), so answering VERSION (podman asks before every ADD and DEL) parses a few KB instead of
 * the whole bundle. Every other call decodes the payload and compiles it with a V8 code cache kept in
 * /var/cache/calico-ts (or CALICO_TS_CACHE_DIR; CALICO_TS_CODE_CACHE=0 turns it off), which spares
 * most of the compile time on every later start.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import vm from 'node:vm';
import zlib from 'node:zlib';
import { CURRENT_VERSION, SUPPORTED_VERSIONS } from '../cni/version';

export const PAYLOAD_MARK = '/*CALICO-TS-PAYLOAD:';
/** Replaced per binary by the build; the payload mark carries the same id. */
const BUILD_ID = '__CALICO_TS_BUILD_ID__';

function answerVersion(): void {
  if (!process.stdin.isTTY) {
    try {
      fs.readFileSync(0);
    } catch {
      // nothing to drain
    }
  }
  process.stdout.write(`${JSON.stringify({ cniVersion: CURRENT_VERSION, supportedVersions: SUPPORTED_VERSIONS })}\n`);
}

function cachePath(self: string, st: fs.Stats): string | undefined {
  if (process.env.CALICO_TS_CODE_CACHE === '0') return undefined;
  const dir = process.env.CALICO_TS_CACHE_DIR || '/var/cache/calico-ts';
  const id = `${path.basename(self)}-${st.ino}-${st.size}-${Math.trunc(st.mtimeMs)}-${process.version}-${process.arch}`;
  return path.join(dir, `${id}.v8cache`);
}

function readCache(file: string | undefined): Buffer | undefined {
  if (!file) return undefined;
  try {
    return fs.readFileSync(file);
  } catch {
    return undefined;
  }
}

/** Written once (atomically) when there was no usable cache; a failure to write is never an error. */
function writeCacheOnExit(file: string, script: vm.Script): void {
  process.once('exit', () => {
    try {
      const data = script.createCachedData();
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
      const tmp = `${file}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, data, { mode: 0o600 });
      fs.renameSync(tmp, file);
    } catch {
      // read-only or full disk: start without a cache next time too
    }
  });
}


/**
 * The binary was replaced between node reading this launcher and the launcher reading its payload (an
 * upgrade mid-call): run the new file instead, once, with the same arguments, environment and stdin.
 */
function reexec(self: string): never {
  if (process.env.CALICO_TS_REEXEC === '1') throw new Error(`${self} keeps changing while it starts; retry`);
  const r = spawnSync(process.execPath, [self, ...process.argv.slice(2)], { stdio: 'inherit', env: { ...process.env, CALICO_TS_REEXEC: '1' } });
  process.exit(r.status ?? 1);
}

function runPayload(self: string): void {
  const text = fs.readFileSync(self, 'latin1');
  const at = text.lastIndexOf(PAYLOAD_MARK);
  const end = text.lastIndexOf('*/');
  if (at < 0 || end < at) throw new Error(`${self}: payload missing (rebuild with scripts/build-binaries.sh)`);
  const idEnd = text.indexOf(':', at + PAYLOAD_MARK.length);
  if (text.slice(at + PAYLOAD_MARK.length, idEnd) !== BUILD_ID) reexec(self);
  const code = zlib.brotliDecompressSync(Buffer.from(text.slice(idEnd + 1, end), 'base64')).toString('utf8');
  const st = fs.statSync(self);
  const cacheFile = cachePath(self, st);
  const cachedData = readCache(cacheFile);
  const wrapped = `(function (exports, require, module, __filename, __dirname) {${code}\n})`;
  const script = new vm.Script(wrapped, { filename: self, ...(cachedData ? { cachedData } : {}) });
  if (cacheFile && (!cachedData || script.cachedDataRejected)) writeCacheOnExit(cacheFile, script);
  const fn = script.runInThisContext() as (e: object, r: NodeJS.Require, m: object, f: string, d: string) => void;
  const mod = { exports: {} };
  fn(mod.exports, createRequire(self), mod, self, path.dirname(self));
}

/** Nothing may escape as a stack trace: a CNI caller gets an error object, an operator a message. */
function fail(e: unknown): never {
  const msg = e instanceof Error ? e.message : String(e);
  if (process.env.CNI_COMMAND) process.stdout.write(`${JSON.stringify({ cniVersion: CURRENT_VERSION, code: 999, msg: `failed to start: ${msg}` })}\n`);
  else process.stderr.write(`failed to start: ${msg}\n`);
  process.exit(1);
}

try {
  const self = fs.realpathSync(process.argv[1] ?? __filename);
  if (process.env.CNI_COMMAND === 'VERSION') answerVersion();
  else runPayload(self);
} catch (e) {
  fail(e);
}
