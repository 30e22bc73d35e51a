/**
 * Wire JSON (docs/protocol.md §3): plain JSON plus two conventions so option objects cross the
 * socket intact. A Date travels as {"$date": ms}; an `undefined` inside an argument list as
 * {"$undefined": true} (so `f('q', undefined, 'x')` keeps its positions). A plain object that
 * only looks like one of those (its one key is $date, $undefined or $escape: a user's header,
 * say) travels escaped as {"$escape": [[key, value]]}, so it arrives as it was sent. A function
 * cannot travel: encoding one throws SPOOL_ERR_INVALID_ARGUMENT before anything is written.
 */
import { SpoolError } from '../../errors.js';

const DATE_KEY = '$date';
const UNDEFINED_KEY = '$undefined';
const ESCAPE_KEY = '$escape';

/** The escapes this encoder made (so the replacer does not escape its own, whose key is $escape). */
const madeEscapes = new WeakSet<object>();

/** A plain object whose only key is one of the markers: it would be read back as something else. */
function looksLikeMarker(value: object): boolean {
  let only: string | undefined;
  for (const k in value) {
    if (only !== undefined) return false;
    only = k;
  }
  return (only === DATE_KEY || only === UNDEFINED_KEY || only === ESCAPE_KEY) && Object.hasOwn(value, only);
}

function replacer(this: unknown, key: string, value: unknown): unknown {
  // JSON.stringify has already called Date#toJSON on `value`; the holder still has the Date.
  const raw = (this as Record<string, unknown>)[key];
  if (raw instanceof Date) {
    const ms = raw.getTime();
    if (!Number.isFinite(ms)) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${key || 'a value'} is an invalid Date`);
    return { [DATE_KEY]: ms };
  }
  if (typeof value === 'function') {
    throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${key || 'a value'} is a function, which cannot be sent to a remote broker`);
  }
  if (typeof value === 'bigint') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${key || 'a value'} is a bigint, which JSON cannot carry`);
  if (value === undefined && Array.isArray(this)) return { [UNDEFINED_KEY]: true };
  if (value !== null && typeof value === 'object' && !Array.isArray(value) && !madeEscapes.has(value) && looksLikeMarker(value)) {
    const escaped = { [ESCAPE_KEY]: Object.entries(value) };
    madeEscapes.add(escaped);
    return escaped;
  }
  return value;
}

function reviver(_key: string, value: unknown): unknown {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const o = value as Record<string, unknown>;
    const keys = Object.keys(o);
    if (keys.length === 1) {
      if (keys[0] === DATE_KEY && typeof o[DATE_KEY] === 'number') return new Date(o[DATE_KEY]);
      if (keys[0] === UNDEFINED_KEY && o[UNDEFINED_KEY] === true) return undefined;
      if (keys[0] === ESCAPE_KEY && Array.isArray(o[ESCAPE_KEY])) return Object.fromEntries(o[ESCAPE_KEY] as [string, unknown][]);
    }
  }
  return value;
}

/** Encodes a value as wire JSON text. Throws SPOOL_ERR_INVALID_ARGUMENT for functions and invalid Dates. */
export function toWireJson(value: unknown): string {
  return JSON.stringify(value, replacer) ?? 'null';
}

/** Parses wire JSON; throws SyntaxError on malformed text (the caller maps it to a protocol error). */
export function fromWireJson(text: string): unknown {
  return JSON.parse(text, reviver);
}

/** Drops trailing `undefined` arguments so the broker's parameter defaults apply, as they would embedded. */
export function trimArgs(args: readonly unknown[]): unknown[] {
  let n = args.length;
  while (n > 0 && args[n - 1] === undefined) n--;
  return args.slice(0, n);
}
