/**
 * The first code of each binary. The `#!` line (scripts/build-binaries.sh) reads the head of the file and
 * evaluates this launcher alone, so node never loads the whole file as a script. The plugin rides behind
 * the launcher in block comments, one per part (scripts/pack-payload.mjs):
 *   - `main`, the plugin (an ncc bundle) as plain JavaScript, so an ADD or DEL neither decodes nor
 *     decompresses anything;
 *   - its lazily loaded chunks (today only the etcd3/gRPC datastore client, ~1.5 MB), brotli-compressed
 *     and base64-encoded, since only `etcd_transport: grpc` ever loads them.
 * The launcher answers VERSION (podman asks before every ADD and DEL) without reading any part, and hands a
 * call to the node agent when the config names one (agent_socket) and it answers. Every other call compiles
 * `main` with a V8 code cache kept in /var/cache/calico-ts (or CALICO_TS_CACHE_DIR; CALICO_TS_CODE_CACHE=0
 * turns it off), which spares most of the compile time on every later start.
 * In a single executable application (scripts/build-binaries.sh --sea) this launcher is the main script and
 * the same parts are its asset "parts": there require() loads only built-in modules, not the chunk files.
 */
import fs from 'node:fs';
import path from 'node:path';
import type vm from 'node:vm';
import { CURRENT_VERSION, SUPPORTED_VERSIONS, sniffVersion } from '../cni/version';
import { deadlineMs } from '../cni/deadline';
import { readStdinSync, writeAllSync } from '../cni/stdio';
import { AGENT_PROTOCOL, agentSocketOf, callAgent, namespacesOf } from './agent-client';
import { handBuildId, handStdin, takeHandedStdin } from './handover';
import { fnv1 } from '../hash';

// Every other built-in module is required where it is used: VERSION must not pay for loading them.
const lazy = {
  childProcess: () => require('node:child_process') as typeof import('node:child_process'),
  module: () => require('node:module') as typeof import('node:module'),
  sea: () => require('node:sea') as typeof import('node:sea'),
  vm: () => require('node:vm') as typeof import('node:vm'),
  zlib: () => require('node:zlib') as typeof import('node:zlib'),
};

export const PART_MARK = '/*CALICO-TS-PART:';
/** Replaced per binary by the build; every part carries the same id. */
const BUILD_ID = '__CALICO_TS_BUILD_ID__';

/**
 * Only the main script of a single executable application has the executable itself as its file name, so
 * a plain binary (run by node as a script) never loads node:sea to find out.
 */
const inSea = (): boolean => __filename === process.execPath && lazy.sea().isSea();

type ModuleFn = (e: object, r: NodeJS.Require, m: { exports: unknown }, f: string, d: string) => void;

function answerVersion(): void {
  try {
    readStdinSync(); // drained, as libcni's skel does
  } catch {
    // nothing to drain
  }
  writeAllSync(1, `${JSON.stringify({ cniVersion: CURRENT_VERSION, supportedVersions: SUPPORTED_VERSIONS })}\n`);
}

/**
 * The binary was replaced between node reading this launcher and the launcher reading its parts (an
 * upgrade mid-call): run the new file instead, once, with the same arguments, environment and stdin.
 */
function reexec(self: string): never {
  // A single executable application reads its parts from its own mapped image: they cannot change.
  if (inSea()) throw new Error(`${self}: parts of another build (rebuild with scripts/build-binaries.sh --sea)`);
  if (process.env.CALICO_TS_REEXEC === '1') throw new Error(`${self} keeps changing while it starts; retry`);
  // stdin was read already (the plugin's config): it goes to the new file as input.
  const input = takeHandedStdin();
  const r = lazy.childProcess().spawnSync(process.execPath, [...nodeFlags(), self, ...process.argv.slice(2)], {
    stdio: [input === undefined ? 'inherit' : 'pipe', 'inherit', 'inherit'],
    ...(input === undefined ? {} : { input }),
    env: { ...process.env, CALICO_TS_REEXEC: '1' },
  });
  process.exit(r.status ?? 1);
}

/**
 * The flags node was started with (the agent's --lite-mode, say), without the #! line's `-e <code>`: a
 * re-exec keeps them, and code caches made under other V8 flags (which V8 rejects) are kept apart.
 */
