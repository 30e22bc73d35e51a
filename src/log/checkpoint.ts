/**
 * The recovery checkpoint (docs/format.md "Checkpoint file"): a durable, verified position in the
 * active segment. Everything before it was fsynced and CRC-checked, so recovery only scans after it.
 * Written atomically on roll and on clean close; a damaged checkpoint is ignored, never trusted.
 */
import {
  CHECKPOINT_BYTES,
  CHECKPOINT_MAGIC,
  FORMAT_VERSION,
  crc32,
  readI64,
  readU64,
  writeI64,
  writeU64,
} from './format.js';

export interface Checkpoint {
  segmentBase: number;
  position: number;
  nextOffset: number;
  maxTimestamp: number;
}

export function encodeCheckpoint(cp: Checkpoint): Buffer {
  const buf = Buffer.alloc(CHECKPOINT_BYTES);
  buf.writeUInt32LE(CHECKPOINT_MAGIC, 0);
  buf.writeUInt8(FORMAT_VERSION, 8);
  writeU64(buf, cp.segmentBase, 16);
  writeU64(buf, cp.position, 24);
  writeU64(buf, cp.nextOffset, 32);
  writeI64(buf, cp.maxTimestamp, 40);
  buf.writeUInt32LE(crc32(buf.subarray(8)), 4);
  return buf;
}

export type CheckpointRead =
  | { kind: 'ok'; checkpoint: Checkpoint }
  | { kind: 'not-a-log' }
  | { kind: 'unknown-version'; version: number }
  | { kind: 'damaged' };

export function decodeCheckpoint(buf: Buffer): CheckpointRead {
  if (buf.length < 4 || buf.readUInt32LE(0) !== CHECKPOINT_MAGIC) return { kind: 'not-a-log' };
  // Magic and CRC framing (the first 8 bytes) is the same in every version, so a checkpoint
  // from a newer Spool reads as an unknown version rather than as damage.
  if (buf.length < 9 || crc32(buf.subarray(8)) !== buf.readUInt32LE(4)) return { kind: 'damaged' };
  const version = buf[8] as number;
  if (version !== FORMAT_VERSION) return { kind: 'unknown-version', version };
  if (buf.length !== CHECKPOINT_BYTES) return { kind: 'damaged' };
  const checkpoint = {
    segmentBase: readU64(buf, 16),
    position: readU64(buf, 24),
    nextOffset: readU64(buf, 32),
    maxTimestamp: readI64(buf, 40),
  };
  if (Number.isNaN(checkpoint.segmentBase) || Number.isNaN(checkpoint.position) || Number.isNaN(checkpoint.nextOffset)) {
    return { kind: 'damaged' };
  }
  return { kind: 'ok', checkpoint };
}
