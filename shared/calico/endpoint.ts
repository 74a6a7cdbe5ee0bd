import { createHash } from 'node:crypto';
import { CniError, ErrorCode } from '../cni/errors';
import type { CniEnv, Env } from '../cni/env';
import { keys } from './keys';
import { newMetadata, type Metadata, type WorkloadEndpoint } from './model';

/** Who the workload is, derived as upstream's GetIdentifiers does. */
export interface WorkloadIdentity {
  orchestrator: 'k8s' | 'cni';
  namespace: string;
  pod: string | undefined;
  containerId: string;
  node: string;
  endpoint: string;
  /** The WorkloadEndpoint resource name. */
  name: string;
  /** The host end of the veth pair. */
  hostIfname: string;
  /**
   * The name ADD takes when hostIfname belongs to another container: cni-orchestrated ids that share their
   * first 11 characters (cnitool's "cnitool-<hex>" keep only 3 distinct ones) would otherwise collide.
   */
  hostIfnameFallback: string | undefined;
}

/** Each segment's "-" is doubled, segments are joined by "-" (libcalico-go names/workloadendpoint.go). */
export function escapeSegment(s: string, what: string): string {
  if (s.startsWith('-') || s.endsWith('-')) {
    throw new CniError(ErrorCode.InvalidConfig, `cannot name the workload endpoint: ${what} ${JSON.stringify(s)} starts or ends with "-"`);
  }
  return s.replace(/-/g, '--');
}

export function workloadEndpointName(id: Pick<WorkloadIdentity, 'orchestrator' | 'node' | 'pod' | 'containerId' | 'endpoint'>): string {
  const workload = id.orchestrator === 'k8s' ? (id.pod ?? '') : id.containerId;
  return [escapeSegment(id.node, 'node'), id.orchestrator, escapeSegment(workload, 'workload'), escapeSegment(id.endpoint, 'endpoint')].join('-');
}

/** Felix's first interface prefix, as upstream names host veths. */
function vethPrefix(env: Env): string {
  return (env.FELIX_INTERFACEPREFIX ?? '').split(',')[0]?.trim() || 'cali';
}

/** cali + 11 characters: the container id's, or for Kubernetes the SHA-1 of "<namespace>.<pod>" (upstream). */
export function hostVethName(orchestrator: 'k8s' | 'cni', containerId: string, namespace: string, pod: string | undefined, env: Env = process.env): string {
  const prefix = vethPrefix(env);
  if (orchestrator === 'k8s') return prefix + createHash('sha1').update(`${namespace}.${pod ?? ''}`).digest('hex').slice(0, 11);
  return prefix + containerId.slice(0, 11);
}

/** cali + 11 hex characters of the SHA-1 of the container id: unique where the id's first 11 are not. */
export function fallbackVethName(containerId: string, env: Env = process.env): string {
  return vethPrefix(env) + createHash('sha1').update(containerId).digest('hex').slice(0, 11);
}

export function identify(env: CniEnv, node: string): WorkloadIdentity {
  const k8s = Boolean(env.args.k8sPodNamespace && env.args.k8sPodName);
  const orchestrator = k8s ? 'k8s' : 'cni';
  const namespace = k8s ? (env.args.k8sPodNamespace as string) : (env.args.pairs.get('CNI_TEST_NAMESPACE') ?? 'default');
  const pod = k8s ? env.args.k8sPodName : undefined;
  const base = { orchestrator, node, pod, containerId: env.containerId, endpoint: env.ifname } as const;
  return {
    ...base,
    namespace,
    name: workloadEndpointName(base),
    hostIfname: hostVethName(orchestrator, env.containerId, namespace, pod, env.vars),
    // Kubernetes names the veth after the pod: another owner is an earlier sandbox of it and is replaced.
    hostIfnameFallback: k8s ? undefined : fallbackVethName(env.containerId, env.vars),
  };
}

export function workloadEndpointKey(id: Pick<WorkloadIdentity, 'namespace' | 'name'>): string {
  return keys.workloadEndpoint(id.namespace, id.name);
}

export interface EndpointSpecInput {
  profiles: string[];
  ipNetworks: string[];
  interfaceName: string;
  mac: string;
}

/** The v3 WorkloadEndpoint for a workload, in libcalico-go's spec field order. */
export function buildWorkloadEndpoint(id: WorkloadIdentity, spec: EndpointSpecInput, previous?: Metadata): WorkloadEndpoint {
  const labels = { 'projectcalico.org/namespace': id.namespace, 'projectcalico.org/orchestrator': id.orchestrator };
  const metadata: Metadata = previous
    ? { ...previous, labels: { ...(previous.labels ?? {}), ...labels } }
    : newMetadata(id.name, { namespace: id.namespace, labels });
  delete metadata.resourceVersion;
  return {
    kind: 'WorkloadEndpoint',
    apiVersion: 'projectcalico.org/v3',
    metadata,
    spec: {
      orchestrator: id.orchestrator,
      node: id.node,
      containerID: id.containerId,
      ...(id.pod ? { pod: id.pod } : {}),
      endpoint: id.endpoint,
      ipNetworks: spec.ipNetworks,
      profiles: spec.profiles,
      interfaceName: spec.interfaceName,
      mac: spec.mac,
    },
  };
}

/** The per-network profile upstream creates when `policy.type` is empty (cni-plugin §1.10). */
export function profileFor(network: string, orchestrator: 'k8s' | 'cni'): string {
  const ingress = orchestrator === 'k8s' ? [{ action: 'Allow' }] : [{ action: 'Allow', source: { selector: `has(${network})` } }];
  return JSON.stringify({
    kind: 'Profile',
    apiVersion: 'projectcalico.org/v3',
    metadata: newMetadata(network),
    spec: { ingress, egress: [{ action: 'Allow' }], labelsToApply: { [network]: '' } },
  });
}

/** ClusterInformation `default`, created when missing: there is no calico/node here to create it. */
export function clusterInformation(version: string): string {
  return JSON.stringify({
    kind: 'ClusterInformation',
    apiVersion: 'projectcalico.org/v3',
    metadata: newMetadata('default'),
    spec: {
      clusterGUID: createHash('sha256').update(`${Date.now()}-${Math.random()}`).digest('hex').slice(0, 32),
      clusterType: 'calico-ts',
      calicoVersion: `calico-ts-${version}`,
      datastoreReady: true,
    },
  });
}
