/**
 * Little-endian integers and UTF-8 text on Buffers, for the hot frames. Plain byte stores beat
 * Buffer#writeUInt32LE (which checks its arguments on every call), and a JS loop beats the native
 * UTF-8 encoder for the short ASCII strings frames mostly carry (ids, names, routing keys).
 * Measured in bench/ (remote scenario): these paths run several times per message.
 */

/** Unchecked: the caller has reserved the bytes and `v` fits. */
export function w16(b: Buffer, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
}

export function w32(b: Buffer, at: number, v: number): void {
  b[at] = v;
  b[at + 1] = v >>> 8;
  b[at + 2] = v >>> 16;
  b[at + 3] = v >>> 24;
}

/** Unchecked: the caller has bounds-checked `at + 2`. */
export function r16(b: Buffer, at: number): number {
  return (b[at] as number) | ((b[at + 1] as number) << 8);
}

export function r32(b: Buffer, at: number): number {
  return ((b[at] as number) | ((b[at + 1] as number) << 8) | ((b[at + 2] as number) << 16)) + (b[at + 3] as number) * 0x100_0000;
}

const SHORT_TEXT = 48;

interface FastBuffer {
  utf8Write(s: string, at: number, n: number): number;
  utf8Slice(start: number, end: number): string;
  latin1Slice(start: number, end: number): string;
}

/**
 * Writes `s`, whose UTF-8 length the caller measured as `bytes`. When that equals its UTF-16
 * length the string is ASCII, and short ones are copied byte by byte.
 */
export function writeText(b: Buffer, at: number, s: string, bytes: number): void {
  if (bytes === 0) return;
  if (bytes === s.length && bytes <= SHORT_TEXT) {
    for (let i = 0; i < bytes; i++) b[at + i] = s.charCodeAt(i);
    return;
  }
  (b as unknown as FastBuffer).utf8Write(s, at, bytes);
}

/** UTF-8 text of `b[start, end)` (the caller checked the bounds). */
export function readText(b: Buffer, start: number, end: number): string {
  if (end === start) return '';
  if (end - start <= SHORT_TEXT) {
    let ascii = true;
    for (let i = start; i < end; i++) {
      if ((b[i] as number) >= 0x80) {
        ascii = false;
        break;
      }
    }
    // For ASCII bytes latin1 and UTF-8 decode alike, and latin1 is the cheaper decoder.
    if (ascii) return (b as unknown as FastBuffer).latin1Slice(start, end);
  }
  return (b as unknown as FastBuffer).utf8Slice(start, end);
}

/** `b[start, end)` as latin1: one char per byte, so it keys a map by the bytes themselves. */
export function readLatin1(b: Buffer, start: number, end: number): string {
  return (b as unknown as FastBuffer).latin1Slice(start, end);
}

/**
 * Decodes text that usually repeats from one frame to the next (exchange names, routing keys):
 * when the bytes equal the previous ones, the previous string is returned and nothing is allocated.
 */
export class TextCache {
  private bytes: Buffer = Buffer.alloc(64);
  private length = -1;
  private text = '';

  read(b: Buffer, start: number, end: number): string {
    const n = end - start;
    if (n === this.length) {
      let same = true;
      const c = this.bytes;
      for (let i = 0; i < n; i++) {
        if (c[i] !== b[start + i]) {
          same = false;
          break;
        }
      }
      if (same) return this.text;
    }
    const text = readText(b, start, end);
    if (n <= this.bytes.length) {
      b.copy(this.bytes, 0, start, end);
      this.length = n;
      this.text = text;
    }
    return text;
  }
}
