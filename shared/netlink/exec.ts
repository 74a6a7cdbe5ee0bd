import { spawn } from 'node:child_process';
import { CniError, ErrorCode } from '../cni/errors';
import { currentIpSession, sessionSafe } from './ip-session';

/** How to run a command inside a network namespace given by path. */
export type NetnsRef = { kind: 'named'; name: string; path: string } | { kind: 'path'; path: string };

const NAMED_DIRS = ['/var/run/netns/', '/run/netns/'];

/** `ip -n NAME` is cheapest, but only works for namespaces under /run/netns; others go through nsenter. */
export function netnsRef(path: string): NetnsRef {
  for (const dir of NAMED_DIRS) {
    if (path.startsWith(dir) && !path.slice(dir.length).includes('/')) return { kind: 'named', name: path.slice(dir.length), path };
  }
  return { kind: 'path', path };
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** A hung program must not hang the runtime's call: it is killed after this long. */
const RUN_TIMEOUT_MS = 30_000;

/**
 * Runs a program with an argument array (never a shell), returning its output whatever its exit code.
 * node:child_process directly rather than execa: on the ADD path execa's import and first exec cost ~25 ms
 * per pod against ~6 ms here (bench/README.md), and nothing of what it adds is used.
 */
export function run(file: string, args: readonly string[], input?: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: { ...process.env, LC_ALL: 'C' }, stdio: ['pipe', 'pipe', 'pipe'], timeout: RUN_TIMEOUT_MS, killSignal: 'SIGKILL' });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e) => reject(new CniError(ErrorCode.Netlink, `failed to run ${file}: ${e.message}`)));
    child.on('close', (code, signal) => {
      const stderr = Buffer.concat(err).toString('utf8');
      resolve({ stdout: Buffer.concat(out).toString('utf8'), stderr: signal ? `${stderr}${file} killed by ${signal}` : stderr, exitCode: code ?? 1 });
    });
    // A program that exits without reading all of its input is reported by its exit status, not as EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(input ?? '');
  });
}

/** Runs `ip` in the host namespace, or inside `ns`; args as an array, or several commands as a batch. */
export async function ip(args: readonly string[], opts: { ns?: NetnsRef; batch?: readonly string[] } = {}): Promise<RunResult> {
  const tail = opts.batch ? [...args, '-batch', '-'] : [...args];
  const input = opts.batch ? opts.batch.join('\n') + '\n' : undefined;
  if (!opts.ns) return run('ip', tail, input);
  if (opts.ns.kind === 'named') return run('ip', ['-n', opts.ns.name, ...tail], input);
  return run('nsenter', [`--net=${opts.ns.path}`, '--', 'ip', ...tail], input);
}

/**
 * Changes to the host namespace, whose output nobody reads, as one batch: through the process's long-lived
 * `ip` when it keeps one (the node agent: no fork per call), else one exec. `links` are the link names the
 * lines refer to (see IpSession). Resolves as `ip -batch -` would.
 */
export function ipHostChanges(lines: readonly string[], links: readonly string[]): Promise<RunResult> {
  const session = currentIpSession();
  if (session && sessionSafe(lines)) return session.run(lines, links);
  return run('ip', ['-batch', '-'], lines.join('\n') + '\n');
}

/** Like ip(), but a non-zero exit becomes a netlink error carrying ip's own message. */
export async function ipOk(what: string, args: readonly string[], opts: { ns?: NetnsRef; batch?: readonly string[] } = {}): Promise<string> {
  const r = await ip(args, opts);
  if (r.exitCode !== 0) {
    throw new CniError(ErrorCode.Netlink, `${what}: ${r.stderr.trim().replace(/\s+/g, ' ') || `ip exited with status ${r.exitCode}`}`);
  }
  return r.stdout;
}

/** The line of an `ip -batch` input that failed ("Command failed -:N" on stderr), if ip said. */
export function failedBatchLine(stderr: string): number | undefined {
  const m = /Command failed -:(\d+)/.exec(stderr);
  return m ? Number(m[1]) : undefined;
}
