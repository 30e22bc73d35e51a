/**
 * Where a client socket reads into (net.connect `onread`): consecutive windows of a larger slab.
 * A read then costs no buffer of its own and skips the Readable stream's machinery (each 64 KiB
 * read used to allocate a fresh buffer and go through push, addChunk and a 'data' event), and it
 * may be larger than a stream's.
 *
 * The bytes of a read are never written over: frames and messages keep views of them (a
 * RemoteMessage's body lies in the read it came in), so a slab is only ever appended to, and a
 * fresh one is taken when too little of the current one is left. A slab lives while any view of
 * it does, as the 64 KiB reads did.
 */
import assert from 'node:assert/strict';

export const SLAB_BYTES = 256 * 1024;
/**
 * The most one read takes. Twice a stream's usual 64 KiB: a read's deliveries are answered by one
 * DONE_RUNS, so fewer, larger reads mean fewer handoffs between client and server (client CPU per
 * delivery ~10% lower than at 64 KiB, the rate no lower; 32 KiB was worse; 6 A/B runs each).
 */
export const READ_BYTES_MAX = 128 * 1024;
/** A slab with less room than this left is retired (a read into a tiny window would cost a system call for little). */
export const READ_BYTES_MIN = 16 * 1024;

export class ReadSlab {
  private slab = Buffer.allocUnsafe(SLAB_BYTES);
  private used = 0;
  private lent = 0;

  /** The window the next read goes into (`onread.buffer`; node asks for one before each read). */
  readonly next = (): Buffer => {
    if (SLAB_BYTES - this.used < READ_BYTES_MIN) {
      this.slab = Buffer.allocUnsafe(SLAB_BYTES);
      this.used = 0;
    }
    this.lent = Math.min(READ_BYTES_MAX, SLAB_BYTES - this.used);
    return this.slab.subarray(this.used, this.used + this.lent);
  };

  /** `n` bytes were read into `window`, the last one lent: keeps them and returns them as a view. */
  take(window: Buffer, n: number): Buffer {
    assert(n > 0 && n <= this.lent && window.buffer === this.slab.buffer, 'a read fills part of the window lent for it');
    this.used += n;
    this.lent = 0;
    return window.subarray(0, n);
  }
}
