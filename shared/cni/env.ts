import path from 'node:path';
import { CniError, ErrorCode } from './errors';

export const VERBS = ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION'] as const;
export type Verb = (typeof VERBS)[number];

/** The CNI_* parameters of one invocation, validated for its verb. */
export interface CniEnv {
  command: Verb;
  containerId: string;
  /** Empty when the runtime sent none (DEL from containerd after the task exited). */
  netns: string;
  ifname: string;
  args: CniArgs;
  /** Directories to search for delegated plugins, in order. */
  path: string[];
  /**
   * The whole environment the call came with: a delegated plugin inherits it, and ETCD_* and
   * FELIX_INTERFACEPREFIX are read from it (in the node agent it is the calling process's, not the agent's).
   */
  vars: Env;
}

export interface CniArgs {
  /** All pairs as given, in order. */
  pairs: ReadonlyMap<string, string>;
  ignoreUnknown: boolean;
  k8sPodNamespace?: string;
  k8sPodName?: string;
  k8sPodInfraContainerId?: string;
  /** IP=<addr>[,<addr>] asks IPAM for exact addresses. */
  ip?: string;
}

export type Env = Readonly<Record<string, string | undefined>>;

/** Which variables each verb needs (spec 1.1.0, with libcni skel's stricter CNI_PATH rule). */
const REQUIRED: Record<Verb, readonly string[]> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH'],
  GC: ['CNI_PATH'],
  STATUS: ['CNI_PATH'],
  VERSION: [],
};

const CONTAINER_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const MAX_IFNAME = 15;

export function parseCommand(raw: string | undefined): Verb {
  if (raw === undefined || raw === '') {
    throw new CniError(ErrorCode.InvalidEnv, 'required env variables [CNI_COMMAND] missing');
  }
  if (!(VERBS as readonly string[]).includes(raw)) {
    throw new CniError(ErrorCode.InvalidEnv, `unknown CNI_COMMAND: ${JSON.stringify(raw)} (expected one of ${VERBS.join(', ')})`);
  }
  return raw as Verb;
}

export function validateContainerId(id: string): void {
  if (!CONTAINER_ID.test(id)) {
    throw new CniError(
      ErrorCode.InvalidEnv,
      `invalid CNI_CONTAINERID ${JSON.stringify(id)}: must start with a letter or digit and contain only letters, digits, '_', '.' and '-'`,
    );
  }
}

export function validateIfname(name: string): void {
  const bad =
    name.length === 0 || name.length > MAX_IFNAME || name === '.' || name === '..' || /[/:\s]/.test(name) || /[^\x21-\x7e]/.test(name);
  if (bad) {
    throw new CniError(
      ErrorCode.InvalidEnv,
      `invalid CNI_IFNAME ${JSON.stringify(name)}: must be 1-${MAX_IFNAME} printable characters without '/', ':' or whitespace`,
    );
  }
}

/** A netns path is absolute and already normal: no "..", no doubled slashes, no NUL. */
export function validateNetnsPath(p: string): void {
  if (!path.isAbsolute(p) || path.normalize(p) !== p || p.includes('\0') || p.split('/').includes('..')) {
    throw new CniError(ErrorCode.InvalidEnv, `invalid CNI_NETNS ${JSON.stringify(p)}: must be an absolute, normalized path`);
  }
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

/**
 * The namespace and pod name become parts of etcd keys (the endpoint's namespace and name, the legacy
 * handle), so only what Kubernetes itself allows is taken: a namespace is a DNS label, a pod name a DNS
 * subdomain. Anything else ("a/b", "../x", "$(reboot)") would reshape the key layout.
 */
export function validateWorkloadArgs(args: CniArgs): void {
  const check = (key: string, value: string | undefined, re: RegExp, what: string) => {
    if (value !== undefined && !re.test(value)) {
      throw new CniError(ErrorCode.InvalidEnv, `invalid ${key} ${JSON.stringify(value)} in CNI_ARGS: must be ${what}`);
    }
  };
  const label = 'a DNS label (lower-case letters, digits and "-", at most 63)';
  // Only the Kubernetes path (namespace and pod both given) puts the pod name into keys. podman sends
  // K8S_POD_NAME alone, with its container name ("hopeful_darwin"), which must keep working.
  if (args.k8sPodNamespace && args.k8sPodName) {
    check('K8S_POD_NAMESPACE', args.k8sPodNamespace, DNS_LABEL, label);
    check('K8S_POD_NAME', args.k8sPodName, DNS_SUBDOMAIN, 'a DNS subdomain (lower-case letters, digits, "-" and ".", at most 253)');
  }
  check('CNI_TEST_NAMESPACE', args.pairs.get('CNI_TEST_NAMESPACE'), DNS_LABEL, label);
}

/** CNI_ARGS is `K=V;K=V` (libcni LoadArgs); IgnoreUnknown=1|true lets keys we do not know pass. */
export function parseCniArgs(raw: string | undefined): CniArgs {
  const pairs = new Map<string, string>();
  if (raw) {
    for (const item of raw.split(';')) {
      if (item === '') continue;
      const eq = item.indexOf('=');
      if (eq <= 0) throw new CniError(ErrorCode.InvalidEnv, `invalid CNI_ARGS pair ${JSON.stringify(item)}: expected KEY=VALUE`);
      pairs.set(item.slice(0, eq), item.slice(eq + 1));
    }
  }
  const ignore = (pairs.get('IgnoreUnknown') ?? '').toLowerCase();
  const args: CniArgs = { pairs, ignoreUnknown: ignore === '1' || ignore === 'true' };
  const ns = pairs.get('K8S_POD_NAMESPACE');
  const pod = pairs.get('K8S_POD_NAME');
  const infra = pairs.get('K8S_POD_INFRA_CONTAINER_ID');
  const ip = pairs.get('IP');
  if (ns) args.k8sPodNamespace = ns;
  if (pod) args.k8sPodName = pod;
  if (infra) args.k8sPodInfraContainerId = infra;
  if (ip) args.ip = ip;
  return args;
}

export function readCniEnv(env: Env): CniEnv {
  const command = parseCommand(env.CNI_COMMAND);
  const missing = REQUIRED[command].filter((k) => !env[k]);
  if (missing.length > 0) {
    throw new CniError(ErrorCode.InvalidEnv, `required env variables [${missing.join(',')}] missing for ${command}`);
  }
  const containerId = env.CNI_CONTAINERID ?? '';
  const ifname = env.CNI_IFNAME ?? '';
  const netns = env.CNI_NETNS ?? '';
  // Only the attachment verbs use these; STATUS and GC may carry placeholders we must not judge.
  if (command === 'ADD' || command === 'CHECK' || command === 'DEL') {
    validateContainerId(containerId);
    validateIfname(ifname);
    if (netns !== '') validateNetnsPath(netns);
  }
  const args = parseCniArgs(env.CNI_ARGS);
  // Only where an endpoint or handle is created; DEL stays lenient so whatever exists can be removed.
  if (command === 'ADD' || command === 'CHECK') validateWorkloadArgs(args);
  return {
    command,
    containerId,
    netns,
    ifname,
    args,
    path: (env.CNI_PATH ?? '').split(':').filter((d) => d !== ''),
    vars: env,
  };
}
