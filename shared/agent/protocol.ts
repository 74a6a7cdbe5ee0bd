/**
 * The node agent's wire format: one JSON request and one JSON reply per connection on a unix socket, each
 * a single line, each side half-closing after it has written. The client half lives in the launcher
 * (shared/launch/agent-client.ts), which reads replies without zod so that a call through the agent loads
 * nothing but node:net.
 */
import * as z from 'zod/mini';
import { AGENT_PROTOCOL } from '../launch/agent-client';

export { AGENT_PROTOCOL };

/** Requests are a config and an environment; anything much larger is not a CNI call. */
export const MAX_REQUEST_BYTES = 4 * 1024 * 1024;

export const AgentRequestSchema = z.object({
  protocol: z.literal(AGENT_PROTOCOL),
  /** The caller's build id: an agent of another build refuses, and the caller runs the call itself. */
  build: z.string(),
  stdin: z.string(),
  env: z.record(z.string(), z.string()),
  /** The caller's mount and PID namespaces (agent-client namespacesOf). */
  namespaces: z.record(z.string(), z.string()),
});
export type AgentRequest = z.infer<typeof AgentRequestSchema>;

export const AgentReplySchema = z.union([
  z.object({ status: z.int(), stdout: z.string(), stderr: z.string() }),
  z.object({ refused: z.string() }),
]);
export type AgentReply = z.infer<typeof AgentReplySchema>;
