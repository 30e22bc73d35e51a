/**
 * One registry of every error Spool throws. Each has a stable string `code` that callers may
 * switch on, a `retriable` flag (trying the same call again may succeed) and an optional
 * `cause`. `docs/errors.md` lists every code; a test keeps the two in sync.
 */

export const ERROR_CODES = {
  /** A name (queue, exchange, log directory) is empty, too long, or has characters outside [A-Za-z0-9._-]. */
  SPOOL_ERR_INVALID_NAME: { retriable: false, exit: 2 },
  /** An argument has the wrong type or is out of range. */
  SPOOL_ERR_INVALID_ARGUMENT: { retriable: false, exit: 2 },
  /** A single record is larger than the configured maximum. */
  SPOOL_ERR_RECORD_TOO_LARGE: { retriable: false, exit: 1 },
  /** The records of one append do not fit in the maximum batch size. */
  SPOOL_ERR_BATCH_TOO_LARGE: { retriable: false, exit: 1 },
  /** Bytes on disk fail their checksum or structural checks. */
  SPOOL_ERR_CORRUPT: { retriable: false, exit: 1 },
  /** The directory exists but is not a Spool log. */
  SPOOL_ERR_NOT_A_LOG: { retriable: false, exit: 1 },
  /** The log was written by a format version this build does not know. */
  SPOOL_ERR_UNKNOWN_VERSION: { retriable: false, exit: 1 },
  /** The disk is full (ENOSPC); the append was rolled back and may be retried once space is freed. */
  SPOOL_ERR_DISK_FULL: { retriable: true, exit: 1 },
  /** A write or fsync failed (EIO and friends); the append was rolled back. */
  SPOOL_ERR_IO: { retriable: true, exit: 1 },
  /** A write failed and could not be rolled back; the log refuses writes until reopened, and the failed appends' outcome is unknown. */
  SPOOL_ERR_READ_ONLY: { retriable: false, exit: 1 },
  /** The log or broker was closed. */
  SPOOL_ERR_CLOSED: { retriable: false, exit: 1 },
  /** An offset lies outside the log's retained range. */
  SPOOL_ERR_OFFSET_OUT_OF_RANGE: { retriable: false, exit: 1 },
  /** A queue, exchange, binding or delivery that does not exist. */
  SPOOL_ERR_NOT_FOUND: { retriable: false, exit: 1 },
  /** A redeclaration whose options conflict with what exists (RabbitMQ's PRECONDITION_FAILED). */
  SPOOL_ERR_PRECONDITION: { retriable: false, exit: 1 },
  /** A message body larger than the broker's limit. */
  SPOOL_ERR_MESSAGE_TOO_LARGE: { retriable: false, exit: 1 },
  /** A queue at maxLength/maxBytes with overflow 'reject-publish' refused the message. */
  SPOOL_ERR_QUEUE_FULL: { retriable: true, exit: 1 },
  /** Another process holds the data directory. */
  SPOOL_ERR_LOCKED: { retriable: true, exit: 1 },
  /** The idempotency store holds `leasesMax` live leases; a claim must wait for some to complete, be released or expire. */
  SPOOL_ERR_TOO_MANY_LEASES: { retriable: true, exit: 1 },
  /** Another delivery holds this message's idempotency lease and is still handling it; the message comes back later. */
  SPOOL_ERR_IN_PROGRESS: { retriable: true, exit: 1 },
  /** A peer sent a malformed, oversized or unexpected frame (docs/protocol.md); the connection is closed. */
  SPOOL_ERR_PROTOCOL: { retriable: false, exit: 1 },
  /** A connection did not present the server's token. */
  SPOOL_ERR_UNAUTHORIZED: { retriable: false, exit: 1 },
  /** A remote call passed its deadline; a publish may or may not have landed (retry with the same id). */
  SPOOL_ERR_TIMEOUT: { retriable: true, exit: 1 },
  /** The connection to the server was lost or could not be made; a request that is not safe to resend has an unknown outcome. */
  SPOOL_ERR_DISCONNECTED: { retriable: true, exit: 1 },
} as const satisfies Record<string, { retriable: boolean; exit: number }>;

export type SpoolErrorCode = keyof typeof ERROR_CODES;

export class SpoolError extends Error {
  readonly code: SpoolErrorCode;
  readonly retriable: boolean;

  constructor(code: SpoolErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SpoolError';
    this.code = code;
    this.retriable = ERROR_CODES[code].retriable;
  }
}

/** Raised when bytes on disk cannot be trusted. Names the file and byte position so an operator can look. */
export class CorruptError extends SpoolError {
  readonly file: string;
  readonly position: number;

  constructor(file: string, position: number, reason: string) {
    super('SPOOL_ERR_CORRUPT', `corrupt data in ${file} at byte ${position}: ${reason}`);
    this.name = 'CorruptError';
    this.file = file;
    this.position = position;
  }
}

export function isSpoolError(err: unknown, code?: SpoolErrorCode): err is SpoolError {
  return err instanceof SpoolError && (code === undefined || err.code === code);
}

/** Maps an I/O failure from the operating system to a typed error, keeping the original as `cause`. */
export function ioError(err: unknown, what: string): SpoolError {
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  if (errno === 'ENOSPC' || errno === 'EDQUOT') {
    return new SpoolError('SPOOL_ERR_DISK_FULL', `disk full while ${what}`, { cause: err });
  }
  return new SpoolError('SPOOL_ERR_IO', `I/O error (${errno ?? 'unknown'}) while ${what}`, { cause: err });
}
