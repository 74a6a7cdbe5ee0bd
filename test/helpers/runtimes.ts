/**
 * Real container runtimes as CNI clients, each fully private to one test run:
 *
 * - podman (CNI backend) with its own containers.conf, storage.conf, root, runroot and tmpdir under a
 *   temp dir, pointed at a test NETCONF dir and plugin dirs: /etc/containers and /var/lib/containers are
 *   not touched.
 * - containerd started from a private config.toml (root, state, sockets and the "opt" plugin dir under a
 *   temp dir, CRI disabled), stopped again by its PID, with `ctr` talking to its socket.
 * - `ctr run --cni` has no flags for CNI: it reads the first conflist by name in /etc/cni/net.d and looks
 *   for plugins in /opt/cni/bin (then /usr/lib/cni on Debian). installHostCni() puts a conflist and plugin
 *   symlinks there and restore() puts back exactly what was there before: files with the same names are
 *   moved aside and returned, directories it created are removed. A process 'exit' hook restores too.
 *
 * Everything here runs programs with argument arrays; nothing goes through a shell.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The name scripts/make-busybox-image.sh gives the image (podman import / the OCI index annotations). */
export const IMAGE_REF = 'localhost/busybox-local:latest';
export const HOST_NETCONF_DIR = '/etc/cni/net.d';
export const HOST_CNI_BIN_DIR = '/opt/cni/bin';
/** Our conflist's name in /etc/cni/net.d: "00-" so that it sorts before the usual 10-/87- files. */
export const TEST_CONFLIST_NAME = '00-calico-ts-test.conflist';

const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const childPath = (): string => process.env.PATH ?? SYSTEM_PATH;

