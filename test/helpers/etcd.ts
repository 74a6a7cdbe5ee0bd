/**
 * A throw-away single-member etcd for one test file, plus raw key access through the real `etcdctl`
 * binary, so assertions on stored values never depend on our own etcd client code.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const ETCD_BIN = '/usr/bin/etcd';
export const ETCDCTL_BIN = '/usr/bin/etcdctl';

export interface EtcdServer {
  /** Client URL, e.g. http://127.0.0.1:41234 */
  endpoint: string;
  pid: number;
  dataDir: string;
  stop(): Promise<void>;
  get(key: string): Promise<string | undefined>;
  getPrefix(prefix: string): Promise<Map<string, string>>;
  put(key: string, value: string): Promise<void>;
  /** Deletes every key starting with `prefix`. */
  del(prefix: string): Promise<void>;
}

/** PID -> data dir of every etcd this process started and has not stopped yet. */
const running = new Map<number, string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    // Only synchronous work is possible here.
    for (const [pid, dir] of running) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
      try {
        fs.rmSync(dir, { recursive: true, force: true });
      } catch {
        // best effort
      }
    }
    running.clear();
  });
}

/** Finds `n` distinct free loopback ports by binding to port 0 (all held open together, then closed). */
export async function freePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < n; i++) {
      const srv = net.createServer();
      servers.push(srv);
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(0, '127.0.0.1', () => resolve());
      });
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') throw new Error('unexpected server address');
      ports.push(addr.port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

function httpHealthy(endpoint: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(`${endpoint}/health`, { timeout: 1000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => {
        try {
          const parsed: unknown = JSON.parse(body);
          resolve(typeof parsed === 'object' && parsed !== null && 'health' in parsed && parsed.health === 'true');
        } catch {
          resolve(false);
        }
      });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function etcdctl(endpoint: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      ETCDCTL_BIN,
      ['--endpoints', endpoint, '--command-timeout', '10s', ...args],
      // A clean environment: no ETCDCTL_* from outside may change what we talk to.
      { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ETCDCTL_API: '3' }, maxBuffer: 512 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`etcdctl ${args.join(' ')} failed: ${err.message}\n${stderr}`));
        else resolve(stdout);
      },
    );
  });
}

interface EtcdctlJsonKv {
  key: string;
  value?: string;
}

function decodeKvs(stdout: string): Map<string, string> {
  const parsed = JSON.parse(stdout) as { kvs?: EtcdctlJsonKv[] };
  const out = new Map<string, string>();
  for (const kv of parsed.kvs ?? []) {
    out.set(Buffer.from(kv.key, 'base64').toString('utf8'), Buffer.from(kv.value ?? '', 'base64').toString('utf8'));
  }
  return out;
}

function waitForExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

async function startOnce(): Promise<EtcdServer & { exited: () => string | undefined }> {
  const [clientPort, peerPort] = (await freePorts(2)) as [number, number];
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-etcd-'));
  const endpoint = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const child = spawn(
    ETCD_BIN,
    [
      '--name', 'cts',
      '--data-dir', dataDir,
      '--listen-client-urls', endpoint,
      '--advertise-client-urls', endpoint,
      '--listen-peer-urls', peer,
      '--initial-advertise-peer-urls', peer,
      '--initial-cluster', `cts=${peer}`,
      '--initial-cluster-state', 'new',
      '--heartbeat-interval', '10',
      '--election-timeout', '100',
      '--logger', 'zap',
      '--log-level', 'error',
    ],
    { detached: false, stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } },
  );
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (c: string) => {
    if (stderr.length < 16_384) stderr += c;
  });
  let exitInfo: string | undefined;
  child.on('exit', (code, signal) => {
    exitInfo = `etcd exited (code ${code}, signal ${signal}): ${stderr.trim().slice(0, 2000)}`;
  });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', () => resolve());
    child.once('error', reject);
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error('etcd did not start');
  installExitHook();
  running.set(pid, dataDir);

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // already gone
        }
        if (!(await waitForExit(child, 3000))) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
          await waitForExit(child, 3000);
        }
      }
      running.delete(pid);
      fs.rmSync(dataDir, { recursive: true, force: true });
    })();
    return stopped;
  };

  return {
    endpoint,
    pid,
    dataDir,
    stop,
    exited: () => exitInfo,
    async get(key) {
      const m = decodeKvs(await etcdctl(endpoint, ['get', '-w', 'json', '--', key]));
      return m.get(key);
    },
    async getPrefix(prefix) {
      return decodeKvs(await etcdctl(endpoint, ['get', '--prefix', '-w', 'json', '--', prefix]));
    },
    async put(key, value) {
      await etcdctl(endpoint, ['put', '--', key, value]);
    },
    async del(prefix) {
      await etcdctl(endpoint, ['del', '--prefix', '--', prefix]);
    },
  };
}

/** Starts etcd on free loopback ports and waits (at most 10 s) until it reports healthy. */
export async function startEtcd(): Promise<EtcdServer> {
  let lastError = '';
  // A port found free can be taken by someone else before etcd binds it; then try fresh ports.
  for (let attempt = 0; attempt < 3; attempt++) {
    const server = await startOnce();
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && server.exited() === undefined) {
      if (await httpHealthy(server.endpoint)) {
        const { exited: _exited, ...api } = server;
        return api;
      }
      await sleep(50);
    }
    lastError = server.exited() ?? `etcd at ${server.endpoint} not healthy within 10 s`;
    await server.stop();
  }
  throw new Error(`could not start etcd: ${lastError}`);
}
