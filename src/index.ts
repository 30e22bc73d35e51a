/**
 * spoolmq: a durable message broker for Node.js on append-only, checksummed log files.
 * This file is the public API: an explicit export list.
 */
export { Log, systemClock, NodeStorage, nodeStorage } from './log/index.js';
export type {
  AppendResult,
  BadRange,
  Clock,
  LogOptions,
  LogRecord,
  LogStats,
  OpenMode,
  ReadOptions,
  RecordInput,
  RecoveryReport,
  Storage,
  StorageFile,
  VerifyReport,
} from './log/index.js';
export { SpoolError, CorruptError, ERROR_CODES, isSpoolError } from './errors.js';
export type { SpoolErrorCode } from './errors.js';
