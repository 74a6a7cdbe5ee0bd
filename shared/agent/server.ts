/**
 * The node agent: a long-lived process that runs CNI calls for the plugin binaries of its host, so a call
 * pays for a small client (the launcher) instead of a whole plugin start. It runs each call through the
 * same `respond` as a plugin process, with the caller's environment and stdin, and answers with what that
 * process would have printed. Calls run concurrently; the allocator's guarded transactions make that as
 * safe as concurrent processes.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { respond, type PluginSpec } from '../cni/skel';
import { errorMessage } from '../cni/errors';
import { serially } from '../sync/serial';
import { AgentRequestSchema, MAX_REQUEST_BYTES, type AgentReply } from './protocol';

export const DEFAULT_AGENT_SOCKET = '/run/calico-ts/agent.sock';

export interface AgentOptions {
  socket: string;
  spec: PluginSpec;
  /** This binary's build id; a caller of another build is refused and runs the call itself. */
  build: string;
  /** The agent's own log (a line per call), normally its stderr. */
  log: (line: string) => void;
}

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

async function answer(opts: AgentOptions, raw: string): Promise<AgentReply> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (e) {
    return { refused: `malformed request: ${errorMessage(e)}` };
  }
  const req = AgentRequestSchema.safeParse(parsed);
  if (!req.success) return { refused: 'malformed request' };
  if (req.data.build !== opts.build) return { refused: `this agent runs build ${opts.build}, the caller is build ${req.data.build}` };
  const env = req.data.env;
  let stderr = '';
  let started = 0;
  // The calls of one attachment run in the order they came, as from one runtime: a DEL sent after its
  // caller gave up on a slow ADD (a process would have been killed) waits for that ADD instead of racing it.
  const reply = await serially(`attachment:${env.CNI_CONTAINERID ?? ''}/${env.CNI_IFNAME ?? ''}`, () => {
    started = performance.now();
    return respond(opts.spec, req.data.stdin, {
      vars: env,
      startedAt: started,
      stderr: (line) => {
        stderr += line;
        opts.log(line);
      },
    });
  });
  opts.log(stamp('INFO', `${env.CNI_COMMAND ?? '?'} ${env.CNI_CONTAINERID ?? ''} exit ${reply.status} in ${(performance.now() - started).toFixed(1)} ms`));
  return { ...reply, stderr };
}

function serve(opts: AgentOptions, conn: net.Socket, inFlight: Set<Promise<void>>): void {
  const chunks: Buffer[] = [];
  let size = 0;
  conn.on('data', (d: Buffer) => {
    size += d.length;
    if (size > MAX_REQUEST_BYTES) {
      conn.end(JSON.stringify({ refused: `request larger than ${MAX_REQUEST_BYTES} bytes` }) + '\n');
      conn.removeAllListeners('data');
      return;
    }
    chunks.push(d);
  });
  conn.on('error', () => conn.destroy());
  conn.once('end', () => {
    if (size > MAX_REQUEST_BYTES) return;
    const work = answer(opts, Buffer.concat(chunks).toString('utf8'))
      .catch((e: unknown): AgentReply => ({ refused: `agent failure: ${errorMessage(e)}` }))
      .then((reply) => {
        if (!conn.destroyed) conn.end(JSON.stringify(reply) + '\n');
      })
      .finally(() => inFlight.delete(work));
    inFlight.add(work);
  });
}

export async function startAgent(opts: AgentOptions): Promise<RunningAgent> {
  // Loaded before the first call, so no call pays for compiling the plugin.
  await opts.spec.load();
  await import(/* webpackMode: "eager" */ '../cni/invoke');
  await claimSocketPath(opts.socket);
  const inFlight = new Set<Promise<void>>();
  // Half-open: the client ends its side once the request is written, and the reply still has to go back.
  const server = net.createServer({ allowHalfOpen: true }, (conn) => serve(opts, conn, inFlight));
  await listenPrivately(server, opts.socket);
  fs.chmodSync(opts.socket, 0o600);
  opts.log(stamp('INFO', `serving ${opts.spec.name} calls on ${opts.socket} (build ${opts.build})`));
  return {
    socket: opts.socket,
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await Promise.allSettled([...inFlight]);
      fs.rmSync(opts.socket, { force: true });
    },
  };
}
