/** The storage layer's public surface. Nothing outside src/log touches segment files. */
export { Log, SEGMENT_BYTES, systemClock } from './log.js';
export type { AppendResult, Clock, LogOptions, LogStats, ReadOptions } from './log.js';
export type { LogRecord, RecordInput } from './record-batch.js';
export { encodedRecordBytes, recordBytesBound } from './record-batch.js';
export type { RecoveryReport } from './recovery.js';
export type { VerifyReport, BadRange } from './verify.js';
export { NodeStorage, nodeStorage } from './storage.js';
export type { Storage, StorageFile, OpenMode } from './storage.js';
