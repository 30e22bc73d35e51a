// Child process of test/idempotency/consumer.test.ts: consumes queue `orders` (group `billing`)
// with or without idempotentHandler, records each side effect in a file (append + fsync, before
// the handler returns), and SIGKILLs itself right after handling message `killOn` — after the
// completion is durable but before the broker can ack it: the crash the wrapper exists for.
//   node consumer-child.mjs '{"dataDir":…,"storeDir":…,"effects":…,"idempotent":true,"killOn":"m3"}'
// It imports dist/: run `npx tsc -p tsconfig.json` first (npm test does).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(here, '..', '..', '..', 'dist', 'src');
const { Broker } = await import(pathToFileURL(path.join(dist, 'broker', 'broker.js')).href);
const { IdempotencyStore, idempotentHandler } = await import(pathToFileURL(path.join(dist, 'idempotency', 'index.js')).href);

const cfg = JSON.parse(process.argv[2]);
const broker = await Broker.open({ dataDir: cfg.dataDir });
const store = await IdempotencyStore.open({ dir: cfg.storeDir });
const effects = fs.openSync(cfg.effects, 'a');

const sideEffect = async (msg) => {
  fs.writeSync(effects, `${msg.id}\n`);
  fs.fsyncSync(effects);
};
const inner = cfg.idempotent ? idempotentHandler(store, 'billing', sideEffect) : sideEffect;
await broker.consume(
  'orders',
  async (msg) => {
    await inner(msg);
    if (msg.id === cfg.killOn) process.kill(process.pid, 'SIGKILL');
  },
  { group: 'billing' },
);
process.stdout.write('consuming\n');
