import { DEFAULT_AGENT_SOCKET, DEFAULT_MAX_CALLS, startAgent } from '../../shared/agent/server';
import type { PluginSpec } from '../../shared/cni/skel';
import { buildId } from '../../shared/launch/handover';
import { VERSION } from '../../shared/about';
import { closeSharedConnections, keepConnectionsAcrossCalls } from '../../shared/etcd/http-store';
import { closeIpSession, keepIpSession } from '../../shared/netlink/ip-session';

const HELP = `usage: calico agent [--socket PATH] [--max-calls N]

Runs the node agent: CNI calls whose network config sets "agent_socket" to PATH are run here, in one
long-lived process, instead of in a plugin process of their own. A call runs in its own process whenever
the agent is not there (or is of another build), so stopping the agent never stops pod networking.
  --socket PATH   the unix socket to serve (default ${DEFAULT_AGENT_SOCKET}); created mode 0600
  --max-calls N   calls run at once at most (default ${DEFAULT_MAX_CALLS}); the others wait their turn
Start it as calico-agent.service does: node --lite-mode --max-semi-space-size=1 /opt/cni/bin/calico agent
(about 10 MB less memory at its peak, and less CPU: its calls are too short to gain from optimised code).
The self-contained (SEA) build takes no node flags: run it as /opt/cni/bin/calico agent.
`;

/** `calico agent`: serves until SIGTERM or SIGINT, then lets the calls in flight finish. */
export async function main(argv: string[], spec: PluginSpec): Promise<number> {
  if (argv[0] !== 'agent') {
    process.stderr.write(`calico: unknown command ${JSON.stringify(argv[0])}\n${HELP}`);
    return 2;
  }
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(HELP);
    return 0;
  }
  const socket = argv.includes('--socket') ? option(argv, '--socket') : DEFAULT_AGENT_SOCKET;
  if (!socket || !socket.startsWith('/')) {
    process.stderr.write('calico agent: --socket needs an absolute path\n');
    return 2;
  }
  const maxCalls = argv.includes('--max-calls') ? (option(argv, '--max-calls') ?? '') : undefined;
  const limit = maxCalls === undefined ? DEFAULT_MAX_CALLS : Number(maxCalls);
  if (!Number.isInteger(limit) || limit < 1) {
    process.stderr.write(`calico agent: --max-calls needs a positive integer, not ${JSON.stringify(maxCalls ?? '')}\n`);
    return 2;
  }
  // Listened for before the agent serves: a SIGTERM just after "serving" must stop it cleanly (socket
  // removed), not kill it by the signal's default action.
  const stopRequested = new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  // One process for every call: its etcd connections (and TLS sessions) outlive a call.
  keepConnectionsAcrossCalls();
  // And one `ip` for its host-side changes: a fork and exec less per ADD.
  keepIpSession();
  const agent = await startAgent({ socket, spec, build: buildId() ?? `unbuilt-${VERSION}`, maxCalls: limit, log: (line) => process.stderr.write(line) });
  await stopRequested;
  await agent.close();
  closeSharedConnections();
  await closeIpSession();
  return 0;
}

/** The value after a flag, or undefined when the flag or its value is missing. */
function option(argv: readonly string[], flag: string): string | undefined {
  const at = argv.indexOf(flag);
  return at >= 0 ? argv[at + 1] : undefined;
}
