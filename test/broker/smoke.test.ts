// Smoke: topic publish reaches a bound queue, a group consumes with auto ack, state survives restart.
import { describe, it, expect } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Broker } from '../../src/broker/broker.js';

describe('broker smoke', () => {
  it('publishes, consumes, acks and restarts', async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-b-'));
    let broker = await Broker.open({ dataDir });
    await broker.assertExchange('orders', 'topic');
    await broker.assertQueue('billing');
    await broker.bindQueue('billing', 'orders', 'order.*');
    const r = await broker.publish('orders', 'order.created', 'hello', { id: 'o1' });
    expect(r).toEqual({ id: 'o1', status: 'confirmed', queues: ['billing'] });
    expect((await broker.publish('orders', 'order.created', 'hello', { id: 'o1' })).status).toBe('duplicate');
    expect((await broker.publish('orders', 'nothing', 'x', { mandatory: true })).status).toBe('unroutable');
    for (let i = 0; i < 100; i++) await broker.sendToQueue('billing', `m${i}`);
    const got: string[] = [];
    await new Promise<void>((resolve) => {
      void broker.consume('billing', async (msg) => {
        got.push(msg.body.toString());
        if (got.length === 101) resolve();
      }, { group: 'g1', prefetch: 10, concurrency: 4 });
    });
    expect(got[0]).toBe('hello');
    await broker.close();
    broker = await Broker.open({ dataDir });
    expect(broker.queueStats('billing').groups.g1!.committed).toBe(101);
    await broker.sendToQueue('billing', 'after');
    const sub = broker.subscribe('billing', { group: 'g1' });
    for await (const msg of sub) {
      expect(msg.body.toString()).toBe('after');
      await msg.ack();
      break;
    }
    expect(broker.queueStats('billing').groups.g1!.committed).toBe(102);
    await broker.close();
  });
});
