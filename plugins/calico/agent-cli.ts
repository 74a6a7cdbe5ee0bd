import { DEFAULT_AGENT_SOCKET, startAgent } from '../../shared/agent/server';
import type { PluginSpec } from '../../shared/cni/skel';
import { buildId } from '../../shared/launch/handover';
import { VERSION } from '../../shared/about';

const HELP = `usage: calico agent [--socket PATH]

Runs the node agent: CNI calls whose network config sets "agent_socket" to PATH are run here, in one
long-lived process, instead of in a plugin process of their own. A call runs in its own process whenever
the agent is not there (or is of another build), so stopping the agent never stops pod networking.
  --socket PATH   the unix socket to serve (default ${DEFAULT_AGENT_SOCKET}); created mode 0600
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
  const at = argv.indexOf('--socket');
  const socket = at >= 0 ? argv[at + 1] : DEFAULT_AGENT_SOCKET;
  if (!socket || !socket.startsWith('/')) {
    process.stderr.write('calico agent: --socket needs an absolute path\n');
    return 2;
  }
  const agent = await startAgent({ socket, spec, build: buildId() ?? `unbuilt-${VERSION}`, log: (line) => process.stderr.write(line) });
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await agent.close();
  return 0;
}