/** Absolute path of an executable found in PATH or the usual sbin dirs, or undefined. */
export function findBinary(name: string): string | undefined {
  const dirs = [...childPath().split(':'), ...SYSTEM_PATH.split(':')].filter((d) => d !== '');
  for (const d of dirs) {
    const p = path.join(d, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------------

export interface ExecResult {
  /** Exit code; 128 + signal number when killed by a signal. */
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOpts {
  env?: Record<string, string>;
  input?: string;
  timeoutMs?: number;
}

function exitCode(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0);
}

/** Runs a program to completion; never rejects for a non-zero exit, only when it cannot be started or times out. */
export function runCmd(file: string, args: readonly string[], opts: RunOpts = {}): Promise<ExecResult> {
  const timeoutMs = opts.timeoutMs ?? 120_000;
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: opts.env ?? { PATH: childPath() }, stdio: ['pipe', 'pipe', 'pipe'] });
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
      reject(new Error(`cannot run ${file}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (timedOut) {
        reject(new Error(`${path.basename(file)} ${args.join(' ')} did not finish within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
        return;
      }
      resolve({ code: exitCode(code, signal), stdout, stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

/** A running program with piped stdio, for containers that wait on stdin while the test looks around. */
export interface LiveProcess {
  readonly pid: number;
  stdout(): string;
  stderr(): string;
  /** Resolves with the match once stdout matches `re`; rejects on timeout or when the process exits first. */
  waitForStdout(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  write(text: string): void;
  closeStdin(): void;
  /** Resolves when the process has exited and its output is complete. */
  readonly done: Promise<ExecResult>;
  kill(signal?: NodeJS.Signals): void;
}

export function startCmd(file: string, args: readonly string[], opts: { env?: Record<string, string> } = {}): Promise<LiveProcess> {
  return new Promise((resolve, reject) => {
    const child: ChildProcessWithoutNullStreams = spawn(file, args, { env: opts.env ?? { PATH: childPath() }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let exited = false;
    const listeners = new Set<() => void>();
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (c: string) => {
      out += c;
      for (const l of listeners) l();
    });
    child.stderr.on('data', (c: string) => (err += c));
    child.stdin.on('error', () => {});
    const done = new Promise<ExecResult>((res) => {
      child.on('close', (code, signal) => {
        exited = true;
        for (const l of listeners) l();
        res({ code: exitCode(code, signal), stdout: out, stderr: err });
      });
    });
    child.once('error', (e) => reject(new Error(`cannot run ${file}: ${e.message}`)));
    child.once('spawn', () => {
      const pid = child.pid;
      if (pid === undefined) {
        reject(new Error(`${file} did not start`));
        return;
      }
      resolve({
        pid,
        stdout: () => out,
        stderr: () => err,
        waitForStdout(re, timeoutMs) {
          return new Promise((res, rej) => {
            const check = (): void => {
              const m = re.exec(out);
              if (m) {
                finish();
                res(m);
              } else if (exited) {
                finish();
                rej(new Error(`${path.basename(file)} exited before printing ${re}\nstdout: ${out}\nstderr: ${err}`));
              }
            };
            const timer = setTimeout(() => {
              finish();
              rej(new Error(`${path.basename(file)} did not print ${re} within ${timeoutMs} ms\nstdout: ${out}\nstderr: ${err}`));
            }, timeoutMs);
            const finish = (): void => {
              clearTimeout(timer);
              listeners.delete(check);
            };
            listeners.add(check);
            check();
          });
        },
        write: (text) => {
          if (!child.stdin.destroyed) child.stdin.write(text);
        },
        closeStdin: () => {
          if (!child.stdin.destroyed) child.stdin.end();
        },
        done,
        kill: (signal = 'SIGKILL') => {
          if (!exited) child.kill(signal);
        },
      });
    });
  });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!isAlive(pid)) return true;
    await sleep(50);
  }
  return !isAlive(pid);
}

// ---------------------------------------------------------------------------------------------------
// Temp dirs that runtimes mount things into
// ---------------------------------------------------------------------------------------------------

/** Mount points at or below `dir`, deepest first (from /proc/self/mountinfo; octal escapes decoded). */
export function mountsUnder(dir: string): string[] {
  let info = '';
  try {
    info = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of info.split('\n')) {
    const field = line.split(' ')[4];
    if (field === undefined) continue;
    const mp = field.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (mp === dir || mp.startsWith(`${dir}/`)) out.push(mp);
  }
  return [...new Set(out)].sort((a, b) => b.length - a.length);
}

/**
 * Removes a temp dir a runtime worked in. Anything still mounted below it is lazily unmounted first, and
 * if a mount cannot be removed the tree is left alone (never delete through a mount). Returns problems.
 */
export function removeRuntimeDir(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const umount = findBinary('umount') ?? 'umount';
  for (const mp of mountsUnder(dir)) spawnSync(umount, ['-l', mp], { stdio: 'ignore' });
  const left = mountsUnder(dir);
  if (left.length > 0) return [`left ${dir} in place: still mounted: ${left.join(', ')}`];
  try {
    fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
    return [];
  } catch (e) {
    return [`could not remove ${dir}: ${(e as Error).message}`];
  }
}

// ---------------------------------------------------------------------------------------------------
// cgroups the runtimes create (cgroupfs): podman's libpod_parent, containerd's /<namespace>
// ---------------------------------------------------------------------------------------------------

const CGROUP_ROOT = '/sys/fs/cgroup';

/** Every hierarchy's root: /sys/fs/cgroup itself on a pure v2 host, else each controller mount under it. */
function cgroupRoots(): string[] {
  if (fs.existsSync(path.join(CGROUP_ROOT, 'cgroup.controllers'))) return [CGROUP_ROOT];
  try {
    return fs
      .readdirSync(CGROUP_ROOT, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => path.join(CGROUP_ROOT, e.name));
  } catch {
    return [];
  }
}

/**
 * Remembers which of the top-level cgroups `names` do not exist yet; remove() later deletes those (deepest
 * first) once they hold no process. Ones that existed before are never touched. Best effort: a cgroup
 * still in use is simply left, and nothing here fails a test.
 */
export function trackNewCgroups(names: readonly string[]): { remove(): void } {
  const fresh = cgroupRoots()
    .flatMap((root) => names.map((n) => path.join(root, n)))
    .filter((d) => !fs.existsSync(d));
  const removeTree = (dir: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return; // gone (cpu and cpuacct can be one hierarchy mounted twice)
    }
    for (const e of entries) if (e.isDirectory()) removeTree(path.join(dir, e.name));
    try {
      fs.rmdirSync(dir);
    } catch {
      // busy or gone: leave it
    }
  };
  return {
    remove() {
      for (const d of fresh) removeTree(d);
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// The busybox image
// ---------------------------------------------------------------------------------------------------

export interface BusyboxImage {
  dir: string;
  /** Plain rootfs tar for `podman import`. */
  rootfsTar: string;
  /** OCI image-layout tar for `ctr images import`. */
  ociTar: string;
}

/** Runs scripts/make-busybox-image.sh (a no-op when the tars are up to date). */
export async function buildBusyboxImage(outDir = path.join(REPO, 'build', 'images')): Promise<BusyboxImage> {
  const r = await runCmd('/bin/bash', [path.join(REPO, 'scripts', 'make-busybox-image.sh'), outDir], { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`make-busybox-image.sh failed (${r.code}): ${r.stderr}${r.stdout}`);
  const dir = r.stdout.trim().split('\n').pop() ?? outDir;
  return { dir, rootfsTar: path.join(dir, 'busybox-rootfs.tar'), ociTar: path.join(dir, 'busybox-oci.tar') };
}

// ---------------------------------------------------------------------------------------------------
// Cleanup on process exit (only synchronous work is possible there)
// ---------------------------------------------------------------------------------------------------

const exitTasks = new Set<() => void>();
let exitHookInstalled = false;

function onExit(task: () => void): () => void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const t of [...exitTasks].reverse()) {
        try {
          t();
        } catch {
          // best effort: keep going with the rest
        }
      }
      exitTasks.clear();
    });
  }
  exitTasks.add(task);
  return () => {
    exitTasks.delete(task);
  };
}

function hardLimit(name: string, fallback: number): number {
  try {
    const line = fs
      .readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith(name));
    const hard = line?.slice(name.length).trim().split(/\s+/)[1];
    if (hard === undefined) return fallback;
    return hard === 'unlimited' ? fallback : Number(hard);
  } catch {
    return fallback;
  }
}

// ---------------------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------------------

export interface PodmanOptions {
  /** Directory holding the conflists podman may use (network_config_dir). */
  netconfDir: string;
  /** Plugin dirs, searched in this order (cni_plugin_dirs; podman passes them as CNI_PATH). */
  pluginDirs: string[];
  binary?: string;
}

export interface Podman {
  /** The private temp dir: config, storage, runroot, tmpdir. */
  dir: string;
  binary: string;
  /** Environment podman runs with (and passes on to the plugins). */
  env: Record<string, string>;
  /** The global flags that select the private storage. */
  globalArgs: string[];
  run(args: readonly string[], opts?: { input?: string; timeoutMs?: number }): Promise<ExecResult>;
  start(args: readonly string[]): Promise<LiveProcess>;
  /** Removes all containers of this private store, then the temp dir. Idempotent; returns problems. */
  cleanup(): Promise<string[]>;
}

const tomlString = (s: string): string => JSON.stringify(s);

export async function createPodman(opts: PodmanOptions): Promise<Podman> {
  const binary = opts.binary ?? findBinary('podman');
  if (!binary) throw new Error('podman not found');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-podman-'));
  const p = (...parts: string[]): string => path.join(dir, ...parts);
  for (const d of ['storage', 'run', 'tmp', 'home', 'imgtmp']) fs.mkdirSync(p(d), { recursive: true });

  // This sandbox has no CAP_SYS_RESOURCE: runc cannot raise RLIMIT_NOFILE above our hard limit, and podman
  // lowers its own RLIMIT_NPROC to 32768 before starting runc, so pin both to values that can be set.
  const nofile = hardLimit('Max open files', 1_048_576);
  const nproc = Math.min(32_768, hardLimit('Max processes', 32_768));
  fs.writeFileSync(
    p('containers.conf'),
    [
      '[containers]',
      `default_ulimits = [${tomlString(`nofile=${nofile}:${nofile}`)}, ${tomlString(`nproc=${nproc}:${nproc}`)}]`,
      '',
      '[engine]',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "file"',
      'runtime = "runc"',
      // File locks live under tmp_dir; the default "shm" would leave /dev/shm/libpod_lock behind.
      'lock_type = "file"',
      `tmp_dir = ${tomlString(p('tmp'))}`,
      `image_copy_tmp_dir = ${tomlString(p('imgtmp'))}`,
      `static_dir = ${tomlString(p('storage', 'libpod'))}`,
      `volume_path = ${tomlString(p('storage', 'volumes'))}`,
      '',
      '[network]',
      'network_backend = "cni"',
      `cni_plugin_dirs = [${opts.pluginDirs.map(tomlString).join(', ')}]`,
      `network_config_dir = ${tomlString(opts.netconfDir)}`,
      '',
    ].join('\n'),
  );
  fs.writeFileSync(
    p('storage.conf'),
    ['[storage]', 'driver = "vfs"', `graphroot = ${tomlString(p('storage'))}`, `runroot = ${tomlString(p('run'))}`, ''].join('\n'),
  );
  const env: Record<string, string> = {
    PATH: childPath(),
    HOME: p('home'),
    TMPDIR: p('imgtmp'),
    CONTAINERS_CONF: p('containers.conf'),
    CONTAINERS_STORAGE_CONF: p('storage.conf'),
  };
  const globalArgs = [
    '--root', p('storage'),
    '--runroot', p('run'),
    '--tmpdir', p('tmp'),
    '--storage-driver', 'vfs',
    '--cgroup-manager', 'cgroupfs',
    '--events-backend', 'file',
  ];

  // With cgroupfs, podman creates libpod_parent (and libpod_parent/conmon) in every hierarchy and leaves them.
  const cgroups = trackNewCgroups(['libpod_parent']);
  const syncCleanup = (): void => {
    spawnSync(binary, [...globalArgs, 'rm', '--all', '--force', '--time', '0'], { env, stdio: 'ignore', timeout: 30_000 });
    removeRuntimeDir(dir);
    cgroups.remove();
  };
  const unhook = onExit(syncCleanup);
  let cleaned: Promise<string[]> | undefined;

  const podman: Podman = {
    dir,
    binary,
    env,
    globalArgs,
    run: (args, o = {}) => runCmd(binary, [...globalArgs, ...args], { env, input: o.input, timeoutMs: o.timeoutMs }),
    start: (args) => startCmd(binary, [...globalArgs, ...args], { env }),
    cleanup() {
      cleaned ??= (async () => {
        const problems: string[] = [];
        const rm = await runCmd(binary, [...globalArgs, 'rm', '--all', '--force', '--time', '0'], { env, timeoutMs: 60_000 }).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }));
        if (rm.code !== 0) problems.push(`podman rm --all failed (${rm.code}): ${rm.stderr.trim()}`);
        const left = await runCmd(binary, [...globalArgs, 'ps', '--all', '--quiet'], { env, timeoutMs: 30_000 }).catch(() => undefined);
        if (left && left.stdout.trim() !== '') problems.push(`podman containers left: ${left.stdout.trim()}`);
        problems.push(...removeRuntimeDir(dir));
        cgroups.remove();
        unhook();
        return problems;
      })();
      return cleaned;
    },
  };
  return podman;
}

