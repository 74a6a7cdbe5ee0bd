import { spawn, type ChildProcess } from 'node:child_process';
import { CniError, ErrorCode } from '../cni/errors';
import type { RunResult } from './exec';
import { linkIndex } from './link';

/*
 * A long-lived `ip -force -batch -` in the host namespace, for a process that makes many host-side changes
 * (the node agent). Each exec of `ip` costs a fork and an exec: ~8 ms of wall time and ~4 ms of the
 * agent's only thread on this kind of VM, against ~0.3 ms for a few lines written to a running `ip`.
 *
 * iproute2 reads its batch one line at a time and reports a failed line on stderr as
 * "Command failed -:N" (N counts every line read). A request is its lines followed by a line that always
 * fails (an unknown object): the report of that line, on the same stream as the request's own errors and
 * after them, marks the request done. `-force` keeps ip reading after a failed line; but some bad input
 * (an invalid prefix, a garbage argument) makes ip exit. Since ip runs lines in order, the request at the
 * head of the queue is then the one that failed, and the requests behind it never ran: they go to a new
 * `ip`, so one bad request fails alone, as with an exec of its own.
 *
 * ip caches the index of a link it resolved by name (a `route add ... dev NAME` does) for as long as it
 * runs, so after that link is deleted and made again under the same name, ip would aim at the old index
 * ("No such device"). Each request therefore names the links it refers to; when one of them has another
 * index than when this `ip` last saw it, that request waits for the requests before it, and goes to a
 * new `ip`. Requests are never run out of order.
 */

/** Always fails in ip's parser, never touches the system: "Object "calico-ts-sync" is unknown". */
const MARKER = 'calico-ts-sync';
const FAILED = /^Command failed -:(\d+)$/;

export interface IpSessionOptions {
  /** A request that has been running (at the head of the queue) this long has its `ip` killed. */
  timeoutMs?: number;
  /** A new `ip` after this many requests: its link cache only grows. */
  requestsPerProcess?: number;
}

interface Request {
  lines: readonly string[];
  links: readonly string[];
  resolve: (r: RunResult) => void;
  /** Set when sent: its first line's and its marker's numbers in that `ip`'s count. */
  first: number;
  marker: number;
  stderr: string[];
  failed: boolean;
}

/** One `ip` process. */
interface Proc {
  child: ChildProcess;
  lineNo: number;
  requests: number;
  partial: string;
  /** Link name -> its index when a request sent here named it. */
  links: Map<string, number>;
  killedFor: string | undefined;
  gone: Promise<void>;
}

/**
 * A line ip would read as more (or fewer) than one line: a newline, a continuation backslash. Such input is
 * never sent to a session, whose line count must match ip's.
 */
export function sessionSafe(lines: readonly string[]): boolean {
  return lines.every((l) => !/[\r\n]/.test(l) && !l.endsWith('\\'));
}

export class IpSession {
  private readonly timeoutMs: number;
  private readonly requestsPerProcess: number;
  private proc: Proc | undefined;
  /** Sent to `proc`, in order; the head is the one ip is running. */
  private inflight: Request[] = [];
  /** Not sent yet, in order. */
  private waiting: Request[] = [];
  /** `proc` takes no more requests: the next go to a new `ip` once those in flight are done. */
  private draining = false;
  private headTimer: NodeJS.Timeout | undefined;
  private readonly retired = new Set<Proc>();
  private closed = false;

  constructor(opts: IpSessionOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.requestsPerProcess = opts.requestsPerProcess ?? 1000;
  }

  /**
   * Runs the lines as one request; resolves as an exec of `ip -batch -` would (exit 0 when every line
   * succeeded). `links` are the link names the lines refer to.
   */
  run(lines: readonly string[], links: readonly string[]): Promise<RunResult> {
    if (!sessionSafe(lines)) return Promise.reject(new CniError(ErrorCode.Internal, 'ip session: a line holds a newline or ends with a backslash'));
    if (this.closed) return Promise.reject(new CniError(ErrorCode.Internal, 'ip session: closed'));
    return new Promise((resolve) => {
      this.waiting.push({ lines, links, resolve, first: 0, marker: 0, stderr: [], failed: false });
      this.pump();
    });
  }

  /** Requests are in flight or waiting: a new one would wait for them. */
  get busy(): boolean {
    return this.inflight.length > 0 || this.waiting.length > 0;
  }

  /** The running `ip`'s PID, if one runs. */
  get pid(): number | undefined {
    return this.proc?.child.pid;
  }

  /**
   * Lets the `ip`s finish what they were sent (killed if that takes over a second) and resolves when they
   * are gone, reaped by this process. Calls made after it are refused.
   */
  async close(): Promise<void> {
    this.closed = true;
    for (const req of this.waiting.splice(0)) req.resolve({ stdout: '', stderr: 'ip session closed', exitCode: 1 });
    // The current ip stays current until it exits, so that the requests it was sent are answered.
    this.proc?.child.stdin?.end();
    const procs = [...this.retired, ...(this.proc ? [this.proc] : [])];
    const timer = setTimeout(() => procs.forEach((p) => this.kill(p, 'closed')), 1000);
    await Promise.all(procs.map((p) => p.gone));
    clearTimeout(timer);
  }

  private pump(): void {
    for (;;) {
      const req = this.waiting[0];
      if (!req) return;
      if (this.proc && !this.draining && this.needsFreshIp(this.proc, req)) this.draining = true;
      if (this.draining) {
        if (this.inflight.length > 0 || !this.proc) return;
        this.retire(this.proc);
      }
      this.waiting.shift();
      this.send(this.proc ?? this.start(), req);
    }
  }

