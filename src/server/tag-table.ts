/**
 * The deliveries of one connection by delivery tag (docs/protocol.md §4), and a client's calls by
 * request id: an `OffsetTable` (src/broker/offset-table.ts), whose window of live keys suits tags
 * handed out in order and mostly settled in order, with the rules of tags on top: a tag is
 * positive (0 means "nothing to settle" on the wire, §3 DELIVERY) and live at most once.
 */
import assert from 'node:assert/strict';
import { OffsetTable } from '../broker/offset-table.js';

export class TagTable<T> extends OffsetTable<T> {
  /** Adds `tag`, which must not be in the table. */
  override set(tag: number, value: T): void {
    assert(Number.isInteger(tag) && tag > 0, 'a delivery tag is a positive integer');
    assert(!this.has(tag), 'a tag is in the table once');
    super.set(tag, value);
  }
}
