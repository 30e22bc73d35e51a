/**
 * Hands the PUBLISH frames of one chunk read from a connection to the broker together
 * (docs/protocol.md §3 PUBLISH, "Batching on the server").
 *
 * A client pipelines hundreds of publishes per chunk. Consecutive publishes to one exchange are
 * gathered while the chunk is parsed and given to `broker.publishBatch` when it ends (or when a
 * publish to another target comes): one call, one log append per queue, one promise, instead of
 * one of each per message. Nothing waits: the batch is handed over in the same task as the frames
 * arrived, so it joins the same group commit, and frame order is kept (a batch is handed over
 * before any later publish of the connection).
 *
 * `publishBatch` checks every message before storing any, and refuses the whole batch for one bad
 * message. The server then publishes each message of the refused batch alone, so each gets its own
 * answer exactly as without batching. Every remote publish carries an id, so a message a failed
 * batch did store (an append failed for another queue, or a reject-publish queue filled up
 * halfway) lands once: its lone retry is answered 'duplicate', as a retried embedded
 * `publishBatch` would be.
 */
import assert from 'node:assert/strict';
import type { PublishOptions, PublishResult } from '../broker/broker.js';
import { type Body, NEW_ID } from '../broker/message.js';
import type { ServedBroker } from './served-broker.js';

/** One publish as `publishBatch` takes it: its routing key, body and publish options. */
export interface BatchedPublish extends PublishOptions {
  routingKey: string;
  body: Body;
  /** The client made the id and sends it for the first time (see NEW_ID). */
  [NEW_ID]?: true;
}

type PublishBatchFn = (exchange: string, messages: readonly BatchedPublish[]) => Promise<PublishResult[]>;

/** Well under the broker's own limit (BATCH_MESSAGES_MAX); a chunk of 64 KiB holds a few hundred. */
const BATCH_MESSAGES_MAX = 4096;

export class PublishBatcher {
  private readonly publishBatch: PublishBatchFn | null;
  private exchange = '';
  private messages: BatchedPublish[] = [];
  private requestIds: number[] = [];

  constructor(
    private readonly broker: ServedBroker,
    /** Called once per publish with the broker's result, or with its error. */
    private readonly settled: (requestId: number, result: PublishResult | null, err: unknown) => void,
  ) {
    // Looked up, like `replay`: a broker without it is served one publish at a time.
    const fn = (broker as unknown as { publishBatch?: unknown }).publishBatch;
    this.publishBatch = typeof fn === 'function' ? (fn as PublishBatchFn).bind(broker) : null;
  }

  /** Gathers a publish to `exchange`; handed to the broker at the next `flush` (or now, without batching). */
  add(requestId: number, exchange: string, message: BatchedPublish): void {
    if (this.publishBatch === null) {
      this.publishOne(requestId, exchange, message);
      return;
    }
    if (this.messages.length > 0 && (exchange !== this.exchange || this.messages.length >= BATCH_MESSAGES_MAX)) this.flush();
    this.exchange = exchange;
    this.messages.push(message);
    this.requestIds.push(requestId);
  }

  /** Hands what was gathered to the broker. Called at the end of every chunk and before any other publish. */
  flush(): void {
    const messages = this.messages;
    if (messages.length === 0) return;
    const requestIds = this.requestIds;
    const exchange = this.exchange;
    this.messages = [];
    this.requestIds = [];
    if (messages.length === 1) {
      this.publishOne(requestIds[0] as number, exchange, messages[0] as BatchedPublish);
      return;
    }
    (this.publishBatch as PublishBatchFn)(exchange, messages).then(
      (results) => {
        assert(results.length === messages.length, 'publishBatch answers every message');
        for (let i = 0; i < results.length; i++) this.settled(requestIds[i] as number, results[i] as PublishResult, null);
      },
      // Refused as a whole: each message alone gets its own answer (see the header). The batch may
      // have stored some of them, so their ids are new no longer: each is looked up.
      () => {
        for (let i = 0; i < messages.length; i++) {
          const m = messages[i] as BatchedPublish;
          delete m[NEW_ID];
          this.publishOne(requestIds[i] as number, exchange, m);
        }
      },
    );
  }

  private publishOne(requestId: number, exchange: string, m: BatchedPublish): void {
    let result: Promise<PublishResult>;
    try {
      // `m` is the publish options too (its routingKey and body are not options the broker reads).
      result = this.broker.publish(exchange, m.routingKey, m.body, m);
    } catch (err) {
      result = Promise.reject(err);
    }
    result.then(
      (r) => this.settled(requestId, r, null),
      (err: unknown) => this.settled(requestId, null, err),
    );
  }
}
