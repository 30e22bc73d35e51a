// Proves every `spool` command's output (for people and with --json) and exit statuses, run in process through run(argv, io).
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Broker } from '../../src/broker/broker.js';
import { run } from '../../src/cli/main.js';
import { ERROR_CODES } from '../../src/errors.js';
import { cli, fakeIo, tempDir, waitFor } from './helpers.js';

let dir: string;
let data: string;
const d = () => ['--data', data];

beforeEach(() => {
  dir = tempDir();
  data = path.join(dir, 'data');
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const lines = (s: string) => s.split('\n').filter((l) => l.length > 0);
const jsonLines = (s: string) => lines(s).map((l) => JSON.parse(l) as Record<string, unknown>);

describe('help and exit statuses', () => {
  it('prints help with examples for the program and every command', async () => {
    const top = await cli(['--help']);
    expect(top.code).toBe(0);
    expect(top.out).toContain('Usage: spool');
    expect(top.out).toContain('Examples:');
    const leaves = [
      ['serve'], ['produce'], ['consume'], ['queue', 'create'], ['queue', 'list'], ['queue', 'delete'], ['queue', 'purge'], ['queue', 'stats'],
      ['exchange', 'create'], ['exchange', 'list'], ['exchange', 'delete'], ['bind'], ['unbind'], ['dlq', 'list'], ['dlq', 'replay'],
      ['stats'], ['cancel'], ['tail'], ['verify'], ['repair'],
    ];
    for (const cmd of leaves) {
      const r = await cli([...cmd, '--help']);
      expect(r.code, cmd.join(' ')).toBe(0);
      expect(r.out, cmd.join(' ')).toMatch(/Examples:\n\s+\$ spool /);
      expect(r.out, cmd.join(' ')).toContain('--data <dir>');
      expect(r.out, cmd.join(' ')).toContain('--broker <url>');
      expect(r.out, cmd.join(' ')).toContain('--json');
    }
    const viaHelp = await cli(['help', 'queue', 'create']);
    expect(viaHelp.code).toBe(0);
    expect(viaHelp.out).toContain('Usage: spool queue create');
  });

  it('documents every error code with its exit status in `spool help exit-codes`', async () => {
    const human = await cli(['help', 'exit-codes']);
    expect(human.code).toBe(0);
    for (const code of Object.keys(ERROR_CODES)) expect(human.out).toContain(code);
    expect(human.out).toMatch(/2\s+usage error/);
    const json = await cli(['help', 'exit-codes', '--json']);
    const parsed = JSON.parse(json.out) as { statuses: { status: number }[]; codes: { code: string; exit: number }[] };
    expect(parsed.statuses.map((s) => s.status)).toEqual([0, 1, 2, 130]);
    expect(parsed.codes).toHaveLength(Object.keys(ERROR_CODES).length);
    expect(parsed.codes.find((c) => c.code === 'SPOOL_ERR_NOT_FOUND')?.exit).toBe(1);
  });

  it('exits 2 on usage errors', async () => {
    for (const argv of [
      ['bogus'],
      ['queue', 'list', '--nope'],
      ['consume'],
      ['consume', 'q', '--ack', 'maybe'],
      ['consume', 'q', '--count', 'x'],
      ['produce', '-k', 'key', ...d()],
      ['produce', 'q', '-k', 'key', 'm', ...d()],
      ['produce', 'q', '--delay', 'soon', 'm'],
      ['tail', 'q', '--from', 'yesterday', ...d()],
      ['help', 'nothing-here'],
      ['queue'],
    ]) {
      const r = await cli(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err.length, argv.join(' ')).toBeGreaterThan(0);
      expect(r.out, argv.join(' ')).toBe('');
    }
  });

  it('exits 1 with `spool: CODE: message` for a SpoolError, and 2 for an invalid name', async () => {
    const r = await cli(['queue', 'stats', 'nope', ...d()]);
    expect(r.code).toBe(1);
    expect(r.err).toBe('spool: SPOOL_ERR_NOT_FOUND: no queue nope\n');
    expect(r.out).toBe('');
    const bad = await cli(['queue', 'create', 'bad name!', ...d()]);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/^spool: SPOOL_ERR_INVALID_NAME: /);
  });
});

describe('queues, exchanges and bindings', () => {
  it('creates, lists, inspects and deletes queues', async () => {
    const created = await cli(['queue', 'create', 'orders', '--delivery-limit', '5', ...d()]);
    expect(created).toEqual({ code: 0, out: 'queue orders: 0 messages, 0 consumers\n', err: '' });
    const again = await cli(['queue', 'create', 'orders', '--json', ...d()]);
    expect(again.code).toBe(2 - 1); // options differ from the declaration: PRECONDITION
    expect(again.err).toMatch(/^spool: SPOOL_ERR_PRECONDITION: /);
    expect((await cli(['queue', 'create', 'billing', '--json', ...d()])).out).toBe('{\n  "queue": "billing",\n  "messageCount": 0,\n  "consumerCount": 0\n}\n');
    await cli(['produce', 'orders', 'a', 'b', ...d()]);

    const list = await cli(['queue', 'list', ...d()]);
    expect(list.out).toBe('QUEUE    DEPTH  GROUPS  CONSUMERS  IN FLIGHT\nbilling      0       0          0          0\norders       2       0          0          0\n');
    const listJson = JSON.parse((await cli(['queue', 'list', '--json', ...d()])).out);
    expect(listJson).toEqual([
      { name: 'billing', depth: 0, groups: 0, consumers: 0, inFlight: 0 },
      { name: 'orders', depth: 2, groups: 0, consumers: 0, inFlight: 0 },
    ]);

    await cli(['consume', 'orders', '--count', '1', ...d()]);
    const stats = await cli(['queue', 'stats', 'orders', ...d()]);
    expect(stats.out).toBe('queue orders: depth 1, offsets 0..2\nGROUP    COMMITTED  LAG  IN FLIGHT  CONSUMERS\ndefault          1    1          0          0\n');
    const statsJson = JSON.parse((await cli(['queue', 'stats', 'orders', '--json', ...d()])).out);
    expect(statsJson).toMatchObject({ queue: 'orders', depth: 1, startOffset: 0, endOffset: 2, groups: { default: { committed: 1, lag: 1 } } });

    expect(await cli(['queue', 'delete', 'billing', ...d()])).toEqual({ code: 0, out: 'deleted queue billing\n', err: '' });
    expect(JSON.parse((await cli(['queue', 'delete', 'orders', '--json', ...d()])).out)).toEqual({ queue: 'orders', deleted: true });
    expect((await cli(['queue', 'list', ...d()])).out).toBe('no queues\n');
  });

  it('purges a queue, keeping its options and bindings, and says how', async () => {
    await cli(['exchange', 'create', 'events', '--type', 'topic', ...d()]);
    await cli(['queue', 'create', 'orders', '--max-length', '100', ...d()]);
    await cli(['bind', 'orders', 'events', 'order.*', ...d()]);
    await cli(['produce', '-e', 'events', '-k', 'order.new', 'x', 'y', 'z', ...d()]);
    const r = await cli(['queue', 'purge', 'orders', ...d()]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^purged 3 messages from orders/);
    const json = JSON.parse((await cli(['queue', 'purge', 'orders', '--json', ...d()])).out);
    expect(json).toMatchObject({ queue: 'orders', purged: 0 });
    expect((await cli(['queue', 'stats', 'orders', '--json', ...d()])).out).toContain('"depth": 0');
    // Options and the binding survived: the same declaration is accepted, and routing still works.
    expect((await cli(['queue', 'create', 'orders', '--max-length', '100', ...d()])).code).toBe(0);
    expect((await cli(['produce', '-e', 'events', '-k', 'order.paid', 'p', ...d()])).out).toMatch(/^confirmed \S+ -> orders\n$/);
  });

  it('creates, lists and deletes exchanges; binds and unbinds', async () => {
    expect(await cli(['exchange', 'create', 'events', '--type', 'topic', ...d()])).toEqual({ code: 0, out: 'exchange events (topic)\n', err: '' });
    expect(JSON.parse((await cli(['exchange', 'create', 'all', '--type', 'fanout', '--json', ...d()])).out)).toEqual({ exchange: 'all', type: 'fanout' });
    expect((await cli(['exchange', 'create', 'x', '--type', 'weird', ...d()])).code).toBe(2);
    await cli(['queue', 'create', 'billing', ...d()]);
    expect(await cli(['bind', 'billing', 'events', 'order.*', ...d()])).toEqual({ code: 0, out: 'bound billing to events with "order.*"\n', err: '' });
    expect(JSON.parse((await cli(['bind', 'billing', 'all', '--json', ...d()])).out)).toEqual({ queue: 'billing', exchange: 'all', pattern: '', bound: true });
    const list = await cli(['exchange', 'list', ...d()]);
    expect(list.out).toBe('EXCHANGE  TYPE    BINDINGS           ALTERNATE\nall       fanout  billing            -\nevents    topic   billing (order.*)  -\n');
    const listJson = JSON.parse((await cli(['exchange', 'list', '--json', ...d()])).out);
    expect(listJson[1]).toEqual({ name: 'events', type: 'topic', alternateExchange: null, bindings: [{ queue: 'billing', pattern: 'order.*' }] });
    expect(await cli(['unbind', 'billing', 'events', 'order.*', ...d()])).toEqual({ code: 0, out: 'unbound billing from events ("order.*")\n', err: '' });
    expect(JSON.parse((await cli(['unbind', 'billing', 'all', '--json', ...d()])).out)).toEqual({ queue: 'billing', exchange: 'all', pattern: '', bound: false });
    expect((await cli(['produce', '-e', 'events', '-k', 'order.new', 'lost', ...d()])).out).toMatch(/^unroutable /);
    expect(await cli(['exchange', 'delete', 'events', ...d()])).toEqual({ code: 0, out: 'deleted exchange events\n', err: '' });
    expect((await cli(['exchange', 'delete', 'events', ...d()])).err).toBe('spool: SPOOL_ERR_NOT_FOUND: no exchange events\n');
  });
});

describe('produce', () => {
  it('prints one confirmation per message, as text or JSON lines', async () => {
    await cli(['queue', 'create', 'orders', ...d()]);
    const one = await cli(['produce', 'orders', 'hello', '--id', 'm-1', ...d()]);
    expect(one).toEqual({ code: 0, out: 'confirmed m-1 -> orders\n', err: '' });
    const dup = await cli(['produce', 'orders', 'hello', '--id', 'm-1', '--json', ...d()]);
    expect(jsonLines(dup.out)).toEqual([{ n: 1, id: 'm-1', status: 'duplicate', queues: ['orders'] }]);
    const many = await cli(['produce', 'orders', 'a', 'b', 'c', '--id', 'batch', '--header', 'source=test', '--header', 'k=v=w', '--json', ...d()]);
    expect(jsonLines(many.out)).toEqual([
      { n: 1, id: 'batch.1', status: 'confirmed', queues: ['orders'] },
      { n: 2, id: 'batch.2', status: 'confirmed', queues: ['orders'] },
      { n: 3, id: 'batch.3', status: 'confirmed', queues: ['orders'] },
    ]);
    expect(many.err).toBe('spool: 3 published (3 confirmed, 0 duplicate, 0 unroutable)\n');
    const consumed = jsonLines((await cli(['consume', 'orders', '--count', '4', '--json', ...d()])).out);
    expect(consumed.map((m) => m.body)).toEqual(['hello', 'a', 'b', 'c']);
    expect(consumed[1]?.headers).toEqual({ source: 'test', k: 'v=w' });
  });

  it('reads one message per line from stdin', async () => {
    await cli(['queue', 'create', 'orders', ...d()]);
    const r = await cli(['produce', 'orders', '--json', ...d()], { stdin: 'one\ntwo\r\nthree\n' });
    expect(r.code).toBe(0);
    expect(jsonLines(r.out).map((c) => c.status)).toEqual(['confirmed', 'confirmed', 'confirmed']);
    const c = await cli(['consume', 'orders', '--count', '3', ...d()]);
    expect(c.out).toBe('one\ntwo\nthree\n');
  });

  it('publishes through an exchange, and schedules with --delay (cancel drops it)', async () => {
    await cli(['exchange', 'create', 'events', '--type', 'direct', ...d()]);
    await cli(['queue', 'create', 'orders', '--dead-letter-exchange', 'events', ...d()]);
    await cli(['bind', 'orders', 'events', 'new', ...d()]);
    expect((await cli(['produce', '-e', 'events', '-k', 'new', 'x', ...d()])).out).toMatch(/^confirmed \S+ -> orders\n$/);
    const later = await cli(['produce', 'orders', 'later', '--delay', '1h', '--id', 'remind', '--ttl', '5m', ...d()]);
    expect(later.code).toBe(0);
    expect(later.out).toMatch(/^scheduled remind for \d{4}-\d\d-\d\dT/);
    const json = jsonLines((await cli(['produce', 'orders', 'l2', '--delay', '2h', '--id', 'remind-2', '--json', ...d()])).out)[0];
    expect(json).toMatchObject({ id: 'remind-2', status: 'confirmed', queues: [] });
    expect(typeof json?.deliverAt).toBe('number');
    expect(await cli(['cancel', 'remind', ...d()])).toEqual({ code: 0, out: 'cancelled remind\n', err: '' });
    expect(JSON.parse((await cli(['cancel', 'remind', '--json', ...d()])).out)).toEqual({ id: 'remind', cancelled: false });
  });

  it('fails with the broker error for a missing queue', async () => {
    const r = await cli(['produce', 'nowhere', 'x', ...d()]);
    expect(r.code).toBe(1);
    expect(r.err).toBe('spool: SPOOL_ERR_NOT_FOUND: no queue nowhere\n');
  });
});

describe('consume', () => {
  it('prints values or JSON, stops at --count, and hands back what it did not print', async () => {
    await cli(['queue', 'create', 'q', ...d()]);
    await cli(['produce', 'q', 'a', 'b', 'c', 'd', 'e', ...d()]);
    const first = await cli(['consume', 'q', '--count', '2', '--prefetch', '10', ...d()]);
    expect(first.code).toBe(0);
    expect(first.out).toBe('a\nb\n');
    expect(first.err).toContain('spool: consumed 2 messages\n');
    const rest = await cli(['consume', 'q', '--count', '3', '--format', 'json', '--ack', 'manual', ...d()]);
    const msgs = jsonLines(rest.out);
    expect(msgs.map((m) => m.body)).toEqual(['c', 'd', 'e']);
    expect(msgs[0]).toMatchObject({ queue: 'q', group: 'default', offset: 2, exchange: '', routingKey: 'q', headers: {} });
    const stats = JSON.parse((await cli(['queue', 'stats', 'q', '--json', ...d()])).out);
    expect(stats.groups.default).toMatchObject({ committed: 5, lag: 0, inFlight: 0 });
  });

  it('gives each group every message, starts new groups at --from, and supports ack none', async () => {
    await cli(['queue', 'create', 'q', ...d()]);
    await cli(['produce', 'q', 'a', 'b', ...d()]);
    expect((await cli(['consume', 'q', '--group', 'g1', '--count', '2', '--ack', 'none', ...d()])).out).toBe('a\nb\n');
    expect((await cli(['consume', 'q', '--group', 'g2', '--count', '1', '--from', '1', ...d()])).out).toBe('b\n');
    await new Promise((r) => setTimeout(r, 20));
    const since = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 20));
    await cli(['produce', 'q', 'c', ...d()]);
    expect((await cli(['consume', 'q', '--group', 'g3', '--count', '1', '--from', since, ...d()])).out).toBe('c\n');
    const stats = JSON.parse((await cli(['queue', 'stats', 'q', '--json', ...d()])).out);
    expect(stats.groups).toMatchObject({ g1: { lag: 1 }, g2: { committed: 2, lag: 1 }, g3: { committed: 3, lag: 0 } });
  });

  it('creates a missing queue, runs until interrupted, and keeps its acks', async () => {
    const f = fakeIo();
    const running = run(['consume', 'fresh', ...d()], f.io);
    await waitFor('consume to start', () => f.err().includes('consuming fresh'));
    expect(f.err()).toContain('spool: created queue fresh\n');
    // The consumer serves the data dir: another command joins it over the socket.
    const p = await cli(['produce', 'fresh', 'hello', 'world', ...d()]);
    expect(p.code).toBe(0);
    await waitFor('two messages', () => f.out() === 'hello\nworld\n');
    f.interrupt();
    expect(await running).toBe(0);
    expect(f.err()).toContain('spool: consumed 2 messages\n');
    const stats = JSON.parse((await cli(['queue', 'stats', 'fresh', '--json', ...d()])).out);
    expect(stats.groups.default).toMatchObject({ committed: 2, lag: 0 });
  });
});

