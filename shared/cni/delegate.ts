import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CniError, ErrorCode } from './errors';
import { parseAnyResult, type Result } from './result';
import type { Verb } from './env';

/** Finds a plugin by exact name in CNI_PATH, as libcni's FindInPath does. */
export function findInPath(plugin: string, dirs: readonly string[]): string {
  if (plugin === '' || plugin.includes('/') || plugin === '.' || plugin === '..') {
    throw new CniError(ErrorCode.InvalidConfig, `invalid plugin name ${JSON.stringify(plugin)}`);
  }
  for (const dir of dirs) {
    const full = path.join(dir, plugin);
    try {
      fs.accessSync(full, fs.constants.X_OK);
      if (fs.statSync(full).isFile()) return full;
    } catch {
      // not here; keep looking
    }
  }
  throw new CniError(ErrorCode.InvalidConfig, `failed to find plugin ${JSON.stringify(plugin)} in path [${dirs.join(' ')}]`);
}

interface ExecOutcome {
  status: number;
  stdout: string;
}

function execOnce(file: string, env: NodeJS.ProcessEnv, stdin: string, timeoutMs: number): Promise<ExecOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, [], { env, stdio: ['pipe', 'pipe', 'inherit'], timeout: timeoutMs, killSignal: 'SIGKILL' });
    const chunks: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (signal) return reject(new CniError(ErrorCode.TryAgainLater, `plugin ${path.basename(file)} was killed by ${signal}`));
      resolve({ status: code ?? 1, stdout: Buffer.concat(chunks).toString('utf8') });
    });
    child.stdin.on('error', () => {
      // The child may exit without reading stdin (e.g. VERSION); that is not our failure.
    });
    child.stdin.end(stdin);
  });
}

/** libcni retries exec on "text file busy": a binary still being written by an installer. */
async function execWithRetry(file: string, env: NodeJS.ProcessEnv, stdin: string, timeoutMs: number): Promise<ExecOutcome> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await execOnce(file, env, stdin, timeoutMs);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ETXTBSY' && attempt < 5) {
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      if (e instanceof CniError) throw e;
      throw new CniError(ErrorCode.IOFailure, `failed to exec plugin ${JSON.stringify(file)}: ${(e as Error).message}`);
    }
  }
}

function errorFromOutput(plugin: string, out: ExecOutcome): CniError {
  try {
    const obj: unknown = JSON.parse(out.stdout);
    if (typeof obj === 'object' && obj !== null && 'code' in obj && typeof obj.code === 'number' && 'msg' in obj) {
      const details = 'details' in obj && typeof obj.details === 'string' ? obj.details : undefined;
      return new CniError(obj.code, `${plugin}: ${String(obj.msg)}`, details);
    }
  } catch {
    // not a CNI error object
  }
  return new CniError(ErrorCode.Internal, `${plugin} exited with status ${out.status}: ${out.stdout.trim().slice(0, 500)}`);
}

export interface DelegateOptions {
  plugin: string;
  verb: Verb;
  stdin: string;
  cniPath: readonly string[];
  /** The caller's environment; only CNI_COMMAND is overridden, as the spec requires. */
  env?: Readonly<Record<string, string | undefined>>;
  timeoutMs?: number;
  fallbackVersion: string;
}

/** Runs a delegated plugin (typically IPAM) and returns its parsed result for ADD, nothing otherwise. */
export async function delegate(opts: DelegateOptions): Promise<Result | undefined> {
  const file = findInPath(opts.plugin, opts.cniPath);
  const env = { ...(opts.env ?? process.env), CNI_COMMAND: opts.verb };
  const out = await execWithRetry(file, env, opts.stdin, opts.timeoutMs ?? 60_000);
  if (out.status !== 0) throw errorFromOutput(opts.plugin, out);
  if (opts.verb !== 'ADD') return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(out.stdout);
  } catch (e) {
    throw new CniError(ErrorCode.DecodeFailure, `failed to decode result of ${opts.plugin}: ${(e as Error).message}`);
  }
  return parseAnyResult(raw, opts.fallbackVersion);
}
