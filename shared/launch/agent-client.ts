/**
 * The launcher's half of the node agent protocol (shared/agent/protocol.ts). It loads node:net and nothing
 * else, and reads the agent's reply by hand rather than with zod: a call through the agent must stay a
 * small process.
 */
import type fsType from 'node:fs';
import type net from 'node:net';

export const AGENT_PROTOCOL = 1;

/**
 * The mount and PID namespaces a process runs in. The agent resolves paths (CNI_NETNS, certificates, log
 * files) in its own: a caller in other namespaces (a containerised runtime) must run its calls itself.
 */
export function namespacesOf(fs: typeof fsType, pid: string | number = 'self'): Record<string, string> {
  const out: Record<string, string> = {};
  for (const ns of ['mnt', 'pid']) {
    try {
      out[ns] = fs.readlinkSync(`/proc/${pid}/ns/${ns}`);
    } catch {
      out[ns] = 'unknown';
    }
  }
  return out;
}

export type AgentOutcome =
  | { kind: 'done'; status: number; stdout: string; stderr: string }
  /** Nothing was run: no agent listens, or it refused the call. The caller runs the call itself. */
  | { kind: 'unavailable'; why: string }
  /** The call went to the agent but no answer came back: it may be half done. */
  | { kind: 'lost'; why: string };

/** The config's agent_socket, when it is an absolute path; the JSON is parsed only if it mentions one. */
export function agentSocketOf(stdin: string): string | undefined {
  if (!stdin.includes('"agent_socket"')) return undefined;
  try {
    const v: unknown = (JSON.parse(stdin) as { agent_socket?: unknown }).agent_socket;
    return typeof v === 'string' && v.startsWith('/') ? v : undefined;
  } catch {
    return undefined;
  }
}

function readReply(text: string): AgentOutcome {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return { kind: 'lost', why: text === '' ? 'the agent closed the connection without answering' : 'the agent sent a malformed reply' };
  }
  const r = (typeof v === 'object' && v !== null ? v : {}) as Record<string, unknown>;
  if (typeof r.refused === 'string') return { kind: 'unavailable', why: `the agent refused the call: ${r.refused}` };
  if (typeof r.status === 'number' && Number.isInteger(r.status) && typeof r.stdout === 'string' && typeof r.stderr === 'string') {
    return { kind: 'done', status: r.status, stdout: r.stdout, stderr: r.stderr };
  }
  return { kind: 'lost', why: 'the agent sent a malformed reply' };
}

/** Sends one request and waits for its reply, at most `timeoutMs`. */
export function callAgent(socket: string, request: object, timeoutMs: number): Promise<AgentOutcome> {
  const { connect } = require('node:net') as typeof net;
  return new Promise((resolve) => {
    let sent = false;
    const chunks: Buffer[] = [];
    const conn = connect(socket);
    const finish = (o: AgentOutcome) => {
      clearTimeout(timer);
      conn.destroy();
      resolve(o);
    };
    const timer = setTimeout(() => finish({ kind: 'lost', why: `no answer within ${timeoutMs} ms` }), timeoutMs);
    // One line; the connection stays open until the reply, since the agent takes its end as this caller
    // going away (then a call still queued there is not run).
    conn.once('connect', () => {
      sent = true;
      conn.write(JSON.stringify(request) + '\n');
    });
    conn.on('data', (d: Buffer) => chunks.push(d));
    conn.once('error', (e) => finish(sent ? { kind: 'lost', why: e.message } : { kind: 'unavailable', why: e.message }));
    conn.once('end', () => finish(readReply(Buffer.concat(chunks).toString('utf8').trim())));
  });
}
