/** The node agent (`calico agent`) of the built binary, started as its own process and stopped by PID. */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DIST } from './plugin';

export interface Agent {
  socket: string;
  pid: number;
  /** Everything the agent wrote to stderr so far (its log: a line per call). */
  log(): string;
  /** SIGTERM, then SIGKILL after 10 s; resolves when the process is gone. Removes its temp dir. */
  stop(): Promise<void>;
}

/** The V8 flags conf-examples/calico-agent.service runs the agent with. */
export const AGENT_NODE_FLAGS = ['--lite-mode', '--max-semi-space-size=1'];

/** A self-contained (SEA) build is an ELF executable of its own; a script build is run by node. */
function isElf(file: string): boolean {
  const head = Buffer.alloc(4);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, head, 0, 4, 0);
  } finally {
    fs.closeSync(fd);
  }
  return head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
}

/**
 * `binary` defaults to dist/calico; `wrapper` is a command the agent's command line is appended to (which
 * must exec it, so the agent keeps the PID this helper stops); `command` replaces that command line whole
 * (an installed unit's ExecStart), and must serve `socket`.
 */
export async function startAgent(o: { socket?: string; binary?: string; wrapper?: readonly string[]; command?: readonly string[] } = {}): Promise<Agent> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-agent-'));
  const socket = o.socket ?? path.join(dir, 'agent.sock');
  const binary = o.binary ?? path.join(DIST, 'calico');
  // As conf-examples/calico-agent.service starts it.
  const argv = o.command ?? [...(isElf(binary) ? [binary] : ['node', ...AGENT_NODE_FLAGS, binary]), 'agent', '--socket', socket];
  const [file, ...args] = [...(o.wrapper ?? []), ...argv] as [string, ...string[]];
  const child: ChildProcess = spawn(file, args, {
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr?.on('data', (d: Buffer) => (log += d.toString('utf8')));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 30_000;
  while (!log.includes(`serving calico calls on ${socket}`)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`calico agent did not start on ${socket}: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { socket, pid: child.pid ?? -1, log: () => log, stop };
}
