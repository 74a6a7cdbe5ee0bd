/**
 * A throw-away 3-member etcd cluster on loopback, with members that can be killed and revived by index,
 * for fault tests and the IPAM scale benchmark. Every process is stopped by PID.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { freePorts } from './etcd';

export interface EtcdCluster {
  /** All client URLs, comma-separated as etcd_endpoints takes them. */
  endpoints: string;
  members: { name: string; client: string; peer: string; pid: number | undefined }[];
  /** SIGKILL member i (0-based), keeping its data. */
  kill(i: number): Promise<void>;
  /** Starts member i again on the same ports and data dir, and waits until it is healthy. */
  revive(i: number): Promise<void>;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
let hooked = false;

function hook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const c of live) {
      try {
        if (c.pid) process.kill(c.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  });
}

function healthy(client: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(`${client}/health`, { timeout: 500 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(body.includes('"health":"true"')));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

async function waitHealthy(client: string, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await healthy(client)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`etcd member at ${client} not healthy after ${ms} ms`);
}

function exited(c: ChildProcess, ms: number): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    c.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

export async function startEtcdCluster(size = 3): Promise<EtcdCluster> {
  hook();
  const ports = await freePorts(size * 2);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-etcd-cluster-'));
  const members = Array.from({ length: size }, (_, i) => ({
    name: `m${i}`,
    client: `http://127.0.0.1:${ports[i * 2]}`,
    peer: `http://127.0.0.1:${ports[i * 2 + 1]}`,
    pid: undefined as number | undefined,
  }));
  const initial = members.map((m) => `${m.name}=${m.peer}`).join(',');
  const procs: (ChildProcess | undefined)[] = new Array(size).fill(undefined);

  const launch = (i: number, state: 'new' | 'existing') => {
    const m = members[i];
    if (!m) throw new Error(`no member ${i}`);
    const child = spawn(
      '/usr/bin/etcd',
      [
        '--name', m.name,
        '--data-dir', path.join(root, m.name),
        '--listen-client-urls', m.client,
        '--advertise-client-urls', m.client,
        '--listen-peer-urls', m.peer,
        '--initial-advertise-peer-urls', m.peer,
        '--initial-cluster', initial,
        '--initial-cluster-token', path.basename(root),
        '--initial-cluster-state', state,
        '--heartbeat-interval', '10',
        '--election-timeout', '100',
        '--log-level', 'error',
      ],
      { stdio: 'ignore', env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } },
    );
    live.add(child);
    child.on('exit', () => live.delete(child));
    procs[i] = child;
    m.pid = child.pid;
  };

  members.forEach((_, i) => launch(i, 'new'));
  await Promise.all(members.map((m) => waitHealthy(m.client, 20_000)));

  return {
    endpoints: members.map((m) => m.client).join(','),
    members,
    async kill(i) {
      const c = procs[i];
      if (c?.pid) process.kill(c.pid, 'SIGKILL');
      if (c) await exited(c, 5000);
      procs[i] = undefined;
      const m = members[i];
      if (m) m.pid = undefined;
    },
    async revive(i) {
      if (procs[i]) return;
      launch(i, 'existing');
      await waitHealthy(members[i]?.client ?? '', 20_000);
    },
    async stop() {
      for (const c of procs) {
        if (c?.pid && c.exitCode === null) {
          try {
            process.kill(c.pid, 'SIGTERM');
          } catch {
            // gone
          }
        }
      }
      await Promise.all(procs.map(async (c) => {
        if (!c) return;
        await exited(c, 3000);
        if (c.exitCode === null && c.signalCode === null && c.pid) process.kill(c.pid, 'SIGKILL');
      }));
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}
