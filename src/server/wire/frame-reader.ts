/**
 * Cuts a byte stream into frames (docs/protocol.md §1). Chunks are parsed in place: a frame that
 * lies inside one chunk is handed on as a view, never copied; only a frame split across chunks
 * is joined, once, when its last byte arrives. The length prefix is checked as soon as its four
 * bytes are in, so an oversized frame is refused before any of it is buffered.
 */
import { SpoolError } from '../../errors.js';
import { r32 } from './bytes.js';
import { FRAME_HEADER_BYTES, FRAME_LENGTH_MIN } from './constants.js';

/**
 * Called once per complete frame, whose payload is `buf[start, end)`: the chunk read, not a view
 * of the payload, so a frame decoded at once costs no allocation (`frameViews` makes views).
 * The bytes stay valid for as long as the caller keeps `buf`.
 */
export type FrameHandler = (type: number, requestId: number, buf: Buffer, start: number, end: number) => void;

/** A FrameHandler that hands each payload on as a view of its own. */
export function frameViews(onFrame: (type: number, requestId: number, payload: Buffer) => void): FrameHandler {
  return (type, requestId, buf, start, end) => onFrame(type, requestId, buf.subarray(start, end));
}

export class FrameReader {
  /** Bytes of an incomplete frame, in arrival order. */
  private parts: Buffer[] = [];
  private partBytes = 0;
  /** Bytes needed before parsing can make progress again. */
  private needBytes = 0;
  private failed = false;

  constructor(
    /** The largest `length` accepted; a client raises it to the server's announced limit. */
    public maxFrameBytes: number,
    private readonly onFrame: FrameHandler,
  ) {}

  /** True while bytes of an unfinished frame are buffered (a stream ending now was truncated). */
  get midFrame(): boolean {
    return this.partBytes > 0;
  }

  /**
   * Feeds bytes. Throws SPOOL_ERR_PROTOCOL for a bad length prefix; after that the reader is
   * dead (the connection must close). Errors thrown by `onFrame` propagate and also kill it.
   */
  push(chunk: Buffer): void {
    if (this.failed) return;
    try {
      let rest = chunk;
      // A piece begun in an earlier chunk is joined with just the bytes that complete it; the rest
      // of this chunk is then parsed in place (joining the whole chunk copied ~64 KiB a read).
      while (this.partBytes > 0 && rest.length > 0 && !this.failed) {
        const missing = this.needBytes - this.partBytes;
        if (rest.length < missing) {
          this.parts.push(rest);
          this.partBytes += rest.length;
          return;
        }
        this.parts.push(rest.subarray(0, missing));
        const piece = Buffer.concat(this.parts, this.needBytes);
        this.parts = [];
        this.partBytes = 0;
        rest = rest.subarray(missing);
        // The piece is one whole frame, or a length prefix whose frame `parse` keeps on waiting for.
        this.parse(piece);
      }
      if (rest.length > 0 && !this.failed) this.parse(rest);
    } catch (err) {
      this.failed = true;
      this.parts = [];
      this.partBytes = 0;
      throw err;
    }
  }

  private parse(buf: Buffer): void {
    let pos = 0;
    const end = buf.length;
    while (end - pos >= 4 && !this.failed) {
      const length = r32(buf, pos);
      if (length < FRAME_LENGTH_MIN || length > this.maxFrameBytes) {
        throw new SpoolError('SPOOL_ERR_PROTOCOL', `frame length ${length} is outside ${FRAME_LENGTH_MIN}..${this.maxFrameBytes}`);
      }
      const frameEnd = pos + 4 + length;
      if (frameEnd > end) {
        this.keep(buf, pos, frameEnd - pos);
        return;
      }
      const type = buf[pos + 4] as number;
      const requestId = r32(buf, pos + 5);
      this.onFrame(type, requestId, buf, pos + FRAME_HEADER_BYTES, frameEnd);
      pos = frameEnd;
    }
    if (pos < end && !this.failed) this.keep(buf, pos, 4);
  }

  /** Stops parsing, also the rest of the current chunk (the connection is closing). */
  stop(): void {
    this.failed = true;
    this.parts = [];
    this.partBytes = 0;
  }

  /** Keeps the tail from `pos` until `need` bytes of it are in. */
  private keep(buf: Buffer, pos: number, need: number): void {
    const tail = buf.subarray(pos);
    this.parts = [tail];
    this.partBytes = tail.length;
    this.needBytes = need;
  }
}
