import { CniError, ErrorCode } from '../cni/errors';

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

/** Runs a program with an argument array (never a shell), returning its output whatever its exit code. */
export async function run(file: string, args: readonly string[], input?: string): Promise<RunResult> {
  const { execa } = await import(/* webpackMode: "eager" */ 'execa');
  const r = await execa(file, args, { input: input ?? '', reject: false, stripFinalNewline: false, timeout: 30_000, env: { LC_ALL: 'C' } });
  if (r.failed && r.exitCode === undefined) {
    throw new CniError(ErrorCode.Netlink, `failed to run ${file}: ${r.shortMessage ?? r.message}`);
  }
  return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? 1 };
}

/** Runs `ip` in the host namespace, or inside `ns`; args as an array, or several commands as a batch. */
export async function ip(args: readonly string[], opts: { ns?: NetnsRef; batch?: readonly string[] } = {}): Promise<RunResult> {
  const tail = opts.batch ? [...args, '-batch', '-'] : [...args];
  const input = opts.batch ? opts.batch.join('\n') + '\n' : undefined;
  if (!opts.ns) return run('ip', tail, input);
  if (opts.ns.kind === 'named') return run('ip', ['-n', opts.ns.name, ...tail], input);
  return run('nsenter', [`--net=${opts.ns.path}`, '--', 'ip', ...tail], input);
}

/** Like ip(), but a non-zero exit becomes a netlink error carrying ip's own message. */
export async function ipOk(what: string, args: readonly string[], opts: { ns?: NetnsRef; batch?: readonly string[] } = {}): Promise<string> {
  const r = await ip(args, opts);
  if (r.exitCode !== 0) {
    throw new CniError(ErrorCode.Netlink, `${what}: ${r.stderr.trim().replace(/\s+/g, ' ') || `ip exited with status ${r.exitCode}`}`);
  }
  return r.stdout;
}
