import { afterEach, expect, it } from 'vitest';
import { ServerHarness } from './helpers.js';

const h = new ServerHarness();
afterEach(() => h.cleanup());

it('scratch', async () => {
  const { broker, server } = await h.served();
  const c = await h.client(server.url);
  await c.assertQueue('q');
  const r = await c.sendToQueue('q', 'hello');
  console.log(r);
  console.log(await c.queueStats('q'), await c.listQueues(), await c.stats());
  const got: string[] = [];
  const cons = await c.consume('q', (m) => { got.push(m.body.toString()); }, { group: 'g' });
  await new Promise((r) => setTimeout(r, 200));
  console.log(got, broker.queueStats('q'));
  await cons.close();
  expect(got).toEqual(['hello']);
});
