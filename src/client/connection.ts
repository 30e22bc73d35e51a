/**
 * One client session on one socket: connect, HELLO, WELCOME, heartbeats, frames in and out
 * (docs/protocol.md §5). It never reconnects: the RemoteBroker makes a new one when this one
 * ends, and it ends exactly once, reporting why.
 */
import net from 'node:net';
import { SpoolError, type SpoolErrorCode, ERROR_CODES } from '../errors.js';
import { decodeError, decodeWelcome, encodeClose, encodeHeartbeat, encodeHello, frameTypeName, type Welcome } from '../server/wire/codec.js';
import { FEATURE_CONFIRMS, FEATURE_DONE_RUNS, FEATURE_NEW_IDS, FEATURE_RECORDS, FrameType, HEARTBEAT_MISSES_MAX } from '../server/wire/constants.js';
import { FrameReader } from '../server/wire/frame-reader.js';
import { FrameWriter } from '../server/wire/frame-writer.js';
import { ReadSlab } from './read-slab.js';
import { type BrokerAddress, describeAddress } from './url.js';

export interface ConnectionSink {
  /** A frame after the handshake (not HEARTBEAT), whose payload is `buf[start, end)` (no view is made). */
  frame(type: number, requestId: number, buf: Buffer, start: number, end: number): void;
  /** The session ended; `err` says why (null after our own close()). Called once. */
  closed(err: SpoolError | null): void;
}

export interface SessionOptions {
  token: string | undefined;
  clientName: string | undefined;
  connectTimeoutMs: number;
  maxFrameBytes: number;
}

/** Turns an ERROR frame into the error the embedded broker would have thrown. */
export function errorFromWire(code: string, message: string): Error {
  if (code in ERROR_CODES) return new SpoolError(code as SpoolErrorCode, message);
  // '' is an unexpected error on the server: embedded, it would not have been a SpoolError either.
  return new Error(code === '' ? message : `${code}: ${message}`);
}

export class ClientSession {
  readonly writer: FrameWriter;
  private readonly reader: FrameReader;
  private welcome: Welcome | null = null;
  private lastHeardAt = Date.now();
  private heartbeat: NodeJS.Timeout | null = null;
  private ended = false;
  private sink: ConnectionSink | null = null;

  private constructor(
    private readonly socket: net.Socket,
    maxFrameBytes: number,
  ) {
    this.writer = new FrameWriter(socket);
    this.reader = new FrameReader(maxFrameBytes, (t, r, buf, start, end) => this.onFrame(t, r, buf, start, end));
  }

  get heartbeatMs(): number {
    return (this.welcome as Welcome).heartbeatMs;
  }

  /** The server's frame limit, from WELCOME. */
  get maxFrameBytes(): number {
    return (this.welcome as Welcome).maxFrameBytes;
  }

  /** The server takes DONE_RUNS frames (WELCOME `features`; an older server names none). */
  get doneRuns(): boolean {
    return (this.welcome as Welcome).features?.includes(FEATURE_DONE_RUNS) === true;
  }

  /** The server takes PUBLISH flag NEW_ID (WELCOME `features`). */
  get newIds(): boolean {
    return (this.welcome as Welcome).features?.includes(FEATURE_NEW_IDS) === true;
  }

