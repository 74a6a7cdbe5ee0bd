/** CNI error codes from the spec (SPEC.md "Error codes"), plus libcni's 999 for internal failures. */
export const ErrorCode = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnv: 4,
  IOFailure: 5,
  DecodeFailure: 6,
  InvalidConfig: 7,
  TryAgainLater: 11,
  NotAvailable: 50,
  NotAvailableDegraded: 51,
  /** Plugin-specific codes start at 100. */
  PoolExhausted: 110,
  AddressInUse: 111,
  AddressNotInPool: 112,
  BlockLimit: 113,
  DatastoreNotReady: 120,
  Netlink: 130,
  Internal: 999,
} as const;

export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * The one error type plugins raise. `msg` is what a runtime shows an operator, so it says what failed and
 * with which value; `details` is for the log and for the error object's optional field.
 */
export class CniError extends Error {
  readonly code: number;
  readonly details: string | undefined;

  constructor(code: number, msg: string, details?: string) {
    super(msg);
    this.name = 'CniError';
    this.code = code;
    this.details = details;
  }

  /** Wraps with context the way Go's fmt.Errorf("...: %w") does, keeping the code. */
  withContext(context: string): CniError {
    return new CniError(this.code, `${context}: ${this.message}`, this.details);
  }
}

export function isCniError(e: unknown): e is CniError {
  return e instanceof CniError;
}

export function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}

/** Turns anything thrown into a CniError; unknown failures become 999 with their message only (no stack). */
export function toCniError(e: unknown, context?: string): CniError {
  const err = isCniError(e) ? e : new CniError(ErrorCode.Internal, errorMessage(e));
  return context ? err.withContext(context) : err;
}

export interface ErrorObject {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

export function errorObject(e: CniError, cniVersion: string): ErrorObject {
  const o: ErrorObject = { cniVersion, code: e.code, msg: e.message };
  if (e.details) o.details = e.details;
  return o;
}

/** Errors already written to the plugin's log, so the skeleton does not log them twice. */
export const loggedErrors = new WeakSet<Error>();