// ---------------------------------------------------------------------------------------------------
// containerd + ctr
// ---------------------------------------------------------------------------------------------------

export interface Containerd {
  dir: string;
  socket: string;
  pid: number;
  namespace: string;
  /** Directory for ctr's stdio FIFOs (`ctr run --fifo-dir`), so nothing goes to /run/containerd/fifo. */
  fifoDir: string;
  /** containerd's own log so far. */
  log(): string;
  /** `ctr -a <socket> -n <namespace> ...args`. */
  ctr(args: readonly string[], opts?: { input?: string; timeoutMs?: number }): Promise<ExecResult>;
  startCtr(args: readonly string[]): Promise<LiveProcess>;
  /** Environment ctr runs with; `ctr run --cni` passes it on to the plugins. */
  env: Record<string, string>;
  /** Kills and deletes the namespace's tasks and containers, stops containerd by PID, removes the temp dir. */
  stop(): Promise<string[]>;
}

export async function startContainerd(opts: { namespace?: string; containerdBinary?: string; ctrBinary?: string } = {}): Promise<Containerd> {
  const containerdBin = opts.containerdBinary ?? findBinary('containerd');
  const ctrBin = opts.ctrBinary ?? findBinary('ctr');
  if (!containerdBin || !ctrBin) throw new Error('containerd or ctr not found');
  const namespace = opts.namespace ?? 'calico-ts-test';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cts-containerd-'));
  const p = (...parts: string[]): string => path.join(dir, ...parts);
  const socket = p('containerd.sock');
  const fifoDir = p('fifo');
  fs.mkdirSync(fifoDir);
  // containerd 1.6's runc v2 shim puts its sockets in /run/containerd/s whatever the config says;
  // remember whether /run/containerd was there, so that stop() can remove what containerd created.
  const runContainerdExisted = fs.existsSync('/run/containerd');
  // ctr's default spec puts each task in the cgroup /<namespace>/<id>; the namespace level stays behind.
  const cgroups = trackNewCgroups([namespace]);
  fs.writeFileSync(
    p('config.toml'),
    [
      'version = 2',
      `root = ${tomlString(p('root'))}`,
      `state = ${tomlString(p('state'))}`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '',
      '[grpc]',
      `  address = ${tomlString(socket)}`,
      '',
      '[ttrpc]',
      `  address = ${tomlString(`${socket}.ttrpc`)}`,
      '',
      '[debug]',
      `  address = ${tomlString(p('debug.sock'))}`,
      '',
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = ${tomlString(p('opt'))}`,
      '',
    ].join('\n'),
  );
  const env: Record<string, string> = { PATH: childPath(), HOME: dir, TMPDIR: dir };
  const logFd = fs.openSync(p('containerd.log'), 'a');
  // Its own session (like setsid), so it is not hit by signals meant for the test's process group.
  const child = spawn(containerdBin, ['--config', p('config.toml')], { env, detached: true, stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  const pid = await new Promise<number>((resolve, reject) => {
    child.once('error', (e) => reject(new Error(`cannot start containerd: ${e.message}`)));
    child.once('spawn', () => (child.pid === undefined ? reject(new Error('containerd did not start')) : resolve(child.pid)));
  }).catch((e: unknown) => {
    removeRuntimeDir(dir);
    throw e;
  });
  child.unref();
  const log = (): string => {
    try {
      return fs.readFileSync(p('containerd.log'), 'utf8');
    } catch {
      return '';
    }
  };

  const killSync = (): void => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
    removeRuntimeDir(dir);
    cgroups.remove();
  };
  const unhook = onExit(killSync);

  const ctr = (args: readonly string[], o: { input?: string; timeoutMs?: number } = {}): Promise<ExecResult> =>
    runCmd(ctrBin, ['-a', socket, '-n', namespace, ...args], { env, input: o.input, timeoutMs: o.timeoutMs ?? 60_000 });

  // Ready once the API answers (about 0.1 s here).
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (!isAlive(pid)) {
      unhook();
      removeRuntimeDir(dir);
      throw new Error(`containerd exited during start-up:\n${log().slice(-4000)}`);
    }
    const v = await runCmd(ctrBin, ['-a', socket, 'version'], { env, timeoutMs: 5_000 }).catch(() => undefined);
    if (v?.code === 0) break;
    if (Date.now() > deadline) {
      killSync();
      unhook();
      throw new Error(`containerd not ready within 15 s:\n${log().slice(-4000)}`);
    }
    await sleep(50);
  }

  let stopped: Promise<string[]> | undefined;
  const stop = (): Promise<string[]> => {
    stopped ??= (async () => {
      const problems: string[] = [];
      if (isAlive(pid)) {
        // Tasks have shims in their own sessions: kill and delete them through the API, not by name.
        const tasks = await ctr(['tasks', 'list', '--quiet']).catch(() => undefined);
        for (const id of (tasks?.stdout ?? '').split('\n').map((s) => s.trim()).filter((s) => s !== '')) {
          await ctr(['tasks', 'kill', '--signal', 'SIGKILL', id]).catch(() => undefined);
          await ctr(['tasks', 'delete', '--force', id]).catch(() => undefined);
        }
        const containers = await ctr(['containers', 'list', '--quiet']).catch(() => undefined);
        for (const id of (containers?.stdout ?? '').split('\n').map((s) => s.trim()).filter((s) => s !== '')) {
          const r = await ctr(['containers', 'delete', id]).catch((e: Error) => ({ code: -1, stdout: '', stderr: e.message }));
          if (r.code !== 0) problems.push(`ctr containers delete ${id}: ${r.stderr.trim()}`);
        }
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // already gone
        }
        if (!(await waitGone(pid, 10_000))) {
          problems.push(`containerd ${pid} ignored SIGTERM; killed`);
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
          await waitGone(pid, 5_000);
        }
      }
      problems.push(...removeRuntimeDir(dir));
      if (!runContainerdExisted) problems.push(...removeEmptyTree('/run/containerd'));
      cgroups.remove();
      unhook();
      return problems;
    })();
    return stopped;
  };

  return {
    dir,
    socket,
    pid,
    namespace,
    fifoDir,
    log,
    env,
    ctr,
    startCtr: (args) => startCmd(ctrBin, ['-a', socket, '-n', namespace, ...args], { env }),
    stop,
  };
}

/** Removes `dir` if it holds nothing but (nested) empty directories; otherwise reports what is left. */
function removeEmptyTree(dir: string): string[] {
  const files: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const full = path.join(d, e.name);
      if (e.isDirectory()) walk(full);
      else files.push(full);
    }
  };
  try {
    if (!fs.existsSync(dir)) return [];
    walk(dir);
    if (files.length > 0) return [`${dir} was created during the test and still holds ${files.join(', ')}`];
    fs.rmSync(dir, { recursive: true });
    return [];
  } catch (e) {
    return [`could not clean ${dir}: ${(e as Error).message}`];
  }
}

// ---------------------------------------------------------------------------------------------------
// /etc/cni/net.d and /opt/cni/bin, changed for ctr and put back exactly
// ---------------------------------------------------------------------------------------------------

/** What a directory holds: name -> type, mode, size, mtime, inode (and link target), or undefined when absent. */
export type DirSnapshot = Record<string, string> | undefined;

export function snapshotDir(dir: string): DirSnapshot {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  const out: Record<string, string> = {};
  for (const name of names.sort()) {
    const full = path.join(dir, name);
    const st = fs.lstatSync(full, { bigint: true });
    const type = st.isSymbolicLink() ? `link->${fs.readlinkSync(full)}` : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other';
    out[name] = `${type} mode=${st.mode.toString(8)} uid=${st.uid} gid=${st.gid} size=${st.size} mtime=${st.mtimeNs} ino=${st.ino}`;
  }
  return out;
}

/** Snapshot of every place installHostCni() may change. */
export function snapshotHostCni(): Record<string, DirSnapshot> {
  return {
    '/etc/cni': snapshotDir('/etc/cni'),
    [HOST_NETCONF_DIR]: snapshotDir(HOST_NETCONF_DIR),
    '/opt': snapshotDir('/opt'),
    '/opt/cni': snapshotDir('/opt/cni'),
    [HOST_CNI_BIN_DIR]: snapshotDir(HOST_CNI_BIN_DIR),
  };
}

/** The files go-cni / libcni consider in a conf dir, in the order they use (byte order of the name). */
export function cniConfFiles(dir: string): string[] {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries
    .filter((e) => !e.isDirectory() && ['.conf', '.conflist', '.json'].includes(path.extname(e.name)))
    .map((e) => e.name)
    .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

type Undo =
  | { kind: 'mkdir'; path: string }
  | { kind: 'aside'; original: string; aside: string }
  | { kind: 'created'; path: string; dev: number; ino: number };

export interface HostCniInstall {
  /** /etc/cni/net.d/00-calico-ts-test.conflist */
  conflistPath: string;
  /** Conf files that sorted before ours and are moved aside until restore(). */
  movedAside: string[];
  /** Undoes every change, newest first. Idempotent; returns problems (empty when all was put back). */
  restore(): string[];
}

/**
 * Writes `conflist` as /etc/cni/net.d/00-calico-ts-test.conflist and symlinks each plugin into
 * /opt/cni/bin (name -> target). A file already there under one of these names is renamed aside (a
 * hidden name in the same directory, so inode, owner, mode and times stay as they were) and renamed back
 * by restore(); so are conf files that would sort before ours, because `ctr run --cni` only uses the first.
 * Directories that did not exist are created and removed again.
 */
export function installHostCni(o: { conflist: unknown; plugins: Record<string, string> }): HostCniInstall {
  const undo: Undo[] = [];
  const tag = `calico-ts-aside.${process.pid}`;
  let restored = false;

  const mkdirs = (dir: string): void => {
    const missing: string[] = [];
    for (let d = dir; !fs.existsSync(d); d = path.dirname(d)) missing.unshift(d);
    for (const d of missing) {
      fs.mkdirSync(d, { mode: 0o755 });
      undo.push({ kind: 'mkdir', path: d });
    }
  };
  const moveAside = (full: string): void => {
    const aside = path.join(path.dirname(full), `.${path.basename(full)}.${tag}`);
    if (fs.existsSync(aside)) throw new Error(`${aside} already exists; refusing to overwrite it`);
    fs.renameSync(full, aside);
    undo.push({ kind: 'aside', original: full, aside });
  };
  const exists = (full: string): boolean => {
    try {
      fs.lstatSync(full);
      return true;
    } catch {
      return false;
    }
  };
  const created = (full: string): void => {
    const st = fs.lstatSync(full);
    undo.push({ kind: 'created', path: full, dev: st.dev, ino: st.ino });
  };

  // Adding and removing entries changes a directory's mtime: put those back as well.
  // Node's utimes() goes through a double and loses the nanoseconds, so touch(1) sets them back.
  const dirTimes = new Map<string, { atimeNs: bigint; mtimeNs: bigint }>();
  for (const d of ['/etc', '/etc/cni', HOST_NETCONF_DIR, '/opt', '/opt/cni', HOST_CNI_BIN_DIR]) {
    try {
      const st = fs.statSync(d, { bigint: true });
      dirTimes.set(d, { atimeNs: st.atimeNs, mtimeNs: st.mtimeNs });
    } catch {
      // absent: nothing to keep
    }
  }
  const touch = findBinary('touch') ?? '/usr/bin/touch';
  const setTime = (dir: string, which: '-a' | '-m', ns: bigint): string | undefined => {
    const stamp = `@${ns / 1_000_000_000n}.${(ns % 1_000_000_000n).toString().padStart(9, '0')}`;
    const r = spawnSync(touch, ['--no-create', which, '-d', stamp, dir], { encoding: 'utf8' });
    return r.status === 0 ? undefined : `touch ${which} ${dir}: ${r.error?.message ?? r.stderr}`;
  };

  const restore = (): string[] => {
    if (restored) return [];
    restored = true;
    const problems: string[] = [];
    for (const u of undo.reverse()) {
      try {
        if (u.kind === 'created') {
          let st: fs.Stats | undefined;
          try {
            st = fs.lstatSync(u.path);
          } catch {
            st = undefined;
          }
          if (st && st.dev === u.dev && st.ino === u.ino) fs.unlinkSync(u.path);
          else if (st) problems.push(`${u.path} was replaced by someone else during the test; left in place`);
        } else if (u.kind === 'aside') {
          if (exists(u.original)) problems.push(`${u.original} exists again; its original is still at ${u.aside}`);
          else fs.renameSync(u.aside, u.original);
        } else {
          fs.rmdirSync(u.path);
        }
      } catch (e) {
        problems.push(`restoring ${u.kind === 'aside' ? u.original : u.path}: ${(e as Error).message}`);
      }
    }
    for (const [d, t] of dirTimes) {
      for (const p of [setTime(d, '-m', t.mtimeNs), setTime(d, '-a', t.atimeNs)]) if (p !== undefined) problems.push(p);
    }
    unhook();
    return problems;
  };
  const unhook = onExit(() => {
    restore();
  });

  const conflistPath = path.join(HOST_NETCONF_DIR, TEST_CONFLIST_NAME);
  const movedAside: string[] = [];
  try {
    mkdirs(HOST_NETCONF_DIR);
    const mine = Buffer.from(TEST_CONFLIST_NAME);
    for (const name of cniConfFiles(HOST_NETCONF_DIR)) {
      if (Buffer.compare(Buffer.from(name), mine) <= 0) {
        moveAside(path.join(HOST_NETCONF_DIR, name));
        if (name !== TEST_CONFLIST_NAME) movedAside.push(name);
      }
    }
    // Written to a temp name first, so no reader ever sees half a file.
    const tmp = path.join(HOST_NETCONF_DIR, `.${TEST_CONFLIST_NAME}.${tag}.tmp`);
    try {
      fs.writeFileSync(tmp, typeof o.conflist === 'string' ? o.conflist : JSON.stringify(o.conflist, null, 2), { mode: 0o644 });
      fs.renameSync(tmp, conflistPath);
    } finally {
      fs.rmSync(tmp, { force: true });
    }
    created(conflistPath);

    mkdirs(HOST_CNI_BIN_DIR);
    for (const [name, target] of Object.entries(o.plugins)) {
      const full = path.join(HOST_CNI_BIN_DIR, name);
      if (exists(full)) moveAside(full);
      fs.symlinkSync(target, full);
      created(full);
    }
  } catch (e) {
    const problems = restore();
    throw new Error(`installing the test CNI config failed: ${(e as Error).message}${problems.length ? `; restore problems: ${problems.join('; ')}` : ''}`);
  }
  const first = cniConfFiles(HOST_NETCONF_DIR)[0];
  if (first !== TEST_CONFLIST_NAME) {
    const problems = restore();
    throw new Error(`${TEST_CONFLIST_NAME} is not the first conf file in ${HOST_NETCONF_DIR} (${first}); restore problems: ${problems.join('; ')}`);
  }
  return { conflistPath, movedAside, restore };
}
