/**
 * What the launcher hands to the plugin it starts, through globals (the plugin is compiled separately, so
 * there is no module to share): the stdin it already read, and the binary's build id.
 */
const STDIN = Symbol.for('calico-ts.stdin');
const BUILD = Symbol.for('calico-ts.build');

type WithHandover = typeof globalThis & { [STDIN]?: string; [BUILD]?: string };
const g = globalThis as WithHandover;

export function handStdin(text: string): void {
  g[STDIN] = text;
}

/** What the launcher read, once; undefined when it read nothing. */
export function takeHandedStdin(): string | undefined {
  const text = g[STDIN];
  delete g[STDIN];
  return text;
}

export function handBuildId(id: string): void {
  g[BUILD] = id;
}

/** The build id of the binary this code runs from; undefined outside a built binary (tests, tsx). */
export function buildId(): string | undefined {
  return g[BUILD];
}
