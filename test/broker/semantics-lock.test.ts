// Semantics of data-dir ownership: one live owner (across and within processes), stale locks taken over.
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Broker } from '../../src/broker/broker.js';
import { BrokerHarness, DIST_BROKER, Inbox, assertDistFresh, expectCode } from '../support/broker-helpers.js';

const h = new BrokerHarness();
afterEach(() => h.cleanup());
beforeAll(() => assertDistFresh());

const run = promisify(execFile);

/** Inline ESM run by a child `node`: opens the data dir with the compiled broker and reports the outcome as JSON. */
const CHILD = `
import { pathToFileURL } from 'node:url';
const { Broker } = await import(pathToFileURL(process.env.SPOOL_DIST).href);
try {
  const b = await Broker.open({ dataDir: process.env.SPOOL_DATA });
  const queues = b.listQueues();
  await b.close();
  console.log(JSON.stringify({ ok: true, queues }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, code: e.code, message: e.message }));
}
`;

async function openInChild(dataDir: string): Promise<{ ok: boolean; code?: string; message?: string; queues?: string[] }> {
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', CHILD], {
    env: { ...process.env, SPOOL_DIST: DIST_BROKER, SPOOL_DATA: dataDir },
    timeout: 20_000,
  });
  return JSON.parse(stdout.trim().split('\n').pop() as string);
}

/** The pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', '']);
  const pid = child.pid as number;
  await new Promise<void>((resolve) => child.once('exit', () => resolve()));
  expect(() => process.kill(pid, 0)).toThrow();
  return pid;
}

describe('one owner per data dir', () => {
  it("a second Broker.open in another process fails SPOOL_ERR_LOCKED naming the owner's pid", async () => {
    // Proves the cross-process lock: while this process owns the dir, a child's open fails LOCKED with our pid in the message; the LOCK file and our broker are untouched; after close the child opens it.
    const b = await h.openBroker();
    await b.assertQueue('q');
    const lockFile = path.join(b.dataDir, 'LOCK');
    const lockBefore = fs.readFileSync(lockFile, 'utf8');
    expect(JSON.parse(lockBefore).pid).toBe(process.pid);
    const r = await openInChild(b.dataDir);
    expect(r.ok).toBe(false);
    expect(r.code).toBe('SPOOL_ERR_LOCKED');
    expect(r.message).toMatch(new RegExp(`\\bpid ${process.pid}\\b`));
    expect(fs.readFileSync(lockFile, 'utf8')).toBe(lockBefore);
    expect((await b.sendToQueue('q', 'still mine')).status).toBe('confirmed');
    await h.close(b);
    expect(fs.existsSync(lockFile)).toBe(false);
    const after = await openInChild(b.dataDir);
    expect(after).toEqual({ ok: true, queues: ['q'] });
  });

  it('a stale lock (dead pid, or a torn LOCK file) is taken over', async () => {
    // Proves stale-lock recovery: LOCK naming an exited process, then a LOCK of garbage, are both replaced by ours on open; the data is intact and close removes the LOCK.
    const dataDir = h.dir();
    let b = await h.openBroker({ dataDir });
    await b.assertQueue('q');
    await b.sendToQueue('q', 'kept');
    await h.close(b);
    const lockFile = path.join(dataDir, 'LOCK');
    for (const stale of [JSON.stringify({ pid: await deadPid(), startedAt: 'x' }), '{"pid":']) {
      fs.writeFileSync(lockFile, stale);
      b = await h.openBroker({ dataDir });
      expect(JSON.parse(fs.readFileSync(lockFile, 'utf8')).pid).toBe(process.pid);
      expect(b.queueStats('q').endOffset).toBe(1);
      await h.close(b);
      expect(fs.existsSync(lockFile)).toBe(false);
    }
    b = await h.openBroker({ dataDir });
    const inbox = new Inbox();
    await b.consume('q', inbox.handler(), { group: 'g' });
    await inbox.waitForCount(1);
    expect(inbox.bodies()).toEqual(['kept']);
  });

  it('opening the same data dir twice in one process fails SPOOL_ERR_LOCKED and keeps the first owner', async () => {
    // Proves the in-process lock: the second open fails LOCKED (naming our pid), the first broker keeps working and keeps the lock (a child still sees it locked), and after close the dir opens again.
    const b = await h.openBroker();
    await b.assertQueue('q');
    const err = await expectCode(() => Broker.open({ dataDir: b.dataDir }), 'SPOOL_ERR_LOCKED');
    expect(err.message).toContain(String(process.pid));
    await expectCode(() => Broker.open({ dataDir: path.join(b.dataDir, '.', '') }), 'SPOOL_ERR_LOCKED');
    expect((await b.sendToQueue('q', 'x')).status).toBe('confirmed');
    expect(JSON.parse(fs.readFileSync(path.join(b.dataDir, 'LOCK'), 'utf8')).pid).toBe(process.pid);
    const child = await openInChild(b.dataDir);
    expect(child.code).toBe('SPOOL_ERR_LOCKED');
    await h.close(b);
    const again = await h.openBroker({ dataDir: b.dataDir });
    expect(again.queueStats('q').endOffset).toBe(1);
  });
});