describe('dead letters', () => {
  async function deadLetters(n: number) {
    const broker = await Broker.open({ dataDir: data });
    try {
      await broker.assertExchange('dlx', 'fanout');
      await broker.assertQueue('work.dlq');
      await broker.bindQueue('work.dlq', 'dlx');
      await broker.assertQueue('work', { deadLetterExchange: 'dlx' });
      for (let i = 0; i < n; i++) await broker.sendToQueue('work', `job-${i}`, { id: `job-${i}` });
      let nacked = 0;
      const c = await broker.consume(
        'work',
        async (msg) => {
          await msg.nack({ requeue: false });
          nacked++;
        },
        { ack: 'manual' },
      );
      await waitFor('dead letters', () => nacked === n && broker.queueStats('work.dlq').depth === n);
      await c.close();
    } finally {
      await broker.close();
    }
  }

  it('lists dead letters with their reason, and replays them', async () => {
    await deadLetters(3);
    const list = await cli(['dlq', 'list', 'work', ...d()]);
    expect(list.code).toBe(0);
    expect(list.out).toMatch(/^work\.dlq: 3 dead letters\nOFFSET\s+TIME\s+ID\s+REASON\s+FROM\s+COUNT\s+BODY\n/);
    expect(list.out).toMatch(/job-0\s+rejected\s+work\s+1\s+job-0/);
    const json = JSON.parse((await cli(['dlq', 'list', 'work.dlq', '--limit', '2', '--json', ...d()])).out);
    expect(json.deadLetterExchange).toBeNull();
    expect(json.queues[0]).toMatchObject({ queue: 'work.dlq', total: 3 });
    expect(json.queues[0].messages.map((m: { body: string; reason: string }) => [m.body, m.reason])).toEqual([
      ['job-0', 'rejected'],
      ['job-1', 'rejected'],
    ]);

    const one = await cli(['dlq', 'replay', 'work', '--limit', '1', ...d()]);
    expect(one).toEqual({ code: 0, out: 'replayed 1 from work.dlq; 2 remain\n', err: '' });
    const rest = JSON.parse((await cli(['dlq', 'replay', 'work', '--to-queue', 'work', '--json', ...d()])).out);
    expect(rest).toEqual([{ queue: 'work.dlq', replayed: 2, remaining: 0 }]);
    expect((await cli(['dlq', 'list', 'work', ...d()])).out).toBe('work.dlq: 0 dead letters\n');
    const back = await cli(['consume', 'work', '--count', '3', ...d()]);
    expect(lines(back.out).sort()).toEqual(['job-0', 'job-1', 'job-2']);
  });
});

