// Proves where and how safely the server listens: the unix socket is 0600 and replaces only a stale file, TCP stays on loopback unless remote access is explicitly allowed with a token, a token is enforced, and the data dir's LOCK advertises the addresses.
import { afterEach, describe, expect, it } from 'vitest';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { readLock } from '../../src/broker/lock.js';
import { connect } from '../../src/client/index.js';
import { isSpoolError } from '../../src/errors.js';
import { startServer } from '../../src/server/index.js';
import { FrameType } from '../../src/server/wire/constants.js';
import { RawClient, ServerHarness, frame, helloFrame } from './helpers.js';

const h = new ServerHarness();
afterEach(() => h.cleanup());

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return isSpoolError(err) ? err.code : `plain error: ${(err as Error).message}`;
  }
}

describe('unix socket', () => {
  it('lives in the data dir with mode 0600 and is removed on close', async () => {
    const { broker, server } = await h.served();
    expect(server.socketPath).toBe(path.join(broker.dataDir, 'spool.sock'));
    const st = fs.statSync(server.socketPath as string);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    // No staging directory is left behind.
    expect(fs.readdirSync(broker.dataDir).filter((n) => n.startsWith('.spool-sock'))).toEqual([]);
    expect(server.url).toBe(`unix://${server.socketPath}`);
    await server.close();
    expect(fs.existsSync(server.socketPath as string)).toBe(false);
  });

  it('replaces a stale socket file, refuses a live one and never removes a regular file', async () => {
    const dir = h.dir();
    const stalePath = path.join(dir, 'stale.sock');
    // A socket file whose server is gone. libuv unlinks on close, so keep a second link to it.
    const old = net.createServer();
    await new Promise<void>((resolve) => old.listen(stalePath, resolve));
    fs.linkSync(stalePath, `${stalePath}.keep`);
    await new Promise<void>((resolve) => old.close(() => resolve()));
    fs.renameSync(`${stalePath}.keep`, stalePath);
    fs.writeFileSync(path.join(dir, 'keep'), 'not a socket');
    expect(fs.statSync(stalePath).isSocket()).toBe(true);
    const b1 = await h.broker();
    const s1 = await h.serve(b1, { socketPath: stalePath });
    const c = await h.client(s1.url);
    expect(await c.listQueues()).toEqual([]);

    const b2 = await h.broker();
    expect(await codeOf(startServer(b2, { socketPath: stalePath }))).toBe('SPOOL_ERR_LOCKED');
    const regular = path.join(dir, 'keep');
    expect(await codeOf(startServer(b2, { socketPath: regular }))).toBe('SPOOL_ERR_INVALID_ARGUMENT');
    expect(fs.existsSync(regular)).toBe(true);
    expect(await codeOf(startServer(b2, { socketPath: `/tmp/${'x'.repeat(120)}.sock` }))).toBe('SPOOL_ERR_INVALID_ARGUMENT');
  });

  it("advertises its addresses in the data dir's LOCK for the CLI, and withdraws them on close", async () => {
    const { broker, server } = await h.served({}, { tcp: { port: 0 } });
    const info = readLock(broker.dataDir);
    expect(info?.pid).toBe(process.pid);
    expect(info?.serving).toEqual({ socket: server.socketPath, tcp: `tcp://127.0.0.1:${server.tcpAddress?.port}` });
    await server.close();
    expect(readLock(broker.dataDir)?.serving).toBeUndefined();
    await broker.close();
    // Closing the server after the broker never resurrects the LOCK.
    expect(readLock(broker.dataDir)).toBeNull();
  });
});

describe('TCP', () => {
  it('binds 127.0.0.1 by default; any other address needs allowRemote and a token', async () => {
    const broker = await h.broker();
    const s = await h.serve(broker, { socketPath: null, tcp: { port: 0 } });
    expect(s.tcpAddress?.host).toBe('127.0.0.1');
    expect(s.url).toBe(`tcp://127.0.0.1:${s.tcpAddress?.port}`);
    expect(await codeOf(startServer(broker, { socketPath: null, tcp: { host: '0.0.0.0', port: 0 } }))).toBe('SPOOL_ERR_INVALID_ARGUMENT');
    expect(await codeOf(startServer(broker, { socketPath: null, tcp: { host: '0.0.0.0', port: 0, token: 't' } }))).toBe('SPOOL_ERR_INVALID_ARGUMENT');
    expect(await codeOf(startServer(broker, { socketPath: null, tcp: { host: '10.1.2.3', port: 0 }, allowRemote: true }))).toBe('SPOOL_ERR_INVALID_ARGUMENT');
    expect(await codeOf(startServer(broker, { socketPath: null, tcp: { port: 70000 } }))).toBe('SPOOL_ERR_INVALID_ARGUMENT');
    expect(await codeOf(startServer(broker, { socketPath: null }))).toBe('SPOOL_ERR_INVALID_ARGUMENT');
  });

  it('with a token, a connection without it or with the wrong one is refused; the right one works', async () => {
    const broker = await h.broker();
    await broker.assertQueue('q');
    const s = await h.serve(broker, { socketPath: null, tcp: { port: 0, token: 's3cret-token' } });
    const url = `tcp://127.0.0.1:${s.tcpAddress?.port}`;
    expect(await codeOf(connect(url, { connectTimeoutMs: 2000 }))).toBe('SPOOL_ERR_UNAUTHORIZED');
    expect(await codeOf(connect(`${url}?token=wrong`, { connectTimeoutMs: 2000 }))).toBe('SPOOL_ERR_UNAUTHORIZED');
    expect(await codeOf(connect(url, { token: 's3cret-tokeN' }))).toBe('SPOOL_ERR_UNAUTHORIZED');
    const ok = await h.client(`${url}?token=s3cret-token`);
    expect(await ok.listQueues()).toEqual(['q']);
    const ok2 = await h.client(url, { token: 's3cret-token' });
    expect((await ok2.sendToQueue('q', 'x')).status).toBe('confirmed');

    // Raw: no request is served before a good HELLO, and the refusal says why.
    const raw = await RawClient.open({ host: '127.0.0.1', port: s.tcpAddress?.port as number });
    h.track(raw.socket);
    raw.send(helloFrame({ token: 'nope' }));
    raw.send(frame(FrameType.REQUEST, 1, JSON.stringify({ op: 'deleteQueue', args: ['q'] })));
    await raw.waitClosed();
    expect(raw.errors()).toEqual([{ requestId: 0, code: 'SPOOL_ERR_UNAUTHORIZED', message: 'wrong token' }]);
    expect(raw.frames.filter((f) => f.requestId === 1)).toEqual([]);
    expect(broker.listQueues()).toEqual(['q']);
  });

  it('connecting where nothing listens fails with SPOOL_ERR_DISCONNECTED', async () => {
    const dir = h.dir();
    expect(await codeOf(connect(path.join(dir, 'none.sock')))).toBe('SPOOL_ERR_DISCONNECTED');
    expect(await codeOf(connect('tcp://127.0.0.1:1'))).toBe('SPOOL_ERR_DISCONNECTED');
  });
});
