import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { CniError, ErrorCode } from '../cni/errors';
import type { RunResult } from './exec';

/*
 * A long-lived `ip -force -batch -` in the host namespace, for a process that makes many host-side changes
 * (the node agent). Each exec of `ip` costs a fork and an exec: ~8 ms of wall time and ~4 ms of the
 * agent's only thread on this kind of VM, against ~0.3 ms for a few lines written to a running `ip`.
 *
 * iproute2 reads its batch one line at a time and reports a failed line on stderr as
 * "Command failed -:N" (N counts every line read). A request is its lines followed by a line that always
 * fails (an unknown object): the report of that line, on the same stream as the request's own errors and
 * after them, marks the request done. `-force` keeps ip reading after a failure, so one request's failure
 * never swallows the next one's lines.
 *
 * ip caches the index of a link it resolved by name (a `route add ... dev NAME` does) for as long as it
 * runs, so after that link is deleted and made again under the same name, ip would aim at the old index
 * ("No such device"). Each request therefore names the links it refers to; when one of them has another
 * index than when a request last named it, the next request goes to a new `ip`.
 */

/** Always fails in ip's parser, never touches the system: "Object "calico-ts-sync" is unknown". */
const MARKER = 'calico-ts-sync';
const FAILED = /^Command failed -:(\d+)$/;
const TIMEOUT_MS = 30_000;
/** A new `ip` after this many requests: its link cache, like ours, only grows. */
const REQUESTS_PER_PROCESS = 1000;

interface Request {
  first: number;
  marker: number;
  stderr: string[];
  failed: boolean;
  resolve: (r: RunResult) => void;
  timer: NodeJS.Timeout;
}

/** One `ip` process and the requests it has been sent. */
interface Proc {
  child: ChildProcess;
  lineNo: number;
  requests: number;
  pending: Request[];
  partial: string;
  /** Link name -> its index when a request sent here last named it. */
  links: Map<string, number>;
  done: boolean;
}

/**
 * A line ip would read as more (or fewer) than one line: a newline, a continuation backslash. Such input is
 * never sent to a session, whose line count must match ip's.
 */
export function sessionSafe(lines: readonly string[]): boolean {
  return lines.every((l) => !/[\r\n]/.test(l) && !l.endsWith('\\'));
}

function ifindex(name: string): number | undefined {
  try {
    return Number(fs.readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8'));
  } catch {
    return undefined;
  }
}

export class IpSession {
  private proc: Proc | undefined;

  constructor(private readonly timeoutMs = TIMEOUT_MS) {}

  /**
   * Runs the lines as one request; resolves as an exec of `ip -batch -` would (exit 0 when every line
   * succeeded). `links` are the link names the lines refer to.
   */
  run(lines: readonly string[], links: readonly string[]): Promise<RunResult> {
    if (!sessionSafe(lines)) return Promise.reject(new CniError(ErrorCode.Internal, 'ip session: a line holds a newline or ends with a backslash'));
    const proc = this.procFor(links);
    return new Promise((resolve) => {
      const first = proc.lineNo + 1;
      proc.lineNo += lines.length + 1;
      proc.requests++;
      const timer = setTimeout(() => this.kill(proc, 'timed out'), this.timeoutMs);
      proc.pending.push({ first, marker: proc.lineNo, stderr: [], failed: false, resolve, timer });
      proc.child.stdin?.write(`${lines.join('\n')}${lines.length ? '\n' : ''}${MARKER}\n`);
    });
  }

  /** The running `ip`'s PID, if one runs. */
  get pid(): number | undefined {
    return this.proc?.child.pid;
  }

  /**
   * Ends the session's `ip` once it has done what it was sent (killed if that takes over a second), and
   * resolves when it is gone, reaped by this process. A later run() starts a new one.
   */
  async close(): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    this.proc = undefined;
    if (proc.done) return;
    const gone = new Promise<void>((resolve) => proc.child.once('close', () => resolve()));
    proc.child.stdin?.end();
    const timer = setTimeout(() => this.kill(proc, 'closed'), 1000);
    await gone;
    clearTimeout(timer);
  }

  /** The current `ip`, unless it may hold a stale index for one of these links or has served its share. */
  private procFor(links: readonly string[]): Proc {
    const now = new Map<string, number>();
    for (const name of links) {
      const index = ifindex(name);
      if (index !== undefined) now.set(name, index);
    }
    let proc = this.proc;
    const stale = proc && [...now].some(([name, index]) => proc?.links.has(name) && proc.links.get(name) !== index);
    if (proc && (stale || proc.requests >= REQUESTS_PER_PROCESS)) {
      // It finishes what it was sent, then reads the end of its input and exits.
      proc.child.stdin?.end();
      proc = undefined;
    }
    proc ??= this.start();
    for (const [name, index] of now) proc.links.set(name, index);
    return proc;
  }

  private start(): Proc {
    const child = spawn('ip', ['-force', '-batch', '-'], { env: { ...process.env, LC_ALL: 'C' }, stdio: ['pipe', 'pipe', 'pipe'] });
    const proc: Proc = { child, lineNo: 0, requests: 0, pending: [], partial: '', links: new Map(), done: false };
    this.proc = proc;
    child.stdout?.resume();
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => this.onStderr(proc, chunk));
    child.stdin?.on('error', () => undefined);
    child.on('error', (e) => this.end(proc, `failed to run ip: ${e.message}`));
    child.on('close', (code, signal) => this.end(proc, `ip -batch exited (${signal ?? code})`));
    return proc;
  }

  private onStderr(proc: Proc, chunk: string): void {
    const lines = (proc.partial + chunk).split('\n');
    proc.partial = lines.pop() ?? '';
    for (const line of lines) this.onLine(proc, line);
  }

  private onLine(proc: Proc, line: string): void {
    const req = proc.pending[0];
    if (!req) return;
    const m = FAILED.exec(line);
    const n = m ? Number(m[1]) : undefined;
    if (n === req.marker) {
      proc.pending.shift();
      clearTimeout(req.timer);
      req.resolve({ stdout: '', stderr: req.stderr.join(''), exitCode: req.failed ? 1 : 0 });
      return;
    }
    if (n !== undefined) {
      // Renumbered from the request's first line, as an exec of its own would have numbered it.
      req.failed = true;
      req.stderr.push(`Command failed -:${n - req.first + 1}\n`);
      return;
    }
    if (!line.startsWith(`Object "${MARKER}" is unknown`)) req.stderr.push(`${line}\n`);
  }

  private kill(proc: Proc, why: string): void {
    proc.child.kill('SIGKILL');
    this.end(proc, `ip -batch ${why}`);
  }

  /** Whatever ended an `ip`, each call in flight there fails as a killed `ip` would have; the next call starts afresh. */
  private end(proc: Proc, why: string): void {
    if (proc.done) return;
    proc.done = true;
    if (this.proc === proc) this.proc = undefined;
    for (const req of proc.pending.splice(0)) {
      clearTimeout(req.timer);
      req.resolve({ stdout: '', stderr: `${req.stderr.join('')}${why}`, exitCode: 1 });
    }
  }
}

let shared: IpSession | undefined;

/** From now on, host-side `ip` changes of this process go through one long-lived `ip` (the node agent). */
export function keepIpSession(): IpSession {
  shared ??= new IpSession();
  return shared;
}

export function currentIpSession(): IpSession | undefined {
  return shared;
}

export async function closeIpSession(): Promise<void> {
  const s = shared;
  shared = undefined;
  await s?.close();
}
