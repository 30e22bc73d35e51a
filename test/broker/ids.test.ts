// Generated message ids: 26 base32hex characters, unique, and sorting in generation order.
import { describe, expect, it } from 'vitest';
import { generateId } from '../../src/broker/message.js';

describe('generateId', () => {
  it('makes unique, time-sortable 26-character base32hex ids whose counter counts up by one', () => {
    // Proves the id layout: 10 chars of ms, 8 fixed random chars, an 8-char counter (parsed back, +1 each call); sorting the ids keeps generation order.
    const ids = Array.from({ length: 100_000 }, () => generateId());
    for (const id of ids) expect(id).toMatch(/^[0-9a-v]{26}$/);
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
    for (let i = 1; i < ids.length; i++) {
      const prev = parseInt((ids[i - 1] as string).slice(18), 32);
      const cur = parseInt((ids[i] as string).slice(18), 32);
      if (cur !== (prev + 1) % 2 ** 40) expect.fail(`id ${i}: counter ${cur} after ${prev}`);
      expect((ids[i] as string).slice(10, 18)).toBe((ids[0] as string).slice(10, 18));
    }
    const ms = parseInt((ids[0] as string).slice(0, 10), 32);
    expect(Math.abs(ms - Date.now())).toBeLessThan(60_000);
  });
});
