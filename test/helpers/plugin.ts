/** Runs the built plugin files exactly as a container runtime does: a separate process, env and stdin only. */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const DIST = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../dist');

export function requireBuilt(): void {
  const missing = ['calico-ipam', 'calico'].filter((b) => {
    try {
      fs.accessSync(path.join(DIST, b), fs.constants.X_OK);
      return false;
    } catch {
      return true;
    }
  });
  if (missing.length > 0) {
    throw new Error(`${missing.map((b) => `dist/${b}`).join(' and ')} missing or not executable: run scripts/build-binaries.sh first`);
  }
}

export interface PluginRun {
  status: number;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON, or undefined when it is empty or not JSON. */
  json: unknown;
}

export interface RunOptions {
  env: Record<string, string | undefined>;
  stdin?: string;
  args?: string[];
  timeoutMs?: number;
}

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export async function runPlugin(binary: 'calico' | 'calico-ipam' | string, opts: RunOptions): Promise<PluginRun> {
  const file = path.isAbsolute(binary) ? binary : path.join(DIST, binary);
  // Only PATH is carried over (the shebang needs it to find node); nothing else from the test process.
  const env: Record<string, string> = { PATH: process.env.PATH ?? DEFAULT_PATH };
  for (const [k, v] of Object.entries(opts.env)) if (v !== undefined) env[k] = v;
  const timeoutMs = opts.timeoutMs ?? 60_000;
  return new Promise<PluginRun>((resolve, reject) => {
    const child = spawn(file, opts.args ?? [], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`failed to run ${file}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (timedOut) {
        reject(new Error(`${path.basename(file)} did not finish within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
        return;
      }
      const status = code ?? 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0);
      let json: unknown;
      if (stdout.trim() !== '') {
        try {
          json = JSON.parse(stdout);
        } catch {
          json = undefined;
        }
      }
      resolve({ status, stdout, stderr, json });
    });
    // The plugin may exit without reading stdin (VERSION, early errors): that is not a failure here.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.stdin ?? '');
  });
}

export interface CniEnvOptions {
  command: string;
  containerId?: string;
  netns?: string;
  ifname?: string;
  path?: string;
  args?: string;
}

/** CNI_* variables for one call; CNI_IFNAME defaults to eth0 and CNI_PATH to dist/. */
export function cniEnv(o: CniEnvOptions): Record<string, string> {
  const env: Record<string, string> = {
    CNI_COMMAND: o.command,
    CNI_IFNAME: o.ifname ?? 'eth0',
    CNI_PATH: o.path ?? DIST,
  };
  if (o.containerId !== undefined) env.CNI_CONTAINERID = o.containerId;
  if (o.netns !== undefined) env.CNI_NETNS = o.netns;
  if (o.args !== undefined) env.CNI_ARGS = o.args;
  return env;
}

/** `calico-ipam pool add CIDR [args]` against an etcd, as an operator creates a pool; throws with its stderr. */
export async function addPool(endpoint: string, cidr: string, args: readonly string[] = []): Promise<void> {
  const r = await runPlugin('calico-ipam', { env: {}, args: ['pool', 'add', cidr, ...args, '--etcd-endpoints', endpoint] });
  if (r.status !== 0) throw new Error(`calico-ipam pool add ${cidr} exited ${r.status}: ${r.stderr}`);
}