describe('stats', () => {
  it('reports depth, lag per group, in flight and counters', async () => {
    await cli(['queue', 'create', 'q', ...d()]);
    await cli(['produce', 'q', 'a', 'b', 'c', ...d()]);
    await cli(['consume', 'q', '--group', 'g', '--count', '1', ...d()]);
    const human = await cli(['stats', ...d()]);
    expect(human.code).toBe(0);
    expect(human.out).toMatch(/^broker: 1 queues, 0 exchanges; published 0, /);
    expect(human.out).toContain('(rates: none sampled)');
    expect(human.out).toMatch(/QUEUE\s+DEPTH\s+IN\s+GROUP\s+LAG\s+IN FLIGHT\s+CONSUMERS\s+ACKED\nq\s+2\s+-\s+g\s+2\s+0\s+0\s+-\n/);
    const json = JSON.parse((await cli(['stats', '--json', '--interval', '50', ...d()])).out);
    expect(json.queues).toEqual([{ queue: 'q', depth: 2, startOffset: 0, endOffset: 3, inRate: 0, groups: [{ group: 'g', committed: 1, lag: 2, inFlight: 0, consumers: 0, ackRate: 0 }] }]);
    expect(json.publishRate).toBe(0);
  });
});

describe('tail', () => {
  it('prints the last records from the files, as text or JSON', async () => {
    await cli(['queue', 'create', 'q', ...d()]);
    const bodies = Array.from({ length: 12 }, (_, i) => `m${i}`);
    await cli(['produce', 'q', ...bodies, '--id', 't', ...d()]);
    const last = await cli(['tail', 'q', ...d()]);
    expect(last.code).toBe(0);
    expect(lines(last.out)).toHaveLength(10);
    expect(lines(last.out)[0]).toMatch(/^2\t\d{4}-\d\d-\d\dT[\d:.]+Z\tt\.3\tq\tm2$/);
    const two = jsonLines((await cli(['tail', 'q', '-n', '2', '--json', ...d()])).out);
    expect(two).toEqual([
      expect.objectContaining({ offset: 10, id: 't.11', exchange: '', routingKey: 'q', headers: {}, body: 'm10' }),
      expect.objectContaining({ offset: 11, id: 't.12', body: 'm11' }),
    ]);
    expect(lines((await cli(['tail', 'q', '--from', 'earliest', ...d()])).out)).toHaveLength(12);
    expect((await cli(['tail', 'q', '--from', '11', ...d()])).out).toMatch(/\tm11\n$/);
    expect((await cli(['tail', 'q', '--from', 'latest', ...d()])).out).toBe('');
    const missing = await cli(['tail', 'nope', ...d()]);
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/^spool: SPOOL_ERR_NOT_FOUND: no queue nope in /);
  });

  it('follows new records until interrupted', async () => {
    await cli(['queue', 'create', 'q', ...d()]);
    await cli(['produce', 'q', 'old', ...d()]);
    const f = fakeIo();
    const running = run(['tail', 'q', '-f', '--json', ...d()], f.io);
    await waitFor('the old record', () => f.out().includes('"old"'));
    await cli(['produce', 'q', 'new1', 'new2', ...d()]);
    await waitFor('new records', () => f.out().includes('"new2"'));
    f.interrupt();
    expect(await running).toBe(0);
    expect(jsonLines(f.out()).map((r) => r.body)).toEqual(['old', 'new1', 'new2']);
  });
});

