// Proves the compiled `spool` works across real processes: serve + produce + consume concurrently, the two-terminal newcomer path, and tail --follow seeing another process's appends.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { assertCliBuilt, cli, killSpawned, spool, tempDir, waitFor } from './helpers.js';

let dir: string;
let data: string;

beforeAll(() => assertCliBuilt());
beforeEach(() => {
  dir = tempDir('spool-e2e-');
  data = path.join(dir, 'data');
});
afterEach(() => {
  killSpawned();
  fs.rmSync(dir, { recursive: true, force: true });
});

const lines = (s: string) => s.split('\n').filter((l) => l.length > 0);

describe('spool processes', () => {
  it('serve, two producers and a consumer run concurrently; nothing is lost or doubled', async () => {
    const server = spool(['serve', '--data', data]);
    await waitFor('serve to listen', () => server.err().includes('Ctrl-C to stop'));
    expect(server.err()).toContain(`on unix://${path.join(data, 'spool.sock')}`);
    const create = spool(['queue', 'create', 'orders', '--data', data]);
    expect(await create.exited).toBe(0);

    const consumer = spool(['consume', 'orders', '--count', '40', '--format', 'json', '--data', data]);
    await waitFor('consumer to start', () => consumer.err().includes('consuming orders'));
    expect(consumer.err()).toContain(`via unix://${path.join(data, 'spool.sock')}`);
    const input = (tag: string) => Array.from({ length: 20 }, (_, i) => `${tag}-${i}`).join('\n') + '\n';
    const p1 = spool(['produce', 'orders', '--json', '--data', data], { stdin: input('a') });
    const p2 = spool(['produce', 'orders', '--data', data], { stdin: input('b') });
    expect(await p1.exited).toBe(0);
    expect(await p2.exited).toBe(0);
    expect(lines(p1.out())).toHaveLength(20);
    expect(lines(p1.out()).every((l) => (JSON.parse(l) as { status: string }).status === 'confirmed')).toBe(true);
    expect(lines(p2.out()).every((l) => l.startsWith('confirmed '))).toBe(true);

    expect(await consumer.exited).toBe(0);
    const bodies = lines(consumer.out()).map((l) => (JSON.parse(l) as { body: string }).body);
    expect(bodies.sort()).toEqual([...Array.from({ length: 20 }, (_, i) => `a-${i}`), ...Array.from({ length: 20 }, (_, i) => `b-${i}`)].sort());
    expect(consumer.err()).toContain('spool: consumed 40 messages');

    const stats = spool(['queue', 'stats', 'orders', '--json', '--data', data]);
    expect(await stats.exited).toBe(0);
    expect(JSON.parse(stats.out())).toMatchObject({ depth: 0, endOffset: 40, groups: { default: { committed: 40, lag: 0 } } });

    server.proc.kill('SIGTERM');
    expect(await server.exited).toBe(0);
    expect(server.err()).toContain('spool: stopped cleanly');
  });

  it('newcomer: `spool consume orders` in one terminal, `spool produce orders hello` in another', async () => {
    const consumer = spool(['consume', 'orders'], { cwd: dir });
    await waitFor('consumer to start', () => consumer.err().includes('Ctrl-C to stop'));
    const producer = spool(['produce', 'orders', 'hello'], { cwd: dir });
    expect(await producer.exited).toBe(0);
    expect(producer.out()).toMatch(/^confirmed \S+ -> orders\n$/);
    await waitFor('hello', () => consumer.out() === 'hello\n');
    consumer.proc.kill('SIGINT');
    expect(await consumer.exited).toBe(0);
    expect(consumer.err()).toContain('spool: created queue orders');
    expect(consumer.err()).toContain('spool: consumed 1 message\n');
    // The ack survived the Ctrl-C.
    const stats = await cli(['queue', 'stats', 'orders', '--json', '--data', data]);
    expect(JSON.parse(stats.out).groups.default).toMatchObject({ committed: 1, lag: 0 });
  });

  it('tail --follow prints records another process appends', async () => {
    const server = spool(['serve', '--data', data]);
    await waitFor('serve to listen', () => server.err().includes('Ctrl-C to stop'));
    expect(await spool(['queue', 'create', 'events', '--data', data]).exited).toBe(0);
    expect(await spool(['produce', 'events', 'before', '--data', data]).exited).toBe(0);
    const tail = spool(['tail', 'events', '--follow', '--json', '--data', data]);
    const state = () => `tail out ${JSON.stringify(tail.out())}, err ${JSON.stringify(tail.err())}, exit ${tail.proc.exitCode}; server err ${JSON.stringify(server.err())}`;
    await waitFor('the existing record', () => tail.out().includes('"before"'), 10_000, state);
    const producer = spool(['produce', 'events', 'after-1', 'after-2', '--data', data]);
    expect(await producer.exited).toBe(0);
    await waitFor('the new records', () => tail.out().includes('"after-2"'), 10_000, state);
    tail.proc.kill('SIGINT');
    expect(await tail.exited).toBe(0);
    expect(lines(tail.out()).map((l) => (JSON.parse(l) as { body: string; offset: number }).body)).toEqual(['before', 'after-1', 'after-2']);
    expect(tail.err()).not.toContain(' at byte '); // no bad data reported (a watch warning under inotify limits is fine)
    server.proc.kill('SIGTERM');
    expect(await server.exited).toBe(0);
  });

  it('exits 2 on a usage error and 1 with `spool: CODE: message` on a broker error', async () => {
    const usage = spool(['consume', '--data', data]);
    expect(await usage.exited).toBe(2);
    expect(usage.err()).toContain("error: missing required argument 'queue'");
    const missing = spool(['queue', 'stats', 'nope', '--data', data]);
    expect(await missing.exited).toBe(1);
    expect(missing.err()).toBe('spool: SPOOL_ERR_NOT_FOUND: no queue nope\n');
  });
});
