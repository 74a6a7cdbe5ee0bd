import { CniError, ErrorCode, loggedErrors, toCniError } from './errors';
import { readCniEnv, type Env } from './env';
import { parseNetConf } from './config';
import { createLogger } from './log';
import { formatResult } from './result';
import { effectiveVersion, requireSupported, requireVerbAllowed } from './version';
import type { Context, PluginSpec } from './skel';

/** Where one call comes from: its environment, where its log lines go, and when it started. */
export interface CallIo {
  vars: Env;
  stderr?: (line: string) => void;
  startedAt?: number;
}

/** Validates env, config and version for one CNI call, runs the verb, and returns what goes to stdout. */
export async function handleInvocation(spec: PluginSpec, stdin: string, io: CallIo): Promise<string | undefined> {
  const env = readCniEnv(io.vars);
  if (stdin.trim() === '') throw new CniError(ErrorCode.DecodeFailure, 'no network configuration on stdin');
  const conf = parseNetConf(stdin);
  const version = requireSupported(effectiveVersion(conf.cniVersion));
  if (env.command === 'CHECK' || env.command === 'STATUS' || env.command === 'GC') requireVerbAllowed(env.command, version);
  const log = createLogger({
    component: spec.name,
    level: conf.log_level,
    filePath: conf.log_file_path,
    ...(io.stderr ? { stderr: io.stderr } : {}),
    ...(io.startedAt !== undefined ? { startedAt: io.startedAt } : {}),
  });
  const ctx: Context = { env, conf, stdin, version, log };
  const parsedAt = log.elapsed();
  const impl = await spec.load();
  log.debug(`${env.command} start`, { containerID: env.containerId, netns: env.netns, ifname: env.ifname, configParsedAt: parsedAt, t: log.elapsed() });
  try {
    switch (env.command) {
      case 'ADD': {
        const result = await impl.add(ctx);
        log.debug('ADD done', { t: log.elapsed() });
        return JSON.stringify(formatResult(result, version), null, 4) + '\n';
      }
      case 'DEL':
        await impl.del(ctx);
        break;
      case 'CHECK':
        await impl.check(ctx);
        break;
      case 'STATUS':
        await impl.status(ctx);
        break;
      case 'GC':
        await impl.gc(ctx);
        break;
      case 'VERSION':
        break;
    }
    log.debug(`${env.command} done`, { t: log.elapsed() });
    return undefined;
  } catch (e) {
    const err = toCniError(e);
    log.error(`${env.command} failed: ${err.message}`, { code: err.code, containerID: env.containerId, details: err.details });
    loggedErrors.add(err);
    throw err;
  } finally {
    log.close();
  }
}
