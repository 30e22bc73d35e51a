/**
 * Gathers outgoing frames and writes them once per task (docs/protocol.md §9): the flush runs as a
 * microtask, after everything the current chunk read, timer or I/O callback produced, so a
 * thousand frames still go out in one write, and a lone frame does not wait for the loop's check
 * phase (lower latency than setImmediate, the same batching).
 *
 * Frames are encoded straight into a shared chunk; each flush hands the bytes written since the
 * last flush to the socket as one view (one system call for a thousand confirmations). A chunk
 * the socket may still hold a view of is never written over: new frames go after the flushed
 * bytes, or into a fresh chunk; only once the socket has taken everything is the chunk reused. Bodies of ZERO_COPY_BODY_BYTES or more are queued by
 * reference between two views instead of being copied.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { w32 } from './bytes.js';
import { FRAME_HEADER_BYTES, FRAME_LENGTH_MIN } from './constants.js';

const CHUNK_BYTES = 64 * 1024;
/** The largest chunk a connection grows to (more is written as several chunks). */
const CHUNK_BYTES_MAX = 1024 * 1024;
export const ZERO_COPY_BODY_BYTES = 16 * 1024;

export class FrameWriter {
  /** The chunk frames are encoded into; callers fill payloads at the offsets `begin` returns. */
  buf: Buffer = Buffer.allocUnsafe(CHUNK_BYTES);
  /** End of the bytes encoded so far. */
  private pos = 0;
  /** Start of the bytes not yet handed to `out`. */
  private start = 0;
  /** Views and bodies waiting for the next flush, in stream order. */
  private out: Buffer[] = [];
  private outBytes = 0;
  private scheduled = false;
  private closed = false;
  private readonly flushBound = () => this.flush();
  /** Called at the start of every flush: the last chance to add frames gathered during the turn (batched DONE/CREDIT). */
  beforeFlush: (() => void) | null = null;

  constructor(private readonly socket: Socket) {}

  /** Bytes encoded but not yet accepted by the kernel (for backpressure decisions). */
  get backlogBytes(): number {
    return this.socket.writableLength + this.outBytes + (this.pos - this.start);
  }

  /**
   * Starts a frame whose payload is `payloadBytes` long: writes the header and returns where the
   * payload begins in `this.buf`. The caller must fill exactly `payloadBytes` bytes there before
   * yielding to the event loop.
   */
  begin(type: number, requestId: number, payloadBytes: number): number {
    const total = FRAME_HEADER_BYTES + payloadBytes;
    this.reserve(total);
    const at = this.pos;
    this.header(at, type, requestId, FRAME_LENGTH_MIN + payloadBytes);
    this.pos = at + total;
    this.schedule();
    return at + FRAME_HEADER_BYTES;
  }

  /**
   * Starts a frame of `headBytes` of fields followed by `body`. Returns where the fields begin;
   * the body is copied after them when small, or queued by reference when large (the caller
   * must not change it afterwards, as with `socket.write`).
   */
  beginWithBody(type: number, requestId: number, headBytes: number, body: Uint8Array): number {
    if (body.length < ZERO_COPY_BODY_BYTES) {
      const at = this.begin(type, requestId, headBytes + body.length);
      this.buf.set(body, at + headBytes);
      return at;
    }
    const total = FRAME_HEADER_BYTES + headBytes;
    this.reserve(total);
    const at = this.pos;
    this.header(at, type, requestId, FRAME_LENGTH_MIN + headBytes + body.length);
    this.pos = at + total;
    this.cut();
    this.out.push(Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength));
    this.outBytes += body.length;
    this.schedule();
    return at + FRAME_HEADER_BYTES;
  }

  /** Writes everything gathered so far now (normally it happens once per task). */
  flush(): void {
    if (this.beforeFlush !== null && !this.closed) {
      this.scheduled = true; // frames added now go out with this flush, not the next turn's
      this.beforeFlush();
    }
    this.scheduled = false;
    this.cut();
    if (this.out.length === 0) return;
    const out = this.out;
    this.out = [];
    this.outBytes = 0;
    if (this.closed || this.socket.destroyed) return;
    if (out.length === 1) {
      this.socket.write(out[0] as Buffer);
    } else {
      this.socket.cork();
      for (const b of out) this.socket.write(b);
      this.socket.uncork();
    }
    // The kernel took every byte at once (the usual case on a local socket): no view of the chunk
    // is held anywhere, so the next frames reuse it from the start instead of a fresh chunk. This
    // keeps a busy connection at one chunk rather than one allocation per 64 KiB sent.
    if (this.socket.writableLength === 0 && this.pos === this.start) {
      // A chunk grown for a burst goes back to the usual size once turns are small again.
      if (this.buf.length > CHUNK_BYTES && this.pos < this.buf.length / 8) this.buf = Buffer.allocUnsafe(CHUNK_BYTES);
      this.pos = 0;
      this.start = 0;
    }
  }

  /** Drops whatever is not yet written; later frames are discarded. */
  close(): void {
    this.closed = true;
    this.out = [];
    this.outBytes = 0;
    this.start = this.pos;
  }

  private header(at: number, type: number, requestId: number, length: number): void {
    assert(length <= 0xffff_ffff && requestId >= 0 && requestId <= 0xffff_ffff, 'frame header fields fit their u32s');
    const b = this.buf;
    w32(b, at, length);
    b[at + 4] = type;
    w32(b, at + 5, requestId);
  }

  /** Makes room for `bytes` contiguous bytes at `pos`, moving to a new chunk if needed. */
  private reserve(bytes: number): void {
    if (this.buf.length - this.pos >= bytes) return;
    this.cut();
    // A turn that outgrows its chunk gets a bigger one next, so a busy connection settles on one
    // chunk, reused, and one write per turn instead of a writev of many.
    const size = Math.min(CHUNK_BYTES_MAX, Math.max(CHUNK_BYTES, 2 * this.buf.length));
    this.buf = Buffer.allocUnsafe(Math.max(size, bytes));
    this.pos = 0;
    this.start = 0;
  }

  /** Moves the encoded bytes since the last cut to `out` as one view. */
  private cut(): void {
    if (this.pos > this.start) {
      this.out.push(this.buf.subarray(this.start, this.pos));
      this.outBytes += this.pos - this.start;
      this.start = this.pos;
    }
  }

  /** Makes sure a flush runs at the end of this task (for frames that `beforeFlush` will add). */
  schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    queueMicrotask(this.flushBound);
  }
}
