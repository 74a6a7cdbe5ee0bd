import * as z from 'zod/mini';
import en from 'zod/v4/locales/en.js';
import { CniError, type ErrorCodeValue } from './errors';

/*
 * zod/mini rather than zod's classic API: the same schemas and z.infer types, without the ~8 ms (on these
 * 2-core machines; ~25 ms under load) that evaluating the classic API costs every plugin process.
 * zod/mini carries no English messages until a locale is set, so it is set only when a parse has failed:
 * a call whose input is valid never pays for it.
 */
let english = false;

/** "path: message" for every issue, or "(root)" for the value itself. */
export function describeIssues(issues: readonly { path: readonly PropertyKey[]; message: string }[]): string {
  return issues.map((i) => `${i.path.length ? i.path.map(String).join('.') : '(root)'}: ${i.message}`).join('; ');
}

/** Parses `raw` with `schema`, or throws a CniError with `code` whose message is `what: <issues>`. */
export function parseWith<T extends z.ZodMiniType>(schema: T, raw: unknown, code: ErrorCodeValue, what: string): z.infer<T> {
  const r = schema.safeParse(raw);
  if (r.success) return r.data;
  let issues = r.error.issues;
  if (!english) {
    z.config(en());
    english = true;
    const again = schema.safeParse(raw);
    if (!again.success) issues = again.error.issues;
  }
  throw new CniError(code, `${what}: ${describeIssues(issues)}`);
}
