/** Named network namespaces for tests (`ip netns`), always removed again, also when a test crashes. */
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';

export interface Netns {
  name: string;
  /** /var/run/netns/<name> */
  path: string;
  /** Runs argv inside the namespace (`ip netns exec <name> ...`); never throws on a non-zero exit. */
  exec(argv: string[]): Promise<{ stdout: string; stderr: string; code: number }>;
  /** `ip netns del`; a namespace already gone is fine. */
  remove(): Promise<void>;
}

const IP_BIN = ['/usr/sbin/ip', '/sbin/ip', '/usr/bin/ip', '/bin/ip'].find((p) => fs.existsSync(p)) ?? 'ip';

const created = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const name of created) spawnSync(IP_BIN, ['netns', 'del', name], { stdio: 'ignore' });
    created.clear();
  });
}

function run(file: string, args: readonly string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    execFile(file, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      let code = 0;
      if (err) {
        const c: unknown = (err as NodeJS.ErrnoException & { code?: unknown }).code;
        code = typeof c === 'number' ? c : 127;
      }
      resolve({ stdout, stderr, code });
    });
  });
}

export async function createNetns(prefix = 'cts'): Promise<Netns> {
  const name = `${prefix}-${randomBytes(3).toString('hex')}`;
  const nsPath = `/var/run/netns/${name}`;
  const add = await run(IP_BIN, ['netns', 'add', name]);
  if (add.code !== 0) throw new Error(`ip netns add ${name} failed: ${add.stderr.trim()}`);
  installExitHook();
  created.add(name);
  const remove = async (): Promise<void> => {
    const del = await run(IP_BIN, ['netns', 'del', name]);
    created.delete(name);
    if (del.code !== 0 && fs.existsSync(nsPath)) throw new Error(`ip netns del ${name} failed: ${del.stderr.trim()}`);
  };
  const lo = await run(IP_BIN, ['-n', name, 'link', 'set', 'lo', 'up']);
  if (lo.code !== 0) {
    await remove();
    throw new Error(`ip -n ${name} link set lo up failed: ${lo.stderr.trim()}`);
  }
  return {
    name,
    path: nsPath,
    exec: (argv) => run(IP_BIN, ['netns', 'exec', name, ...argv]),
    remove,
  };
}
