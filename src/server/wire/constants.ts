/**
 * The protocol's numbers (docs/protocol.md). Each constant names the section it implements.
 */

/** docs/protocol.md §1: u32 length + u8 type + u32 requestId. */
export const FRAME_HEADER_BYTES = 9;
/** §1: `length` counts the type and requestId bytes too, so it is at least this. */
export const FRAME_LENGTH_MIN = 5;
/** §1: room for a 16 MiB body plus its metadata. */
export const MAX_FRAME_BYTES_DEFAULT = 16 * 1024 * 1024 + 64 * 1024;

/** §3 HELLO: ASCII "SPMQ". */
export const HELLO_MAGIC = 'SPMQ';
export const PROTOCOL_VERSION = 1;

/** §2: frame types. 0 is reserved so zeroed memory is never a frame. */
export const FrameType = {
  HELLO: 0x01,
  WELCOME: 0x02,
  REQUEST: 0x03,
  RESPONSE: 0x04,
  ERROR: 0x05,
  PUBLISH: 0x06,
  CONFIRM: 0x07,
  DELIVERY: 0x08,
  ACK: 0x09,
  NACK: 0x0a,
  DONE: 0x0b,
  CREDIT: 0x0c,
  HEARTBEAT: 0x0d,
  CLOSE: 0x0e,
  CONFIRMS: 0x0f,
  RECORDS: 0x10,
  DONE_RUNS: 0x11,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];

/** §1: types with this bit are optional: a peer that does not know one skips it. */
export const FRAME_TYPE_IGNORABLE = 0x80;

/** §3 PUBLISH flags. */
export const PUBLISH_TO_QUEUE = 0x01;
export const PUBLISH_MANDATORY = 0x02;
/** The client made the id for this publish and sends it for the first time (only with FEATURE_NEW_IDS). */
export const PUBLISH_NEW_ID = 0x04;
/** §3 NACK flags. */
export const NACK_REQUEUE = 0x01;

/** §3 HELLO `features`: the client takes CONFIRMS frames (one answer for a run of publishes). */
export const FEATURE_CONFIRMS = 'confirms';
/** §3 HELLO `features`: the client takes RECORDS frames (deliveries carrying the stored record). */
export const FEATURE_RECORDS = 'records';
/** §3 HELLO and WELCOME `features`: the server takes DONE_RUNS frames (a run of successful tags as one entry). */
export const FEATURE_DONE_RUNS = 'done-runs';
/** §3 HELLO and WELCOME `features`: the server takes the PUBLISH flag NEW_ID (records the id without a lookup). */
export const FEATURE_NEW_IDS = 'new-ids';
/** §3 RECORDS: the fixed fields of an entry before its record (tag, offset, timestamp, delivery id, delivery count). */
export const RECORDS_ENTRY_FIXED_BYTES = 32;
/**
 * §3 RECORDS: the most payload bytes of one frame of several deliveries. A quarter of a socket read
 * (64 KiB), so most frames lie inside one read and are scanned in place; at 64 KiB nearly every
 * frame straddled two reads and was joined by a copy first (client and server CPU per delivery
 * each ~4% lower at 16 KiB, 8 A/B pairs).
 */
export const RECORDS_FRAME_BYTES_MAX = 16 * 1024;
/** §3 DONE_RUNS: first tag u32 + count u32. */
export const DONE_RUN_BYTES = 8;
/** §3: the largest delivery tag (tags run 1..this, then wrap). */
export const TAG_MAX = 0xffff_fffe;

/** §3 CONFIRM status byte, in wire order. */
export const CONFIRM_STATUSES = ['confirmed', 'duplicate', 'unroutable'] as const;

/** §5: a peer silent for more than this many heartbeat intervals is dead. */
export const HEARTBEAT_MISSES_MAX = 3;
export const HEARTBEAT_MS_DEFAULT = 1000;
/** §3 HELLO: a connection must say HELLO within this. */
export const HELLO_TIMEOUT_MS = 5000;

/** §4: the server stops reading a connection while its unsent output is above this... */
export const SERVER_OUTPUT_BYTES_HIGH = 8 * 1024 * 1024;
/** ...or while this many of its requests are in flight at the broker. */
export const SERVER_INFLIGHT_MAX = 65_536;

/** §3: the largest u16 / u32 string length. */
export const STR16_MAX = 0xffff;
export const U32_MAX = 0xffff_ffff;
