// Child process of test/broker/crash.test.ts that publishes. It owns the data dir (opening the
// broker takes over the lock a SIGKILLed predecessor left behind), starts the consumer groups of
// crash-consumer.mjs, and publishes. Message ids are `c<cycle>-<n>`, bodies derive from ids
// (bodyFor), the routing key is `k.<id>`. It imports the compiled library: run
// `npx tsc -p tsconfig.json` first (npm test does).
//
// mode 'cycle' (default): publish with `outstanding` publishes in flight (at most `maxPublishes`)
//   while both groups consume, until the parent SIGKILLs the process.
// mode 'retention': publish `maxPublishes` messages first, then consume them; once both groups are
//   open, writes to their state logs stall (a disk busy elsewhere: the write is issued but has not
//   happened yet), so acks are applied in memory but none becomes durable. The moment retention
//   has deleted queue segments and fsynced the directory, the process SIGKILLs itself (`K` line):
//   that is a SIGKILL landing while acks are still on their way to disk. Prints `NOTRIM` and
//   exits 3 when retention never ran.
//
// Lines on stdout, besides those of crash-consumer.mjs:
//   I <id> <id> ...   written (synchronously) before those publishes are started
//   P <id>            after publish resolved with status 'confirmed' (the message is fsynced)
//   K <segment files deleted>   retention mode, just before the self-SIGKILL
// Argument: '{"dataDir":…,"cycle":<n>,"outstanding":100,"maxPublishes":<n>,"segmentBytesMax":<bytes>,
//             "mode":"cycle"|"retention"}'
import path from 'node:path';
import { nodeStorage } from '../../dist/src/log/index.js';
import { EXCHANGE, QUEUE, bodyFor, die, emit, emitNow, installDie, openBroker, startConsumers } from './crash-consumer.mjs';

const cfg = JSON.parse(process.argv[2]);
const mode = cfg.mode ?? 'cycle';
installDie(`crash-producer ${mode} ${cfg.cycle}`);

/** Publishes `c<cycle>-<n>` for n < maxPublishes with `outstanding` in flight; resolves when all confirmed. */
function publishAll(broker) {
  let seq = 0;
  let inflight = 0;
  let refillScheduled = false;
  return new Promise((resolve) => {
    const published = (id, result) => {
      if (result.status !== 'confirmed' || result.id !== id) {
        die(new Error(`publish of ${id} resolved ${JSON.stringify(result)}, expected status 'confirmed'`));
      }
      emit(`P ${id}\n`);
      inflight--;
      if (inflight === 0 && seq >= cfg.maxPublishes) resolve();
      scheduleRefill();
    };
    const scheduleRefill = () => {
      if (refillScheduled) return;
      refillScheduled = true;
      setImmediate(refill);
    };
    const refill = () => {
      refillScheduled = false;
      const ids = [];
      while (inflight + ids.length < cfg.outstanding && seq < cfg.maxPublishes) ids.push(`c${cfg.cycle}-${seq++}`);
      if (ids.length === 0) return;
      // The intent is in the pipe before any of these publishes can reach the log.
      emitNow(`I ${ids.join(' ')}\n`);
      for (const id of ids) {
        inflight++;
        broker.publish(EXCHANGE, `k.${id}`, bodyFor(id), { id }).then((r) => published(id, r), die);
      }
    };
    refill();
  });
}

const sizeOption = cfg.segmentBytesMax === undefined ? {} : { segmentBytesMax: cfg.segmentBytesMax };

if (mode === 'cycle') {
  const broker = await openBroker(cfg.dataDir, sizeOption);
  await startConsumers(broker);
  void publishAll(broker);
  // Stay alive until SIGKILLed, even when publishing is capped and consumers are idle.
  setInterval(() => {}, 60_000);
} else if (mode === 'retention') {
  const groupsDir = path.join(path.resolve(cfg.dataDir), 'queues', QUEUE, 'groups') + path.sep;
  const messagesDir = path.join(path.resolve(cfg.dataDir), 'queues', QUEUE, 'messages');
  const deleted = [];
  let stallAcks = false;
  const wrapFile = (f) => {
    if (!f.path.startsWith(groupsDir)) return f;
    return {
      path: f.path,
      read: (...a) => f.read(...a),
      writev: async (bufs, pos) => {
        if (stallAcks) await new Promise(() => {}); // until the SIGKILL
        return f.writev(bufs, pos);
      },
      sync: () => f.sync(),
      truncate: (l) => f.truncate(l),
      size: () => f.size(),
      close: () => f.close(),
    };
  };
  const storage = {
    open: async (p, m) => wrapFile(await nodeStorage.open(p, m)),
    readdir: (d) => nodeStorage.readdir(d),
    mkdir: (d) => nodeStorage.mkdir(d),
    rename: (a, b) => nodeStorage.rename(a, b),
    exists: (p) => nodeStorage.exists(p),
    rmdir: (d) => nodeStorage.rmdir(d),
    unlink: async (p) => {
      await nodeStorage.unlink(p);
      if (path.dirname(p) === messagesDir && p.endsWith('.log')) deleted.push(path.basename(p));
    },
    syncDir: async (d) => {
      await nodeStorage.syncDir(d);
      if (d === messagesDir && deleted.length > 0) {
        // Retention's deletions are durable now; the groups' acks behind them may not be.
        emitNow(`K ${deleted.join(',')}\n`);
        process.kill(process.pid, 'SIGKILL');
        await new Promise(() => {});
      }
    },
  };
  const broker = await openBroker(cfg.dataDir, { ...sizeOption, storage });
  await publishAll(broker);
  await startConsumers(broker, { awaitAck: false });
  // With cfg.stall, both groups' acks stay in memory from here on: retention must then delete
  // nothing (it may only delete what every group acked durably), and the child kills itself.
  stallAcks = cfg.stall === true;
  setTimeout(() => {
    emitNow('NOTRIM\n');
    process.kill(process.pid, 'SIGKILL');
  }, cfg.stall === true ? 3_000 : 15_000);
} else {
  die(new Error(`unknown mode ${mode}`));
}
