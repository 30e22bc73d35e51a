// Child process of the time-driven crash tests (test/broker/time-*-crash.test.ts). It imports the
// compiled broker (run `npx tsc -p tsconfig.json` first; the tests check dist is fresh) and is
// SIGKILLed by the parent, or kills itself, at the moments the tests want.
//
//   node time-child.mjs '{"mode":"delays","dataDir":…,"count":…,"burstAt":…,"tag":…}'
//       publishes `count` delayed messages to topic 'ex' (queues qa and qb bind '#'): half due at
//       the same instant `burstAt` (ms since the epoch), half at random times up to 1.5 s after
//       start; consumes qa in group 'live'.
//       P <id> <deliverAt>   a delayed publish was confirmed
//       D <id>               a delivery in group 'live' (written before anything else happens)
//   node time-child.mjs '{"mode":"poison","dataDir":…}'
//       consumes 'work' (prefetch 1, ack auto) and 'dlq'; kills itself with SIGKILL on the body 'poison'.
//       D <id> <body> <deliveryCount>   a delivery from 'work' (before the handler does anything)
//       L <id> <body> <x-death json>    a delivery from 'dlq'
//   node time-child.mjs '{"mode":"replay","dataDir":…}'
//       replays 'dlq' to queue 'target', reporting each message as replay considers it.
//       F <id>               replay's filter saw this message (it is about to be appended)
//       R <replayed> <remaining>   replay resolved
// Every mode first prints `O <pid>` once the broker is open. Lines are written with writeSync, so a
// line is in the pipe before the next step happens.
import fs from 'node:fs';
import { Broker } from '../../dist/src/broker/broker.js';

function line(text) {
  const buf = Buffer.from(`${text}\n`);
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(1, buf, off);
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
    }
  }
}

function die(err) {
  process.stderr.write(`time-child: ${err && err.stack ? err.stack : String(err)}\n`);
  process.exit(1);
}
process.on('uncaughtException', die);
process.on('unhandledRejection', die);
// The broker's own timers are unref'd: keep the process alive until it is killed.
setInterval(() => {}, 1 << 30);

async function open(dataDir) {
  const broker = await Broker.open({ dataDir });
  broker.on('error', die);
  line(`O ${process.pid}`);
  return broker;
}

async function delays(cfg) {
  const broker = await open(cfg.dataDir);
  await broker.assertExchange('ex', 'topic');
  for (const q of ['qa', 'qb']) {
    await broker.assertQueue(q);
    await broker.bindQueue(q, 'ex', '#');
  }
  await broker.consume('qa', (msg) => line(`D ${msg.id}`), { group: 'live', prefetch: 1000, concurrency: 50 });
  const start = Date.now();
  let next = 0;
  const worker = async () => {
    while (next < cfg.count) {
      const i = next++;
      const id = `${cfg.tag}-${i}`;
      const deliverAt = i % 2 === 0 ? cfg.burstAt : start + Math.floor(Math.random() * 1500);
      const r = await broker.publish('ex', `k.${i}`, id, { id, deliverAt });
      if (r.status !== 'confirmed') throw new Error(`publish ${id}: ${r.status}`);
      line(`P ${id} ${deliverAt}`);
    }
  };
  await Promise.all(Array.from({ length: 50 }, worker));
}

async function poison(cfg) {
  const broker = await open(cfg.dataDir);
  await broker.consume(
    'work',
    (msg) => {
      line(`D ${msg.id} ${msg.body.toString()} ${msg.deliveryCount}`);
      if (msg.body.toString() === 'poison') process.kill(process.pid, 'SIGKILL');
    },
    { group: 'workers', prefetch: 1 },
  );
  await broker.consume('dlq', (msg) => line(`L ${msg.id} ${msg.body.toString()} ${JSON.stringify(msg.headers['x-death'])}`), { group: 'audit' });
}

async function replay(cfg) {
  const broker = await open(cfg.dataDir);
  const r = await broker.replay('dlq', {
    to: { queue: 'target' },
    filter: (msg) => {
      line(`F ${msg.id}`);
      return true;
    },
  });
  line(`R ${r.replayed} ${r.remaining}`);
}

const cfg = JSON.parse(process.argv[2]);
const modes = { delays, poison, replay };
if (!(cfg.mode in modes)) die(new Error(`unknown mode ${cfg.mode}`));
modes[cfg.mode](cfg).catch(die);
