/** The idempotency store's public surface (re-exported by src/index.ts). */
export { IdempotencyStore } from './store.js';
export type {
  ClaimResult,
  CompleteStatus,
  DoneResult,
  IdempotencyRecoveryReport,
  IdempotencyStats,
  IdempotencyStoreOptions,
  LookupResult,
  MaintenanceReport,
  ReleaseStatus,
} from './store.js';
export { idempotentHandler, idempotencyKey } from './consumer.js';
export type { IdempotentCounters, IdempotentHandler, IdempotentOptions } from './consumer.js';
