// Child-process side of test/broker/crash.test.ts, consumer half. It exports what every crash
// child shares (the stdout side channel, message bodies derivable from their ids, opening the
// broker, the two consumer groups) and, run directly, is the child of the final phases:
//   node crash-consumer.mjs '{"dataDir":…,"mode":"drain"}'   consume g1 and g2 until both have
//       nothing left, close the broker cleanly, print `DONE <queueStats json>`;
//   node crash-consumer.mjs '{"dataDir":…,"mode":"verify"}'  open again, consume for a while
//       (nothing may arrive), print `STAT <queueStats json>` and `DONE`.
// It imports the compiled library: run `npx tsc -p tsconfig.json` first (npm test does).
//
// Lines on stdout (a line counts only once complete):
//   O <pid> <pid in LOCK> <queue endOffset> <g1 committed> <g2 committed>   after open
//   D <group> <id> <offset> <deliveryCount> ok        a delivery whose body matched its id (written
//                                                     synchronously, before the ack starts)
//   BAD <group> <id> <offset> <reason>                a delivery whose body or id did not
//   A g1 <id>                                         after msg.ack() resolved 'acked'
//   X g1 <id> <status>                                msg.ack() resolved something else
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Broker } from '../../dist/src/broker/broker.js';

export const EXCHANGE = 'ex';
export const QUEUE = 'q';

// ---- stdout side channel: write(2) straight to fd 1, so a line is in the pipe once written.
let queued = [];
let scheduled = false;
let who = 'crash child';

function writeAll(text) {
  const buf = Buffer.from(text);
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(1, buf, off);
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
    }
  }
}

export function flushQueued() {
  scheduled = false;
  if (queued.length === 0) return;
  const text = queued.join('');
  queued = [];
  writeAll(text);
}

/** Queues a line (written on the next setImmediate, in order with every other line). */
export function emit(line) {
  queued.push(line);
  if (!scheduled) {
    scheduled = true;
    setImmediate(flushQueued);
  }
}

/** Writes a line (after everything queued) before returning. */
export function emitNow(line) {
  flushQueued();
  writeAll(line);
}

export function die(err) {
  try {
    flushQueued();
  } catch {}
  process.stderr.write(`${who}: ${err && err.stack ? err.stack : String(err)}\n`);
  process.exit(1);
}

export function installDie(name) {
  who = name;
  process.on('uncaughtException', die);
  process.on('unhandledRejection', die);
}

// ---- bodies: derivable from the id alone, 16..2063 bytes, so any corruption or mix-up shows.
export function bodyFor(id) {
  const digest = crypto.createHash('sha256').update(id).digest();
  const len = 16 + (((digest[0] << 8) | digest[1]) % 2048);
  const unit = Buffer.from(`${id}:${digest.toString('hex')};`);
  const out = Buffer.allocUnsafe(len);
  for (let p = 0; p < len; p += unit.length) unit.copy(out, p, 0, Math.min(unit.length, len - p));
  return out;
}

/** Why a delivered message is not what was published under its id, or null when it is. */
function badness(msg) {
  const id = msg.id;
  if (typeof id !== 'string' || !/^c\d+-\d+$/.test(id)) return `malformed-id:${JSON.stringify(String(id)).slice(0, 60)}`;
  const want = bodyFor(id);
  const body = msg.body;
  if (!Buffer.isBuffer(body)) return 'body-not-a-buffer';
  if (body.length !== want.length) return `body-length-${body.length}-want-${want.length}`;
  if (!body.equals(want)) return 'body-bytes-differ';
  if (msg.routingKey !== `k.${id}`) return `routing-key:${msg.routingKey}`;
  return null;
}

let lastDeliveryAt = Date.now();

function report(group, msg) {
  lastDeliveryAt = Date.now();
  const why = badness(msg);
  const id = String(msg.id).replace(/\s/g, '_') || '<empty>';
  // Written at once: the line is in the pipe before this delivery's ack can even be started, so a
  // delivery whose ack survives a kill was always reported.
  if (why === null) emitNow(`D ${group} ${id} ${msg.offset} ${msg.deliveryCount} ok\n`);
  else emitNow(`BAD ${group} ${id} ${msg.offset} ${why}\n`);
}

