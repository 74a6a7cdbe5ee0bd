/**
 * The skeleton every plugin main wires into (like libcni's skel.PluginMainFuncs). It stays light on purpose:
 * VERSION, which podman calls before every ADD and DEL, is answered before anything heavy is loaded.
 */
import fs from 'node:fs';
import tty from 'node:tty';
import { CniError, ErrorCode, errorObject, loggedErrors, toCniError } from './errors';
import { CURRENT_VERSION, SUPPORTED_VERSIONS } from './version';
import type { CniEnv } from './env';
import type { NetConf } from './config';
import type { Logger } from './log';
import type { Result } from './result';
import type { CniVersion } from './version';

export interface Context {
  env: CniEnv;
  conf: NetConf;
  /** The exact bytes received, passed on unchanged to delegated plugins. */
  stdin: string;
  version: CniVersion;
  log: Logger;
}

export interface PluginImpl {
  add(ctx: Context): Promise<Result>;
  del(ctx: Context): Promise<void>;
  check(ctx: Context): Promise<void>;
  status(ctx: Context): Promise<void>;
  gc(ctx: Context): Promise<void>;
}

export interface PluginSpec {
  /** Component name in logs: "calico" or "calico-ipam". */
  name: string;
  about: string;
  load(): Promise<PluginImpl>;
  /** Operator commands, chosen when CNI_COMMAND is unset and argv has words. Returns the exit status. */
  cli?(argv: string[]): Promise<number>;
}

export function versionInfo(): string {
  return JSON.stringify({ cniVersion: CURRENT_VERSION, supportedVersions: SUPPORTED_VERSIONS });
}

/**
 * Reads stdin to EOF, as Go's skel does. tty.isatty (not process.stdin, whose creation switches fd 0 to
 * non-blocking) decides "no input"; a non-blocking pipe the runtime has not written yet (EAGAIN) is waited
 * for, not taken as an empty config.
 */
function readStdin(): string {
  if (tty.isatty(0)) return '';
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(64 * 1024);
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(0, buf, 0, buf.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        Atomics.wait(pause, 0, 0, 2);
        continue;
      }
      if (code === 'EOF') break;
      throw new CniError(ErrorCode.IOFailure, `failed to read network configuration from stdin: ${(e as Error).message}`);
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Best effort: the version to stamp on an error printed before the config was validated. */
function sniffVersion(stdin: string): string {
  try {
    const v: unknown = (JSON.parse(stdin) as { cniVersion?: unknown }).cniVersion;
    return typeof v === 'string' && /^\d+\.\d+\.\d+$/.test(v) ? v : CURRENT_VERSION;
  } catch {
    return CURRENT_VERSION;
  }
}

function writeStdout(text: string): Promise<void> {
  return new Promise((resolve) => {
    process.stdout.write(text, () => resolve());
  });
}

/**
 * A backstop so no call can hang a runtime: past the deadline the call fails with "try again later" (the
 * runtime then DELs, and DEL and GC remove whatever was half made). Datastore requests have their own,
 * much shorter deadlines (CALICO_ETCD_TIMEOUT_MS, 5 s per request and endpoint).
 */
export const DEFAULT_DEADLINE_MS = 60_000;

function armDeadline(spec: PluginSpec, version: () => string): void {
  const ms = Number(process.env.CALICO_TS_DEADLINE_MS) > 0 ? Number(process.env.CALICO_TS_DEADLINE_MS) : DEFAULT_DEADLINE_MS;
  const timer = setTimeout(() => {
    const err = new CniError(ErrorCode.TryAgainLater, `${spec.name} did not finish within ${ms} ms; giving up`);
    process.stderr.write(`${new Date().toISOString()} [ERROR][${process.pid}] ${spec.name}: ${err.message}\n`);
    process.stdout.write(JSON.stringify(errorObject(err, version()), null, 4) + '\n', () => process.exit(1));
  }, ms);
  timer.unref();
}

/** Everything after VERSION; loaded lazily so that VERSION parses and evaluates as little code as possible. */
async function invoke(spec: PluginSpec, stdin: string): Promise<string | undefined> {
  const { handleInvocation } = await import(/* webpackMode: "eager" */ './invoke');
  return handleInvocation(spec, stdin);
}

export async function runPlugin(spec: PluginSpec): Promise<never> {
  const command = process.env.CNI_COMMAND;
  const argv = process.argv.slice(2);
  if ((command === undefined || command === '') && spec.cli && argv.length > 0) {
    let status = 1;
    try {
      status = await spec.cli(argv);
    } catch (e) {
      process.stderr.write(`${spec.name}: ${toCniError(e).message}\n`);
    }
    process.exit(status);
  }
  let stdin = '';
  let version: string = CURRENT_VERSION;
  try {
    if (command === 'VERSION') {
      readStdin();
      await writeStdout(versionInfo() + '\n');
      process.exit(0);
    }
    if (command === undefined || command === '') {
      process.stderr.write(`${spec.about}\nCNI protocol versions supported: ${SUPPORTED_VERSIONS.join(', ')}\n`);
    }
    armDeadline(spec, () => version);
    stdin = readStdin();
    version = sniffVersion(stdin);
    const out = await invoke(spec, stdin);
    if (out !== undefined) await writeStdout(out);
    process.exit(0);
  } catch (e) {
    const err = toCniError(e);
    if (!loggedErrors.has(err) && !loggedErrors.has(e as Error)) {
      // Details and causes go to the log on stderr; stdout carries only the error object.
      process.stderr.write(`${new Date().toISOString()} [ERROR][${process.pid}] ${spec.name}: ${err.message}${err.details ? ` (${err.details})` : ''}\n`);
    }
    await writeStdout(JSON.stringify(errorObject(err, version), null, 4) + '\n');
    process.exit(1);
  }
}
