// The durability soak of soak/soak.ts, short: a real `spool serve` SIGKILLed several times while
// a client publishes (some delayed) and groups consume, one of them in worker processes that are
// SIGKILLed too. Nothing confirmed may be lost,
// stored twice or changed, no confirmed ack may be undone, a rejected message must be moved to
// the dead-letter queue once, a failing handler's message must be retried until it succeeds or
// is given up once, a message past its TTL must be dead-lettered once, and `spool verify` must
// pass.
// `npm run soak` runs the same for two minutes. (This soak found four bugs, fixed with it: a
// resend of a delayed publish after its message fired was stored again; a message that expired
// while the server was down was dropped at the restart, dead-lettered before the bindings were
// back; a cancel resolved true for a message routed just before a kill; and a resend arriving as
// its message fell due stored a second copy.)
import { beforeAll, describe, expect, it } from 'vitest';
import { runSoak } from '../../soak/soak.js';
import { assertDistFreshFor } from '../support/dist-fresh.js';

beforeAll(() => assertDistFreshFor(['src'], "the soak's server child"));

describe('the durability soak, short', () => {
  it('survives repeated SIGKILLs of the server: nothing confirmed lost, duplicated or changed', async () => {
    const r = await runSoak({ seconds: 8, killMinMs: 500, killMaxMs: 1500, workerKillMinMs: 800, workerKillMaxMs: 2000, startupKillFraction: 0.9, window: 32, seed: 7, drainTimeoutMs: 30_000 });
    expect(r.violations).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.url).toMatch(/^unix:\/\//);
    // It really did what it claims: several kills, each followed by a reconnect, with traffic
    // of every kind on both sides of them.
    expect(r.kills).toBeGreaterThanOrEqual(3);
    expect(r.reconnects).toBeGreaterThanOrEqual(r.kills);
    expect(r.workerKills).toBeGreaterThanOrEqual(3);
    expect(r.startupKills).toBeGreaterThanOrEqual(1);
    expect(r.confirmed).toBeGreaterThan(1000);
    // Some published without an id: the client's own ids (PUBLISH flag NEW_ID) across the kills.
    expect(r.confirmedClientIds).toBeGreaterThan(100);
    expect(r.delayed).toBeGreaterThan(50);
    expect(r.nacks).toBeGreaterThan(50);
    expect(r.rejects).toBeGreaterThan(10);
    expect(r.stored.dead).toBeGreaterThan(0);
    expect(r.stored.dead).toBeLessThanOrEqual(r.rejects);
    expect(r.retrierFailures).toBeGreaterThan(50);
    expect(r.stored.expired).toBeGreaterThan(50);
    // Each queue stored every confirmed message not cancelled, and nothing beyond the publishes
    // that failed or whose cancel was cut off.
    for (const stored of [r.stored.work, r.stored.audit, r.stored.retry]) {
      expect(stored).toBeGreaterThanOrEqual(r.confirmed - r.cancels.cancelled - r.cancels.unknown);
      expect(stored).toBeLessThanOrEqual(r.confirmed - r.cancels.cancelled + r.failed);
    }
    expect(r.batches).toBeGreaterThan(10);
    expect(r.cancels.cancelled).toBeGreaterThan(5);
  }, 120_000);

  it('over TCP with a token: the same checks hold', async () => {
    const r = await runSoak({ seconds: 5, killMinMs: 500, killMaxMs: 1500, workerKillMinMs: 800, workerKillMaxMs: 2000, window: 32, seed: 8, tcp: true, drainTimeoutMs: 30_000 });
    expect(r.violations).toEqual([]);
    expect(r.url).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+\?token=/);
    expect(r.kills).toBeGreaterThanOrEqual(2);
    expect(r.reconnects).toBeGreaterThanOrEqual(r.kills);
    expect(r.confirmed).toBeGreaterThan(500);
  }, 120_000);
});