describe('verify and repair', () => {
  function segmentOf(queue: string): string {
    const dirPath = path.join(data, 'queues', queue, 'messages');
    return path.join(dirPath, fs.readdirSync(dirPath).find((n) => n.endsWith('.log')) as string);
  }

  it('reports every log as good, and exits 1 naming the bad range after a flipped byte', async () => {
    await cli(['queue', 'create', 'q', ...d()]);
    for (const m of ['first', 'second', 'third']) await cli(['produce', 'q', m, ...d()]);
    await cli(['consume', 'q', '--count', '1', ...d()]);
    const good = await cli(['verify', ...d()]);
    expect(good.code).toBe(0);
    expect(good.out).toMatch(/^ok  queues\/q\/groups\/default: 1 segment, \d+ records, \d+ bytes\nok  queues\/q\/messages: 1 segment, 3 records, \d+ bytes\n2 logs verified, all good\n$/);
    const goodJson = JSON.parse((await cli(['verify', '--json', ...d()])).out);
    expect(goodJson).toMatchObject({ ok: true, logs: [{ log: 'queues/q/groups/default', ok: true }, { log: 'queues/q/messages', ok: true, records: 3, badRanges: [] }] });

    const seg = segmentOf('q');
    const bytes = fs.readFileSync(seg);
    const at = bytes.indexOf('second');
    bytes[at] = bytes[at]! ^ 0xff;
    fs.writeFileSync(seg, bytes);
    const bad = await cli(['verify', ...d()]);
    expect(bad.code).toBe(1);
    expect(bad.out).toMatch(/BAD queues\/q\/messages: .*\n    bad bytes \d+\.\.\d+ in queues\/q\/messages\/0+\.log: invalid batch: bad-crc\n/);
    expect(bad.err).toBe(`spool: SPOOL_ERR_CORRUPT: 1 log under ${data} has bad data\n`);
    const badJson = await cli(['verify', '--json', ...d()]);
    expect(badJson.code).toBe(1);
    expect(JSON.parse(badJson.out).logs[1].badRanges[0]).toMatchObject({ reason: 'invalid batch: bad-crc' });
  });

  it('repair truncates a torn tail and reports it; verify treats a torn tail as not yet written', async () => {
    await cli(['queue', 'create', 'q', ...d()]);
    await cli(['produce', 'q', 'a', 'b', ...d()]);
    fs.appendFileSync(segmentOf('q'), Buffer.from([200, 0, 0, 0, 1, 2, 3]));
    const v = await cli(['verify', '--json', ...d()]);
    expect(v.code).toBe(0);
    expect(JSON.parse(v.out).logs[0].tornTail).toMatchObject({ bytes: 7 });
    const r = await cli(['repair', ...d()]);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^queues\/q\/messages: truncated 7 bytes at byte \d+ of 0+\.log \(/);
    expect(r.out).toMatch(/1 logs checked\n$/);
    const again = JSON.parse((await cli(['repair', '--json', ...d()])).out);
    expect(again.logs[0]).toMatchObject({ log: 'queues/q/messages', truncatedBytes: 0, error: null, stillBad: 0 });
    expect((await cli(['consume', 'q', '--count', '2', ...d()])).out).toBe('a\nb\n');
  });

  it('repair refuses a data dir a broker holds', async () => {
    const broker = await Broker.open({ dataDir: data });
    try {
      const r = await cli(['repair', ...d()]);
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/^spool: SPOOL_ERR_LOCKED: /);
    } finally {
      await broker.close();
    }
  });
});

