import fs from 'node:fs';
import path from 'node:path';

export const LEVELS = { debug: 10, info: 20, warn: 30, error: 40 } as const;
export type Level = keyof typeof LEVELS;

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** Milliseconds since the process started; used for per-phase timings at debug level. */
  elapsed(): number;
  /** Closes the log file, if one was opened (a long-lived node agent creates a logger per call). */
  close(): void;
}

export interface LogOptions {
  component: string;
  level?: string | undefined;
  filePath?: string | undefined;
  /** Where the stream half goes; tests pass a buffer. Defaults to stderr. */
  stderr?: (line: string) => void;
  /** performance.now() when the call started; elapsed() counts from there (0: process start). */
  startedAt?: number;
}

/** Calico reads log_level case-insensitively; anything unknown is info. */
export function parseLevel(raw: string | undefined): Level {
  const l = (raw ?? '').toLowerCase();
  if (l === 'warning') return 'warn';
  return l in LEVELS ? (l as Level) : 'info';
}

function formatFields(fields: Record<string, unknown> | undefined): string {
  if (!fields) return '';
  return Object.entries(fields)
    .map(([k, v]) => ` ${k}=${typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v) ?? String(v)}`)
    .join('');
}

/** Log files hold container ids and addresses: owner read-write, group read, never world-writable. */
function openLogFile(p: string): number | undefined {
  try {
    fs.mkdirSync(path.dirname(p), { recursive: true, mode: 0o755 });
    const fd = fs.openSync(p, 'a', 0o640);
    return fd;
  } catch {
    return undefined;
  }
}

export function createLogger(opts: LogOptions): Logger {
  const threshold = LEVELS[parseLevel(opts.level)];
  const toStderr = opts.stderr ?? ((line: string) => process.stderr.write(line));
  let fd: number | undefined;
  let fileFailed = false;
  const write = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (LEVELS[level] < threshold) return;
    const line = `${new Date().toISOString()} [${level.toUpperCase()}][${process.pid}] ${opts.component}: ${msg}${formatFields(fields)}\n`;
    toStderr(line);
    if (opts.filePath && !fileFailed) {
      fd ??= openLogFile(opts.filePath);
      if (fd === undefined) {
        fileFailed = true;
        toStderr(`${new Date().toISOString()} [WARN][${process.pid}] ${opts.component}: cannot open log file ${JSON.stringify(opts.filePath)}\n`);
        return;
      }
      fs.writeSync(fd, line);
    }
  };
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
    elapsed: () => Math.round((performance.now() - (opts.startedAt ?? 0)) * 10) / 10,
    close: () => {
      if (fd !== undefined) fs.closeSync(fd);
      fd = undefined;
    },
  };
}