  /**
   * Connects and shakes hands. Rejects with SPOOL_ERR_DISCONNECTED (nothing listening, timeout)
   * or with the server's refusal (SPOOL_ERR_UNAUTHORIZED, SPOOL_ERR_PROTOCOL).
   */
  static open(address: BrokerAddress, options: SessionOptions, sink: ConnectionSink): Promise<ClientSession> {
    return new Promise((resolve, reject) => {
      // Reads go straight to the session, into a slab (read-slab.ts), not through a Readable's 'data'.
      const slab = new ReadSlab();
      let toSession: ((chunk: Buffer) => void) | null = null;
      const onread = {
        buffer: slab.next,
        callback: (n: number, window: Uint8Array): boolean => {
          toSession?.(slab.take(window as Buffer, n));
          return true;
        },
      };
      const socket = address.kind === 'unix' ? net.connect({ path: address.path, onread }) : net.connect({ host: address.host, port: address.port, onread });
      const session = new ClientSession(socket, options.maxFrameBytes);
      toSession = (chunk) => session.onData(chunk);
      let settled = false;
      const fail = (err: SpoolError) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        session.ended = true;
        socket.destroy();
        reject(err);
      };
      const timer = setTimeout(
        () => fail(new SpoolError('SPOOL_ERR_DISCONNECTED', `no answer from ${describeAddress(address)} within ${options.connectTimeoutMs} ms`)),
        options.connectTimeoutMs,
      );
      session.handshake = {
        welcomed: () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          session.sink = sink;
          session.startHeartbeat();
          resolve(session);
        },
        refused: fail,
      };
      socket.setNoDelay(true);
      socket.on('connect', () => {
        encodeHello(session.writer, {
          ...(options.token !== undefined ? { token: options.token } : {}),
          ...(options.clientName !== undefined ? { client: options.clientName } : {}),
          features: [FEATURE_CONFIRMS, FEATURE_RECORDS, FEATURE_DONE_RUNS, FEATURE_NEW_IDS],
        });
        session.writer.flush();
      });
      socket.on('error', (err: NodeJS.ErrnoException) => {
        const e = new SpoolError('SPOOL_ERR_DISCONNECTED', `connection to ${describeAddress(address)} failed: ${err.code ?? err.message}`, { cause: err });
        if (!settled) fail(e);
        else session.end(e);
      });
      socket.on('close', () => {
        const e = new SpoolError('SPOOL_ERR_DISCONNECTED', `connection to ${describeAddress(address)} closed`);
        if (!settled) fail(e);
        else session.end(e);
      });
    });
  }

  private handshake: { welcomed: () => void; refused: (err: SpoolError) => void } | null = null;

  private onData(chunk: Buffer): void {
    if (this.ended) return;
    this.lastHeardAt = Date.now();
    try {
      this.reader.push(chunk);
    } catch (err) {
      this.abort(err instanceof SpoolError ? err : new SpoolError('SPOOL_ERR_PROTOCOL', (err as Error).message, { cause: err }));
    }
  }

  private onFrame(type: number, requestId: number, buf: Buffer, start: number, end: number): void {
    // Deliveries and confirmations, the many, are decoded where they lie; the rest get a view.
    if (this.welcome !== null && type !== FrameType.HEARTBEAT && type !== FrameType.ERROR && type !== FrameType.CLOSE) {
      this.sink?.frame(type, requestId, buf, start, end);
      return;
    }
    const payload = buf.subarray(start, end);
    if (this.welcome === null) {
      if (type === FrameType.WELCOME) {
        this.welcome = decodeWelcome(payload);
        this.reader.maxFrameBytes = Math.max(this.reader.maxFrameBytes, this.welcome.maxFrameBytes);
        this.handshake?.welcomed();
        return;
      }
      if (type === FrameType.ERROR) {
        const { code, message } = decodeError(payload);
        const err = errorFromWire(code, message);
        this.handshake?.refused(err instanceof SpoolError ? err : new SpoolError('SPOOL_ERR_PROTOCOL', message));
        return;
      }
      throw new SpoolError('SPOOL_ERR_PROTOCOL', `expected WELCOME, got ${frameTypeName(type)}`);
    }
    if (type === FrameType.HEARTBEAT) return;
    if (type === FrameType.ERROR && requestId === 0) {
      // About the connection itself; the server closes it next.
      const { code, message } = decodeError(payload);
      const err = errorFromWire(code, message);
      this.abort(err instanceof SpoolError ? err : new SpoolError('SPOOL_ERR_PROTOCOL', message));
      return;
    }
    if (type === FrameType.CLOSE) {
      this.abort(new SpoolError('SPOOL_ERR_DISCONNECTED', `the server closed the connection: ${payload.toString('utf8') || 'no reason given'}`));
      return;
    }
    this.sink?.frame(type, requestId, buf, start, end);
  }

  private startHeartbeat(): void {
    const hb = this.heartbeatMs;
    let lastTickAt = Date.now();
    this.heartbeat = setInterval(() => {
      const now = Date.now();
      // A late tick means this process stalled: the server's frames may be unread, not missing.
      if (now - lastTickAt > 2 * hb) this.lastHeardAt = now;
      lastTickAt = now;
      const silentMs = now - this.lastHeardAt;
      if (silentMs > HEARTBEAT_MISSES_MAX * hb) {
        this.abort(new SpoolError('SPOOL_ERR_DISCONNECTED', `no frame from the server for ${silentMs} ms (heartbeat ${hb} ms)`));
        return;
      }
      encodeHeartbeat(this.writer);
    }, hb);
    this.heartbeat.unref();
  }

  /** Ends the session because of `err` (destroys the socket; the sink hears `err`). */
  abort(err: SpoolError): void {
    if (this.ended) return;
    this.reader.stop();
    this.socket.destroy();
    this.end(err);
  }

  /** Says CLOSE, flushes and ends the socket; the sink hears null. */
  close(): void {
    if (this.ended) return;
    encodeClose(this.writer, 'client closing');
    this.writer.flush();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.end(null);
  }

  private end(err: SpoolError | null): void {
    if (this.ended) return;
    this.ended = true;
    if (this.heartbeat !== null) clearInterval(this.heartbeat);
    this.writer.close();
    if (this.welcome === null) {
      // Still shaking hands: open() rejects.
      this.handshake?.refused(err ?? new SpoolError('SPOOL_ERR_DISCONNECTED', 'closed during the handshake'));
      return;
    }
    const sink = this.sink;
    this.sink = null;
    sink?.closed(err);
  }

  get isOpen(): boolean {
    return !this.ended;
  }
}
