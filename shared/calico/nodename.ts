import fs from 'node:fs';
import os from 'node:os';
import { CniError, ErrorCode } from '../cni/errors';
import type { NetConf } from '../cni/config';

export const DEFAULT_NODENAME_FILE = '/var/lib/calico/nodename';

/**
 * Upstream's order: `nodename` in the conf, then the nodename file (written by calico/node), then the
 * deprecated `hostname`, then the OS hostname lower-cased. The file's content is trimmed here (upstream
 * reads it raw; a trailing newline from `echo` would otherwise become part of every key).
 */
export function determineNodename(conf: Pick<NetConf, 'nodename' | 'nodename_file' | 'hostname'>): string {
  if (conf.nodename) return conf.nodename;
  try {
    const fromFile = fs.readFileSync(conf.nodename_file ?? DEFAULT_NODENAME_FILE, 'utf8').trim();
    if (fromFile) return fromFile;
  } catch {
    // a missing file is skipped, as upstream
  }
  if (conf.hostname) return conf.hostname;
  return os.hostname().trim().toLowerCase();
}

/** A node name becomes part of etcd keys; refuse what would break them. */
export function validateNodename(name: string): string {
  if (!/^[a-zA-Z0-9]([a-zA-Z0-9._-]{0,251}[a-zA-Z0-9])?$/.test(name)) {
    throw new CniError(ErrorCode.InvalidConfig, `invalid node name ${JSON.stringify(name)}: must be a DNS-style name (letters, digits, '.', '-', '_')`);
  }
  return name;
}
