/** Assertions on how a plugin run failed: the CNI error object on stdout, the exit status, no stack traces. */
import { expect } from 'vitest';
import type { PluginRun } from './plugin';

export interface CniErrorObject {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

/** A line of a JavaScript stack trace ("    at foo (file.js:1:2)"). */
export const STACK_LINE = /^\s+at /m;

export function isCniErrorObject(v: unknown): v is CniErrorObject {
  return (
    typeof v === 'object' &&
    v !== null &&
    !Array.isArray(v) &&
    'cniVersion' in v &&
    typeof v.cniVersion === 'string' &&
    'code' in v &&
    typeof v.code === 'number' &&
    'msg' in v &&
    typeof v.msg === 'string'
  );
}

/** Why a run is not a clean CNI failure with `code` (undefined when it is one). */
export function cniErrorProblem(r: PluginRun, code: number, msg?: RegExp): string | undefined {
  if (r.status === 0) return `exit status 0, expected a failure with code ${code}`;
  if (!isCniErrorObject(r.json)) return `stdout is not a CNI error object: ${r.stdout.slice(0, 500)}`;
  if (r.json.code !== code) return `code ${r.json.code}, expected ${code}: ${r.json.msg}`;
  if (r.json.msg.trim() === '') return 'empty msg';
  if (msg && !msg.test(r.json.msg)) return `msg ${JSON.stringify(r.json.msg)} does not match ${String(msg)}`;
  if (STACK_LINE.test(r.stdout)) return `stack trace on stdout: ${r.stdout.slice(0, 500)}`;
  if (STACK_LINE.test(r.stderr)) return `stack trace on stderr: ${r.stderr.slice(0, 1000)}`;
  return undefined;
}

/** Fails the test unless `r` is a clean CNI failure with `code` (and a msg matching `msg`); returns the object. */
export function expectCniError(r: PluginRun, code: number, msg?: RegExp): CniErrorObject {
  const problem = cniErrorProblem(r, code, msg);
  expect(problem, `${problem ?? ''}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBeUndefined();
  return r.json as CniErrorObject;
}