/**
 * Opens the broker (taking over a dead owner's lock), declares ex → q ('#'), reports `O`.
 * `options` go to Broker.open as well (segmentBytesMax, the internal storage seam).
 */
export async function openBroker(dataDir, options = {}) {
  const broker = await Broker.open({ ...options, dataDir });
  broker.on('error', (err) => {
    emitNow(`E ${String(err && err.message).replace(/\n/g, ' ')}\n`);
    die(err);
  });
  await broker.assertExchange(EXCHANGE, 'topic');
  await broker.assertQueue(QUEUE);
  await broker.bindQueue(QUEUE, EXCHANGE, '#');
  let lockPid = -1;
  try {
    lockPid = JSON.parse(fs.readFileSync(path.join(dataDir, 'LOCK'), 'utf8')).pid;
  } catch {}
  const stats = broker.queueStats(QUEUE);
  const committed = (g) => (stats.groups[g] === undefined ? -1 : stats.groups[g].committed);
  emitNow(`O ${process.pid} ${lockPid} ${stats.endOffset} ${committed('g1')} ${committed('g2')}\n`);
  return broker;
}

/**
 * g1: two competing consumers, manual ack, `A` only after the ack is durable. g2: auto ack.
 * With `awaitAck` false the g1 handler returns without waiting for its ack to be durable (the
 * ack is still reported only once it is), so slow ack writes do not throttle deliveries.
 */
export async function startConsumers(broker, { awaitAck = true } = {}) {
  const acked = (msg, status) => {
    if (status === 'acked') emit(`A g1 ${msg.id}\n`);
    else emit(`X g1 ${msg.id} ${status}\n`);
  };
  const g1 = async (msg) => {
    report('g1', msg);
    if (awaitAck) acked(msg, await msg.ack());
    else msg.ack().then((status) => acked(msg, status), die);
  };
  const g2 = (msg) => {
    report('g2', msg);
  };
  await broker.consume(QUEUE, g1, { group: 'g1', ack: 'manual', prefetch: 64, concurrency: 16 });
  await broker.consume(QUEUE, g1, { group: 'g1', ack: 'manual', prefetch: 64, concurrency: 16 });
  await broker.consume(QUEUE, g2, { group: 'g2', ack: 'auto', prefetch: 100 });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  installDie(`crash-consumer ${cfg.mode}`);
  const broker = await openBroker(cfg.dataDir, cfg.segmentBytesMax === undefined ? {} : { segmentBytesMax: cfg.segmentBytesMax });
  await startConsumers(broker);
  if (cfg.mode === 'drain') {
    // Done when both groups have acked everything (in memory) three polls in a row, or when
    // nothing is in flight and nothing was delivered for `stallMs` (the parent then sees the lag
    // left in the DONE stats and reports it).
    let quiet = 0;
    while (quiet < 3) {
      await sleep(25);
      const { groups } = broker.queueStats(QUEUE);
      const settled = ['g1', 'g2'].every((g) => groups[g] !== undefined && groups[g].inFlight === 0);
      const idle = settled && ['g1', 'g2'].every((g) => groups[g].lag === 0);
      quiet = idle ? quiet + 1 : 0;
      if (settled && Date.now() - lastDeliveryAt > (cfg.stallMs ?? 2000)) break;
    }
  } else if (cfg.mode === 'verify') {
    await sleep(cfg.watchMs ?? 300);
    emit(`STAT ${JSON.stringify(broker.queueStats(QUEUE))}\n`);
  } else {
    throw new Error(`unknown mode ${cfg.mode}`);
  }
  const stats = broker.queueStats(QUEUE);
  await broker.close(); // waits for every ack to be durable, releases the lock
  await new Promise((resolve) => setImmediate(resolve));
  emitNow(`DONE ${JSON.stringify(stats)}\n`);
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch(die);
}
