/**
 * The node agent: a long-lived process that runs CNI calls for the plugin binaries of its host, so a call
 * pays for a small client (the launcher) instead of a whole plugin start. It runs each call through the
 * same `respond` as a plugin process, with the caller's environment and stdin, and answers with what that
 * process would have printed. Calls run concurrently (up to a limit); the allocator's guarded transactions
 * make that as safe as concurrent processes.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { respond, type PluginSpec, type Reply } from '../cni/skel';
import { errorMessage } from '../cni/errors';
import { namespacesOf } from '../launch/agent-client';
import { serially } from '../sync/serial';
import { limiter, type Limiter } from '../sync/limit';
import { CniError, ErrorCode, errorObject } from '../cni/errors';
import { sniffVersion } from '../cni/version';
import { AgentRequestSchema, MAX_REQUEST_BYTES, type AgentReply } from './protocol';

export const DEFAULT_AGENT_SOCKET = '/run/calico-ts/agent.sock';

export interface AgentOptions {
  socket: string;
  spec: PluginSpec;
  /** This binary's build id; a caller of another build is refused and runs the call itself. */
  build: string;
  /** The agent's own log (a line per call), normally its stderr. */
  log: (line: string) => void;
  /** Calls run at once at most (default DEFAULT_MAX_CALLS); the rest wait their turn. */
  maxCalls?: number;
}

/**
 * A few concurrent calls overlap their waits on etcd and on `ip`; many more gain little (the host's IPAM
 * goes one call at a time, and the JavaScript runs on one thread) while each holds memory and child
 * processes: a storm of ADDs after a node reboot queues here instead of growing the agent.
 */
export const DEFAULT_MAX_CALLS = 8;

export interface RunningAgent {
  readonly socket: string;
  /** Stops accepting, lets the calls in flight finish, removes the socket. */
  close(): Promise<void>;
}

function stamp(level: string, msg: string): string {
  return `${new Date().toISOString()} [${level}][${process.pid}] agent: ${msg}\n`;
}

