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
export { Broker } from './broker/broker.js';
export type {
  BrokerEvents,
  BrokerOptions,
  ConsumeOptions,
  DeathRecord,
  ExchangeOptions,
  PublishOptions,
  PublishResult,
  BatchMessage,
  PublishStatus,
} from './broker/broker.js';
export type { ReplayOptions as BrokerReplayOptions } from './broker/broker.js';
export { Message } from './broker/delivery.js';
export type { NackOptions, SettleStatus } from './broker/delivery.js';
export type { AckMode, Consumer, ConsumerOptions, DeathReason, Handler, RetryOptions } from './broker/group.js';
export type { Body, HeaderValue, Headers } from './broker/message.js';
export type { Overflow, QueueOptions } from './broker/queue.js';
export type { ExchangeType } from './broker/routing.js';
export type { Subscription } from './broker/subscription.js';
export type { WorkerMessage } from './broker/workers.js';
export { TimingWheel } from './broker/timing-wheel.js';
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
  RemoteBatchMessage,
  ReplayOptions,
  ReplayResult,
} from './client/index.js';
export { startServer } from './server/index.js';
export type { ServerOptions, SpoolServer, TcpOptions } from './server/index.js';
export { IdempotencyStore, idempotentHandler, idempotencyKey } from './idempotency/index.js';
export type {
  ClaimResult,
  CompleteStatus,
  DoneResult,
  IdempotencyRecoveryReport,
  IdempotencyStats,
  IdempotencyStoreOptions,
  IdempotentCounters,
  IdempotentHandler,
  IdempotentOptions,
  LookupResult,
  MaintenanceReport,
  ReleaseStatus,
} from './idempotency/index.js';