function nodeFlags(): string[] {
  const flags: string[] = [];
  for (let i = 0; i < process.execArgv.length; i++) {
    const a = process.execArgv[i] ?? '';
    if (a === '-e' || a === '--eval' || a === '-p' || a === '--print') i++;
    else if (!a.startsWith('--eval=') && !a.startsWith('--print=')) flags.push(a);
  }
  return flags;
}

interface Part {
  encoding: string;
  /** The part's text, read only when the part is used. */
  text: () => string;
}

/**
 * The parts of this binary by name. Each starts a line: \n/*CALICO-TS-PART:<build id>:<name>:<encoding>:<text>*\/
 * The file is ASCII (scripts/pack-payload.mjs), so bytes are characters and only the parts a call uses are
 * turned into strings. A single executable application holds the same text as its asset "parts".
 */
function readParts(self: string): Map<string, Part> {
  const file = inSea() ? seaParts() : fs.readFileSync(self);
  const parts = new Map<string, Part>();
  const needle = `\n${PART_MARK}`;
  const field = (from: number) => file.indexOf(':', from);
  for (let at = file.indexOf(needle); at >= 0; at = file.indexOf(needle, at + 1)) {
    const p0 = at + needle.length;
    const p1 = field(p0);
    const p2 = field(p1 + 1);
    const p3 = field(p2 + 1);
    const end = file.indexOf('*/', p3 + 1);
    if (p1 < 0 || p2 < 0 || p3 < 0 || end < 0) break;
    if (file.toString('latin1', p0, p1) !== BUILD_ID) reexec(self);
    parts.set(file.toString('latin1', p1 + 1, p2), { encoding: file.toString('latin1', p2 + 1, p3), text: () => file.toString('latin1', p3 + 1, end) });
    at = end;
  }
  return parts;
}

/** getRawAsset, not getAsset: no copy of the ~0.5 MB, which is only ever read. */
function seaParts(): Buffer {
  const raw = lazy.sea().getRawAsset('parts');
  return typeof raw === 'string' ? Buffer.from(raw, 'latin1') : Buffer.from(raw);
}

function decode(part: Part): string {
  if (part.encoding === 'br64') return lazy.zlib().brotliDecompressSync(Buffer.from(part.text(), 'base64')).toString('utf8');
  // raw-<hex>: each "*/" was stored with that control character between "*" and "/".
  const esc = String.fromCharCode(parseInt(part.encoding.slice('raw-'.length), 16));
  return part.text().replaceAll(`*${esc}/`, '*/');
}

function cacheFile(self: string, st: fs.Stats, part: string): string | undefined {
  if (process.env.CALICO_TS_CODE_CACHE === '0') return undefined;
  const dir = process.env.CALICO_TS_CACHE_DIR || '/var/cache/calico-ts';
  const flags = nodeFlags().join(' ');
  const id = `${path.basename(self)}-${st.ino}-${st.size}-${Math.trunc(st.mtimeMs)}-${process.version}-${process.arch}${flags ? `-${fnv1(flags).toString(16)}` : ''}`;
  return path.join(dir, `${id}${part === 'main' ? '' : `-${part}`}.v8cache`);
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
      pruneCache(path.dirname(file));
    } catch {
      // read-only or full disk: start without a cache next time too
    }
  });
}

const CACHE_MAX_AGE_MS = 30 * 24 * 3600 * 1000;

/**
 * Each build (and each set of node flags) has a cache file of its own, so upgrades leave old ones behind.
 * Only when a new one was written (after an upgrade, then) are the files of the last 30 days kept: a file
 * still in use that goes costs one compile, and comes back.
 */
function pruneCache(dir: string): void {
  const now = Date.now();
  for (const name of fs.readdirSync(dir)) {
    if (!name.endsWith('.v8cache') && !name.endsWith('.tmp')) continue;
    try {
      const file = path.join(dir, name);
      if (now - fs.statSync(file).mtimeMs > (name.endsWith('.tmp') ? 3600_000 : CACHE_MAX_AGE_MS)) fs.rmSync(file, { force: true });
    } catch {
      // gone meanwhile, or not ours to remove
    }
  }
}

/** Compiles one part as a CommonJS module body, from the code cache when there is a good one. */
function compile(self: string, st: fs.Stats, name: string, code: string): ModuleFn {
  const file = cacheFile(self, st, name);
  const cachedData = readCache(file);
  const wrapped = `(function (exports, require, module, __filename, __dirname) {${code}\n})`;
  const script = new (lazy.vm().Script)(wrapped, { filename: name === 'main' ? self : `${self}#${name}`, ...(cachedData ? { cachedData } : {}) });
  if (file && (!cachedData || script.cachedDataRejected)) writeCacheOnExit(file, script);
  return script.runInThisContext() as ModuleFn;
}