describe('serve, --broker and terminals', () => {
  it('serves the data dir until interrupted; other commands find it or take --broker', async () => {
    const f = fakeIo();
    const serving = run(['serve', '--tcp', '0', '--json', ...d()], f.io);
    await waitFor('serve to listen', () => f.out().length > 0);
    const where = JSON.parse(f.out()) as { socket: string; tcp: string; pid: number };
    expect(where).toMatchObject({ socket: path.join(data, 'spool.sock'), pid: process.pid });
    expect(where.tcp).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    expect(f.err()).toContain(`spool: serving ${data} (pid ${process.pid}) on unix://${where.socket} and ${where.tcp}; Ctrl-C to stop\n`);
    expect(JSON.parse(fs.readFileSync(path.join(data, 'LOCK'), 'utf8')).serving.socket).toBe(where.socket);

    expect((await cli(['queue', 'create', 'q', ...d()])).code).toBe(0); // found through the LOCK
    expect((await cli(['produce', 'q', 'over-tcp', '--broker', where.tcp])).code).toBe(0);
    const viaSocket = await cli(['queue', 'list', '--json', '--broker', `unix://${where.socket}`]);
    expect(JSON.parse(viaSocket.out)).toEqual([{ name: 'q', depth: 1, groups: 0, consumers: 0, inFlight: 0 }]);
    const stats = JSON.parse((await cli(['stats', '--json', '--interval', '100', ...d()])).out);
    expect(stats.intervalMs).toBeGreaterThanOrEqual(90);

    f.interrupt();
    expect(await serving).toBe(0);
    expect(f.err()).toContain('spool: stopped cleanly\n');
    expect(fs.existsSync(path.join(data, 'LOCK'))).toBe(false);
    const refused = await cli(['queue', 'list', '--broker', `unix://${where.socket}`]);
    expect(refused.code).toBe(1);
    expect(refused.err).toMatch(/^spool: SPOOL_ERR_/);
  });

  it('--segment-bytes sets where queue logs roll; outside 1 KiB..1 GiB it is a usage error', async () => {
    const f = fakeIo();
    const serving = run(['serve', '--segment-bytes', '65536', '--json', ...d()], f.io);
    await waitFor('serve to listen', () => f.out().length > 0);
    expect((await cli(['queue', 'create', 'q', ...d()])).code).toBe(0);
    // Five publishes of 40 KiB, one at a time: no two fit in one 64 KiB segment.
    for (let i = 0; i < 5; i++) expect((await cli(['produce', 'q', `${i}`.padEnd(40_000, 'x'), ...d()])).code).toBe(0);
    const segments = fs.readdirSync(path.join(data, 'queues', 'q', 'messages')).filter((n) => n.endsWith('.log'));
    expect(segments.length).toBe(5);
    f.interrupt();
    expect(await serving).toBe(0);
    for (const bad of ['1023', '1073741825', 'lots']) {
      const r = await cli(['serve', '--segment-bytes', bad, ...d()]);
      expect(r.code, bad).toBe(2);
      expect(r.err).toContain('--segment-bytes');
    }
  });

  it('refuses a non-loopback TCP address without a token (usage error)', async () => {
    const r = await cli(['serve', '--tcp', '0', '--host', '0.0.0.0', ...d()]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('needs --token');
  });

  it('colors tables only on a terminal, and never with NO_COLOR', async () => {
    await cli(['queue', 'create', 'q', ...d()]);
    const tty = await cli(['queue', 'list', ...d()], { outIsTTY: true });
    expect(tty.out).toContain('\u001b[1mQUEUE');
    const noColor = await cli(['queue', 'list', ...d()], { outIsTTY: true, env: { NO_COLOR: '1' } });
    expect(noColor.out).not.toContain('\u001b[');
    const pipe = await cli(['queue', 'list', ...d()]);
    expect(pipe.out).not.toContain('\u001b[');
  });

  it('draws progress bars on stderr only when it is a terminal, leaving stdout as it is', async () => {
    const drawn: string[] = [];
    const tty = Object.assign(
      new Writable({
        write(chunk, _enc, cb) {
          drawn.push(String(chunk));
          cb();
        },
      }),
      { isTTY: true, columns: 100 },
    ) as unknown as NodeJS.WriteStream;
    await cli(['queue', 'create', 'q', ...d()]);
    const input = Array.from({ length: 50 }, (_, i) => `line-${i}`).join('\n');
    const plain = await cli(['produce', 'q', '--id', 'p', ...d()], { stdin: input });
    const withBar = await cli(['produce', 'q', '--id', 'p', ...d()], { stdin: input, errTTY: tty });
    expect(withBar.out).toBe(plain.out.replace(/confirmed (p\.\d+) -> q/g, 'duplicate $1 (already stored; not stored again)'));
    expect(drawn.join('')).toContain('publishing');
    drawn.length = 0;
    const v = await cli(['verify', ...d()], { errTTY: tty });
    expect(v.code).toBe(0);
    expect(v.out).toBe((await cli(['verify', ...d()])).out);
    expect(drawn.join('')).toContain('verifying');
  });
});

describe('version', () => {
  it('prints the package version', async () => {
    const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(await cli(['--version'])).toEqual({ code: 0, out: `${pkg.version}\n`, err: '' });
  });
});