/** A socket file no one answers on is left from a killed agent; one that answers belongs to a live agent. */
async function claimSocketPath(socket: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socket);
  } catch {
    fs.mkdirSync(path.dirname(socket), { recursive: true, mode: 0o700 });
    return;
  }
  if (!st.isSocket()) throw new Error(`${socket} exists and is not a socket; refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(socket);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new Error(`another agent is serving ${socket}`);
  fs.unlinkSync(socket);
}

/** Only root may hand the agent work that creates interfaces and takes addresses: the socket is 0600. */
function listenPrivately(server: net.Server, socket: string): Promise<void> {
  const old = process.umask(0o177);
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, () => {
      server.off('error', reject);
      resolve();
    });
  }).finally(() => process.umask(old));
}

/** What one connection's call needs to know about its connection and the agent. */
interface CallState {
  /** The caller hung up (its deadline passed, or it was killed). */
  gone(): boolean;
  /** The agent is stopping: refuse, so the caller runs the call itself. */
  closing(): boolean;
  /** The gate of concurrent calls. */
  limit: Limiter;
}

const OWN_NAMESPACES = JSON.stringify(namespacesOf(fs));

async function answer(opts: AgentOptions, raw: string, state: CallState): Promise<AgentReply> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (e) {
    return { refused: `malformed request: ${errorMessage(e)}` };
  }
  const req = AgentRequestSchema.safeParse(parsed);
  if (!req.success) return { refused: 'malformed request' };
  if (state.closing()) return { refused: 'the agent is shutting down' };
  if (req.data.build !== opts.build) return { refused: `this agent runs build ${opts.build}, the caller is build ${req.data.build}` };
  if (JSON.stringify(req.data.namespaces) !== OWN_NAMESPACES) {
    return { refused: `the caller runs in other mount or PID namespaces (${JSON.stringify(req.data.namespaces)}), where its paths mean other files` };
  }
  const env = req.data.env;
  const what = `${env.CNI_COMMAND ?? '?'} ${env.CNI_CONTAINERID ?? ''}`;
  const arrived = performance.now();
  let stderr = '';
  let started = 0;
  const run = async (): Promise<Reply | { refused: string }> => {
    started = performance.now();
    // Stopping: a call still queued is handed back, and its caller runs it itself (it has not begun, and
    // its predecessor of the same attachment is done), rather than held until the agent is killed.
    if (state.closing()) return { refused: 'the agent is shutting down' };
    // A queued call whose caller gave up is not run: nobody would hear its result, and the runtime
    // follows a failed ADD with a DEL. A DEL still runs (it only removes, and may be repeated).
    if (state.gone() && env.CNI_COMMAND !== 'DEL') {
      const err = new CniError(ErrorCode.TryAgainLater, 'the caller went away before the call started; not run');
      opts.log(stamp('WARN', `${what}: ${err.message}`));
      return { status: 1, stdout: JSON.stringify(errorObject(err, sniffVersion(req.data.stdin))) };
    }
    return respond(opts.spec, req.data.stdin, {
      vars: env,
      startedAt: started,
      stderr: (line) => {
        stderr += line;
        opts.log(line);
      },
    });
  };
  // The calls of one attachment run in the order they came, as from one runtime: a DEL sent after its
  // caller gave up on a slow ADD (a process would have been killed) waits for that ADD instead of racing it.
  // Only then does a call wait for a free slot, so one waiting for its predecessor holds none. STATUS, the
  // runtime's readiness probe and one read, waits for neither: behind a storm of ADDs the node would
  // otherwise look not ready exactly when it is busiest.
  const reply =
    env.CNI_COMMAND === 'STATUS' ? await run() : await serially(`attachment:${env.CNI_CONTAINERID ?? ''}/${env.CNI_IFNAME ?? ''}`, () => state.limit(run));
  const queued = started - arrived;
  if ('refused' in reply) {
    opts.log(stamp('INFO', `${what} handed back after ${queued.toFixed(1)} ms in the queue: ${reply.refused}`));
    return reply;
  }
  opts.log(stamp('INFO', `${what} exit ${reply.status} in ${(performance.now() - started).toFixed(1)} ms${queued >= 1 ? ` (queued ${queued.toFixed(1)} ms)` : ''}`));
  return { ...reply, stderr };
}

/**
 * One connection: a request line, then the reply. The caller keeps its side open until it has the reply,
 * so its end before that (its deadline passed, it was killed) means it went away.
 */
function serve(opts: AgentOptions, conn: net.Socket, inFlight: Set<Promise<void>>, closing: () => boolean, limit: Limiter): void {
  const chunks: Buffer[] = [];
  let size = 0;
  let started = false;
  let gone = false;
  const reply = (r: AgentReply) => {
    // Half-open sockets are never closed for us: one whose caller is gone is closed here, or the agent
    // would wait for it forever when it stops.
    if (gone || conn.destroyed) conn.destroy();
    else conn.end(JSON.stringify(r) + '\n');
  };
  const start = (line: string) => {
    started = true;
    conn.removeAllListeners('data');
    const work = answer(opts, line, { gone: () => gone, closing, limit })
      .catch((e: unknown): AgentReply => ({ refused: `agent failure: ${errorMessage(e)}` }))
      .then(reply)
      .finally(() => inFlight.delete(work));
    inFlight.add(work);
  };
  conn.on('data', (d: Buffer) => {
    size += d.length;
    if (size > MAX_REQUEST_BYTES) {
      started = true;
      conn.removeAllListeners('data');
      reply({ refused: `request larger than ${MAX_REQUEST_BYTES} bytes` });
      return;
    }
    chunks.push(d);
    const nl = d.indexOf(0x0a);
    if (nl >= 0) start(Buffer.concat(chunks).toString('utf8', 0, size - d.length + nl));
  });
  conn.on('error', () => conn.destroy());
  conn.once('end', () => {
    // Ended before a whole line: the caller is gone, or sent something that is not a request.
    if (!started) {
      started = true;
      conn.destroy();
    } else gone = true;
  });
  conn.once('close', () => (gone = true));
}

export async function startAgent(opts: AgentOptions): Promise<RunningAgent> {
  // Loaded before the first call, so no call pays for compiling the plugin.
  await opts.spec.load();
  await import(/* webpackMode: "eager" */ '../cni/invoke');
  await claimSocketPath(opts.socket);
  const inFlight = new Set<Promise<void>>();
  let closing = false;
  const limit = limiter(opts.maxCalls ?? DEFAULT_MAX_CALLS);
  // Half-open, so that a caller's end is seen as it going away rather than ending the connection at once.
  const server = net.createServer({ allowHalfOpen: true }, (conn) => serve(opts, conn, inFlight, () => closing, limit));
  await listenPrivately(server, opts.socket);
  // After listen, errors (an accept failing with EMFILE) are logged; they must not end every call in flight.
  server.on('error', (e) => opts.log(stamp('ERROR', `socket ${opts.socket}: ${errorMessage(e)}`)));
  fs.chmodSync(opts.socket, 0o600);
  opts.log(stamp('INFO', `serving ${opts.spec.name} calls on ${opts.socket} (build ${opts.build})`));
  return {
    socket: opts.socket,
    close: async () => {
      // Keep accepting while the calls in flight finish, refusing new and still-queued ones (their callers
      // then run them themselves) rather than resetting connections already queued on the socket.
      closing = true;
      while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
      await new Promise<void>((resolve) => server.close(() => resolve()));
      fs.rmSync(opts.socket, { force: true });
    },
  };
}