function run(self: string): void {
  const parts = readParts(self);
  const main = parts.get('main');
  if (!main) throw new Error(`${self}: plugin code missing (rebuild with scripts/build-binaries.sh)`);
  const st = fs.statSync(self);
  const nodeRequire = lazy.module().createRequire(self);
  const loaded = new Map<string, unknown>();
  // The bundle loads its chunks with require("./<name>.index.js"); they are parts of this file.
  const partRequire = ((id: string) => {
    const m = /^\.\/(.+)\.index\.js$/.exec(id);
    const part = m?.[1] !== undefined ? parts.get(m[1]) : undefined;
    if (!m?.[1] || !part) return nodeRequire(id);
    if (!loaded.has(m[1])) {
      const mod = { exports: {} as unknown };
      compile(self, st, m[1], decode(part))(mod.exports as object, partRequire, mod, self, path.dirname(self));
      loaded.set(m[1], mod.exports);
    }
    return loaded.get(m[1]);
  }) as NodeJS.Require;
  Object.assign(partRequire, { resolve: nodeRequire.resolve, cache: nodeRequire.cache, main: nodeRequire.main });
  const mod = { exports: {} as unknown };
  compile(self, st, 'main', decode(main))(mod.exports as object, partRequire, mod, self, path.dirname(self));
}

/** Nothing may escape as a stack trace: a CNI caller gets an error object, an operator a message. */
function fail(e: unknown): never {
  const msg = e instanceof Error ? e.message : String(e);
  if (process.env.CNI_COMMAND) process.stdout.write(`${JSON.stringify({ cniVersion: CURRENT_VERSION, code: 999, msg: `failed to start: ${msg}` })}\n`);
  else process.stderr.write(`failed to start: ${msg}\n`);
  process.exit(1);
}

function exitWith(status: number, stdout: string, stderr: string): never {
  writeAllSync(1, stdout);
  try {
    writeAllSync(2, stderr);
  } catch {
    // the log is best effort; the answer is on stdout
  }
  process.exit(status);
}

/**
 * Hands the call to the node agent when the config names one (agent_socket) and it answers, and then
 * exits. Returns when this process must run the call itself, with stdin (already read) handed to the plugin.
 */
async function viaAgent(): Promise<void> {
  let stdin: string;
  try {
    stdin = readStdinSync();
  } catch {
    return; // the plugin reads again and reports the failure as a CNI error
  }
  handStdin(stdin);
  const socket = agentSocketOf(stdin);
  if (!socket) return;
  const request = { protocol: AGENT_PROTOCOL, build: BUILD_ID, stdin, env: process.env, namespaces: namespacesOf(fs) };
  const outcome = await callAgent(socket, request, deadlineMs(process.env));
  const name = path.basename(process.argv[1] ?? 'calico');
  const logLine = (level: string, msg: string) => `${new Date().toISOString()} [${level}][${process.pid}] ${name}: ${msg}\n`;
  if (outcome.kind === 'unavailable') {
    writeAllSync(2, logLine('WARN', `node agent at ${socket} not used (${outcome.why}); running the call in this process`));
    return;
  }
  if (outcome.kind === 'lost') {
    // Not run again here: the agent may have done part of it. The runtime's DEL, then a new ADD, repair that.
    const msg = `the node agent at ${socket} did not answer (${outcome.why}); the call may be half done: try again`;
    exitWith(1, `${JSON.stringify({ cniVersion: sniffVersion(stdin), code: 11, msg }, null, 4)}\n`, logLine('ERROR', msg));
  }
  exitWith(outcome.status, outcome.stdout, outcome.stderr);
}

async function main(): Promise<void> {
  // A single executable application's argv[1] is its argv[0], which need not be a path (a PATH lookup).
  // From the #! line (see scripts/build-binaries.sh) this code is evaluated, not required: argv[1] is the file.
  const self = __filename === process.execPath ? process.execPath : fs.realpathSync(process.argv[1] ?? __filename);
  const command = process.env.CNI_COMMAND;
  if (command === 'VERSION') return answerVersion();
  handBuildId(BUILD_ID);
  if (command) await viaAgent();
  run(self);
}

main().catch(fail);
