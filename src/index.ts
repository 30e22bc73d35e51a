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
export { connect, RemoteBroker, RemoteConsumer, RemoteMessage, RemoteSubscription } from './client/index.js';
export type {
  ConnectOptions,
  ReconnectOptions,
  RemoteBrokerEvents,
  RemoteConsumeOptions,
  RemoteHandler,
  RemotePublishOptions,
  ReplayOptions,
  ReplayResult,
} from './client/index.js';
export { startServer } from './server/index.js';
export type { ServerOptions, SpoolServer, TcpOptions } from './server/index.js';
