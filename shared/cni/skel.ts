/**
 * The skeleton every plugin main wires into (like libcni's skel.PluginMainFuncs). It stays light on purpose:
 * VERSION, which podman calls before every ADD and DEL, is answered before anything heavy is loaded.
 */
import { CniError, ErrorCode, errorObject, loggedErrors, toCniError } from './errors';
import { CURRENT_VERSION, SUPPORTED_VERSIONS, sniffVersion } from './version';
import { readStdinSync } from './stdio';
import { deadlineMs } from './deadline';
import { takeHandedStdin } from '../launch/handover';
import type { CniEnv } from './env';
import type { NetConf } from './config';
import type { Logger } from './log';
import type { Result } from './result';
import type { CallIo } from './invoke';
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

function readStdin(): string {
  const handed = takeHandedStdin();
  if (handed !== undefined) return handed;
  try {
    return readStdinSync();
  } catch (e) {
    throw new CniError(ErrorCode.IOFailure, `failed to read network configuration from stdin: ${(e as Error).message}`);
  }
}

function writeStdout(text: string): Promise<void> {
  return new Promise((resolve) => {
    process.stdout.write(text, () => resolve());
  });
}

export { DEFAULT_DEADLINE_MS } from './deadline';

function armDeadline(spec: PluginSpec, version: () => string): void {
  const ms = deadlineMs(process.env);
  const timer = setTimeout(() => {
    const err = new CniError(ErrorCode.TryAgainLater, `${spec.name} did not finish within ${ms} ms; giving up`);
    process.stderr.write(`${new Date().toISOString()} [ERROR][${process.pid}] ${spec.name}: ${err.message}\n`);
    process.stdout.write(JSON.stringify(errorObject(err, version()), null, 4) + '\n', () => process.exit(1));
  }, ms);
  timer.unref();
}

/** One call's outcome: what goes to stdout, and the exit status. */
export interface Reply {
  status: number;
  stdout: string;
}

/**
 * Runs one call (everything but VERSION) and turns any failure into the spec's error object. The process
 * path and the node agent both answer through here. The rest is loaded lazily so that VERSION parses and
 * evaluates as little code as possible.
 */
export async function respond(spec: PluginSpec, stdin: string, io: CallIo): Promise<Reply> {
  try {
    const { handleInvocation } = await import(/* webpackMode: "eager" */ './invoke');
    const out = await handleInvocation(spec, stdin, io);
    return { status: 0, stdout: out ?? '' };
  } catch (e) {
    const err = toCniError(e);
    if (!loggedErrors.has(err) && !loggedErrors.has(e as Error)) {
      // Details and causes go to the log on stderr; stdout carries only the error object.
      (io.stderr ?? ((l: string) => process.stderr.write(l)))(
        `${new Date().toISOString()} [ERROR][${process.pid}] ${spec.name}: ${err.message}${err.details ? ` (${err.details})` : ''}\n`,
      );
    }
    return { status: 1, stdout: JSON.stringify(errorObject(err, sniffVersion(stdin)), null, 4) + '\n' };
  }
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
    const reply = await respond(spec, stdin, { vars: process.env });
    if (reply.stdout !== '') await writeStdout(reply.stdout);
    process.exit(reply.status);
  } catch (e) {
    const err = toCniError(e);
    process.stderr.write(`${new Date().toISOString()} [ERROR][${process.pid}] ${spec.name}: ${err.message}\n`);
    await writeStdout(JSON.stringify(errorObject(err, version), null, 4) + '\n');
    process.exit(1);
  }
}
