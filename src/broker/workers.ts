/**
 * `consume(queue, './handler.js', { workers: 4 })`: runs a handler module on a worker_threads
 * pool, for CPU-bound work that one event loop cannot drain. The main thread keeps the group,
 * the acks and redelivery; a worker only runs the handler and answers ok or failed, so acks,
 * retries and redelivery behave exactly as in process. A worker that dies fails the messages it
 * held (they are redelivered) and is replaced.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { SpoolError } from '../errors.js';
import type { Message } from './delivery.js';
import type { Headers } from './message.js';

/** What a worker's handler receives: the message's data (no ack methods; the result acks). */
export interface WorkerMessage {
  id: string;
  queue: string;
  exchange: string;
  routingKey: string;
  offset: number;
  timestamp: number;
  headers: Headers;
  body: Uint8Array;
  deliveryCount: number;
  redelivered: boolean;
}

/**
 * The bootstrap each worker runs (as eval'd source, so it works from TypeScript sources and
 * from dist alike). The handler module's default export, or its export named `handler`, is called
 * once per message; a resolved call acks, a thrown error nacks.
 */
const BOOTSTRAP = `
const { parentPort, workerData } = require('node:worker_threads');
import(workerData.moduleUrl).then((mod) => {
  const handler = typeof mod.default === 'function' ? mod.default : mod.handler;
  if (typeof handler !== 'function') throw new Error('handler module must export a default function or one named handler');
  parentPort.on('message', async ({ seq, msg }) => {
    try {
      await handler(msg);
      parentPort.postMessage({ seq, ok: true });
    } catch (err) {
      parentPort.postMessage({ seq, ok: false, error: String(err && err.stack || err) });
    }
  });
  parentPort.postMessage({ ready: true });
}).catch((err) => { setImmediate(() => { throw err; }); });
`;

interface Pending {
  resolve: () => void;
  reject: (err: Error) => void;
}

class PoolWorker {
  readonly worker: Worker;
  readonly pending = new Map<number, Pending>();
  ready: Promise<void>;

  constructor(moduleUrl: string, onExit: (w: PoolWorker, err: Error) => void) {
    this.worker = new Worker(BOOTSTRAP, { eval: true, workerData: { moduleUrl } });
    this.ready = new Promise((resolve, reject) => {
      this.worker.once('error', reject);
      const onReady = (m: { ready?: boolean }) => {
        if (m.ready) {
          this.worker.off('message', onReady);
          resolve();
        }
      };
      this.worker.on('message', onReady);
    });
    this.ready.catch(() => {});
    this.worker.on('message', (m: { seq?: number; ok?: boolean; error?: string }) => {
      if (m.seq === undefined) return;
      const p = this.pending.get(m.seq);
      if (p === undefined) return;
      this.pending.delete(m.seq);
      if (m.ok) p.resolve();
      else p.reject(new Error(m.error ?? 'handler failed'));
    });
    this.worker.on('error', (err) => onExit(this, err));
    this.worker.on('exit', (code) => onExit(this, new Error(`worker exited with code ${code}`)));
  }
}

export class WorkerPool {
  private workers: PoolWorker[] = [];
  private seq = 0;
  private closed = false;
  private readonly moduleUrl: string;

  constructor(modulePath: string, private readonly size: number) {
    if (!Number.isSafeInteger(size) || size < 1) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'workers must be a positive integer');
    this.moduleUrl = modulePath.startsWith('file:') ? modulePath : pathToFileURL(path.resolve(modulePath)).href;
    for (let i = 0; i < size; i++) this.workers.push(this.spawn());
  }

  /** Waits until every worker has loaded the handler module; rejects if one cannot. */
  async ready(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.ready));
  }

  private spawn(): PoolWorker {
    return new PoolWorker(this.moduleUrl, (w, err) => this.onWorkerGone(w, err));
  }

  private onWorkerGone(w: PoolWorker, err: Error): void {
    const i = this.workers.indexOf(w);
    if (i < 0) return;
    // Fail what it held: the consumer nacks those messages and they are redelivered.
    for (const p of w.pending.values()) p.reject(err);
    w.pending.clear();
    if (this.closed) return;
    this.workers[i] = this.spawn();
  }

  /** The consumer handler: ships the message to the least busy worker and settles with its answer. */
  readonly handler = (msg: Message): Promise<void> => {
    let best = this.workers[0] as PoolWorker;
    for (const w of this.workers) if (w.pending.size < best.pending.size) best = w;
    const seq = ++this.seq;
    const data: WorkerMessage = {
      id: msg.id,
      queue: msg.queue,
      exchange: msg.exchange,
      routingKey: msg.routingKey,
      offset: msg.offset,
      timestamp: msg.timestamp,
      headers: msg.headers,
      body: msg.body,
      deliveryCount: msg.deliveryCount,
      redelivered: msg.redelivered,
    };
    return new Promise<void>((resolve, reject) => {
      best.pending.set(seq, { resolve, reject });
      best.worker.postMessage({ seq, msg: data });
    });
  };

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }
}
