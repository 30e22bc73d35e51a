// Found by the soak (npm run soak): at open, the broker's ticker ran while queues were still being
// opened and before any binding was restored, so a message whose TTL had passed while the broker
// was down was dead-lettered into an exchange with no bindings yet: dropped, and acked. Nothing
// due may run before the whole topology is back, and neither may the overflow a crash left
// unfinished (the same mistake, found by reading the open path after the first).
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BrokerHarness, fakeClock, waitFor } from '../support/broker-helpers.js';
import { recordEvents } from '../support/time-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());

describe('restore order', () => {
  it('messages that expired while the broker was down reach the dead-letter queue after the reopen, none dropped', async () => {
    const clock = fakeClock();
    const options = { clock, tickIntervalMs: 1 };
    let b = await h.openBroker(options);
    await b.assertExchange('dlx', 'fanout');
    await b.assertQueue('slow', { messageTtl: 100, deadLetterExchange: 'dlx' });
    // More queues, so that opening them all takes a while (ticks used to run in between).
    for (let i = 0; i < 30; i++) await b.assertQueue(`other-${i}`);
    await b.assertQueue('expired');
    await b.bindQueue('expired', 'dlx');
    await (await b.consume('slow', () => {}, { group: 'g', prefetch: 1 })).close();
    for (let i = 0; i < 10; i++) await b.sendToQueue('slow', `m${i}`, { id: `m${i}` });
    await h.close(b);

    clock.t += 1000; // all ten expire while the broker is down
    b = await h.openBroker({ ...options, dataDir: b.dataDir });
    const events = recordEvents(b);
    await waitFor(async () => {
      await b.runTimers();
      return b.queueStats('expired').endOffset === 10;
    }, 'all ten dead-lettered to expired');
    expect(events.drops).toEqual([]);
    expect(b.queueStats('slow').groups.g?.lag).toBe(0);
  });

  it('overflow left unfinished is dead-lettered after the reopen through the restored bindings, none dropped', async () => {
    let b = await h.openBroker();
    await b.assertExchange('dlx', 'fanout');
    await b.assertQueue('capped', { maxLength: 100, deadLetterExchange: 'dlx' });
    for (let i = 0; i < 30; i++) await b.assertQueue(`other-${i}`);
    await b.assertQueue('overflowed');
    await b.bindQueue('overflowed', 'dlx');
    await (await b.consume('capped', () => {}, { group: 'g', ack: 'manual', prefetch: 1 })).close();
    for (let i = 0; i < 20; i++) await b.sendToQueue('capped', `m${i}`, { id: `m${i}` });
    await h.close(b);
    // The queue opens over its limit, as after a crash between appends and their overflow drop
    // (here: the limit lowered in topology.json while it was closed).
    const file = path.join(b.dataDir, 'topology.json');
    const topology = JSON.parse(fs.readFileSync(file, 'utf8')) as { queues: Record<string, { maxLength?: number }> };
    (topology.queues.capped as { maxLength?: number }).maxLength = 5;
    fs.writeFileSync(file, JSON.stringify(topology));
    b = await h.openBroker({ dataDir: b.dataDir });
    await waitFor(() => b.queueStats('overflowed').endOffset === 15, 'the 15 over the limit dead-lettered to overflowed', 3000);
    expect(b.queueStats('capped').groups.g?.lag).toBe(5);
  });
});