  private needsFreshIp(proc: Proc, req: Request): boolean {
    if (proc.requests >= this.requestsPerProcess) return true;
    return req.links.some((name) => {
      const seen = proc.links.get(name);
      const now = linkIndex(name);
      return seen !== undefined && now !== undefined && seen !== now;
    });
  }

  private send(proc: Proc, req: Request): void {
    // A link gone now keeps the index ip may have cached for it, so that its successor is seen as new.
    for (const name of req.links) {
      const index = linkIndex(name);
      if (index !== undefined) proc.links.set(name, index);
    }
    req.first = proc.lineNo + 1;
    proc.lineNo += req.lines.length + 1;
    req.marker = proc.lineNo;
    proc.requests++;
    this.inflight.push(req);
    if (this.inflight.length === 1) this.startHeadTimer(proc);
    proc.child.stdin?.write(`${req.lines.join('\n')}${req.lines.length ? '\n' : ''}${MARKER}\n`);
  }

  /**
   * A link the request made (absent when it was sent) may now be cached by ip: its index is noted. One that
   * changed while the request ran may be cached under either index: no index matches it any more, so the
   * next request naming it goes to a new ip.
   */
  private noteLinksAfter(proc: Proc, req: Request): void {
    for (const name of req.links) {
      const now = linkIndex(name);
      const seen = proc.links.get(name);
      if (now !== undefined && seen !== now) proc.links.set(name, seen === undefined ? now : -1);
    }
  }

  /** The time limit runs from when ip starts on a request, not from when it was queued. */
  private startHeadTimer(proc: Proc): void {
    clearTimeout(this.headTimer);
    this.headTimer = setTimeout(() => this.kill(proc, `timed out after ${this.timeoutMs} ms`), this.timeoutMs);
  }

  private start(): Proc {
    const child = spawn('ip', ['-force', '-batch', '-'], { env: { ...process.env, LC_ALL: 'C' }, stdio: ['pipe', 'pipe', 'pipe'] });
    let gone = (): void => undefined;
    const proc: Proc = { child, lineNo: 0, requests: 0, partial: '', links: new Map(), killedFor: undefined, gone: new Promise((r) => (gone = r)) };
    this.proc = proc;
    this.draining = false;
    child.stdout?.resume();
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => this.onStderr(proc, chunk));
    child.stdin?.on('error', () => undefined);
    // 'close' comes after all of its stderr was read, and after 'error' when ip could not be started.
    let spawnError: string | undefined;
    child.on('error', (e) => (spawnError = `failed to run ip: ${e.message}`));
    child.on('close', (code, signal) => {
      this.onClose(proc, spawnError ?? proc.killedFor ?? `ip -batch exited (${signal ?? code})`);
      gone();
    });
    return proc;
  }

  /** ip finishes what it was sent, reads the end of its input and exits. */
  private retire(proc: Proc): void {
    this.retired.add(proc);
    void proc.gone.then(() => this.retired.delete(proc));
    proc.child.stdin?.end();
    if (this.proc === proc) this.proc = undefined;
    this.draining = false;
  }

  private onStderr(proc: Proc, chunk: string): void {
    if (proc !== this.proc) return;
    const lines = (proc.partial + chunk).split('\n');
    proc.partial = lines.pop() ?? '';
    for (const line of lines) this.onLine(proc, line);
  }

  private onLine(proc: Proc, line: string): void {
    const req = this.inflight[0];
    if (!req) return;
    const m = FAILED.exec(line);
    const n = m ? Number(m[1]) : undefined;
    if (n === req.marker) {
      this.inflight.shift();
      this.noteLinksAfter(proc, req);
      clearTimeout(this.headTimer);
      if (this.inflight.length > 0) this.startHeadTimer(proc);
      req.resolve({ stdout: '', stderr: req.stderr.join(''), exitCode: req.failed ? 1 : 0 });
      if (this.draining && this.inflight.length === 0) this.pump();
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
    proc.killedFor ??= `ip -batch ${why}`;
    proc.child.kill('SIGKILL');
  }

  /**
   * The `ip` is gone. The request it was running fails (after the process is gone, so nothing it does
   * lands after the caller was told); those behind it never ran, and go to a new `ip` in their order.
   */
  private onClose(proc: Proc, why: string): void {
    if (proc !== this.proc) return;
    this.proc = undefined;
    this.draining = false;
    clearTimeout(this.headTimer);
    const [head, ...rest] = this.inflight.splice(0);
    if (head) head.resolve({ stdout: '', stderr: `${head.stderr.join('')}${why}`, exitCode: 1 });
    for (const req of rest) Object.assign(req, { stderr: [], failed: false });
    this.waiting.unshift(...rest);
    if (this.closed) {
      for (const req of this.waiting.splice(0)) req.resolve({ stdout: '', stderr: why, exitCode: 1 });
      return;
    }
    this.pump();
  }
}

let shared: IpSession | undefined;
let deleter: IpSession | undefined;

/**
 * From now on, host-side `ip` changes of this process go through one long-lived `ip` (the node agent), and
 * link deletions through a second one: a `link del` holds its `ip` in the kernel for ~20 ms after the link
 * is gone (netdev_run_todo's rcu_barrier), which an ADD's host-side changes must not wait behind.
 */
export function keepIpSession(): IpSession {
  shared ??= new IpSession();
  deleter ??= new IpSession();
  return shared;
}

export function currentIpSession(): IpSession | undefined {
  return shared;
}

export function currentLinkDeleter(): IpSession | undefined {
  return deleter;
}

export async function closeIpSession(): Promise<void> {
  const sessions = [shared, deleter];
  shared = undefined;
  deleter = undefined;
  await Promise.all(sessions.map((s) => s?.close()));
}
