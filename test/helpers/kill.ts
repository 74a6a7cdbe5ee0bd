/**
 * Running a built plugin as its own process group, so a test can SIGKILL the plugin at an arbitrary moment
 * (as a runtime's timeout does) and then wait for whatever children it left (an `ip -batch` in flight) to
 * finish, before looking at what the kill left behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DIST } from './plugin';

export interface Spawned {
  child: ChildProcess;
  pid: number;
  /** Resolves when the plugin process has exited (status, or the signal that ended it). */
  done: Promise<{ status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; ms: number }>;
  running(): boolean;
  /** Resolves true once the plugin's stderr matches `re`, or false if it exits first. */
  waitForStderr(re: RegExp): Promise<boolean>;
}

const groups = new Set<number>();
let hooked = false;

function hook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const g of groups) {
      try {
        process.kill(-g, 'SIGKILL');
      } catch {
        // gone
      }
    }
  });
}

export function spawnPlugin(binary: string, env: Record<string, string>, stdin: string): Spawned {
  hook();
  const file = path.isAbsolute(binary) ? binary : path.join(DIST, binary);
  const t0 = Date.now();
  // detached: the plugin leads a new process group, which its children (ip, nsenter) join.
  const child = spawn(file, [], { env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`failed to start ${file}`);
  groups.add(pid);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on('data', (c: Buffer) => out.push(c));
  child.stderr?.on('data', (c: Buffer) => err.push(c));
  let exited = false;
  const watchers: { re: RegExp; resolve: (hit: boolean) => void }[] = [];
  const stderrText = () => Buffer.concat(err).toString('utf8');
  child.stderr?.on('data', () => {
    const text = stderrText();
    for (let i = watchers.length - 1; i >= 0; i--) {
      const w = watchers[i];
      if (w && w.re.test(text)) {
        watchers.splice(i, 1);
        w.resolve(true);
      }
    }
  });
  const done = new Promise<{ status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; ms: number }>((resolve) => {
    child.on('close', (status, signal) => {
      exited = true;
      for (const w of watchers.splice(0)) w.resolve(w.re.test(stderrText()));
      resolve({ status, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), ms: Date.now() - t0 });
    });
  });
  child.on('exit', () => {
    exited = true;
  });
  child.stdin?.on('error', () => {});
  child.stdin?.end(stdin);
  const waitForStderr = (re: RegExp) =>
    new Promise<boolean>((resolve) => {
      if (re.test(stderrText())) resolve(true);
      else if (exited) resolve(false);
      else watchers.push({ re, resolve });
    });
  return { child, pid, done, running: () => !exited, waitForStderr };
}

/** Live (non-zombie) processes whose process group is `pgid`, from /proc. */
export function groupMembers(pgid: number): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (rest[0] !== 'Z' && Number(rest[2]) === pgid) out.push(Number(name));
  }
  return out;
}

/** Waits until no process of the group is left; past `ms`, SIGKILLs the group and throws. */
export async function waitGroupGone(pgid: number, ms = 15_000): Promise<void> {
  const until = Date.now() + ms;
  while (groupMembers(pgid).length > 0) {
    if (Date.now() > until) {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        // gone
      }
      throw new Error(`process group ${pgid} still has ${groupMembers(pgid).join(', ')} after ${ms} ms`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  groups.delete(pgid);
}
