// Child process of test/idempotency/crash-loop.test.ts. Opens the compiled IdempotencyStore on a
// directory shared by every cycle and works until the parent SIGKILLs it:
//   node crash-child.mjs '{"dir":…,"cycle":3,"seed":…,"reuse":[…],"probes":[[key, notBefore], …]}'
// It imports dist/: run `npx tsc -p tsconfig.json` first (npm test does).
//
// Lines on stdout, each written with one write(2) before the child moves on, so a line the parent
// reads happened; a line cut by the kill is ignored:
//   O <leasesRestored> <truncatedBytes>       the store is open
//   A <key> <leaseNotBefore>                  claim acquired (its lease is durable); the lease
//                                             lasts at least until leaseNotBefore (ms epoch)
//   X <key> complete|release|keep             what the holder will do with it next
//   C <key>                                   complete resolved: durable
//   R <key>                                   release resolved
//   D <key> <result>                          claim answered done with this result
//   P <key>                                   claim answered in-progress
//   PROBE <key> <answer> <after>              the answer for a key whose lease a dead child held, and the time just after the lookup
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.resolve(here, '..', '..', '..', 'dist', 'src', 'idempotency', 'index.js');
const { IdempotencyStore } = await import(pathToFileURL(dist).href);

const cfg = JSON.parse(process.argv[2]);

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
  process.stderr.write(`crash child ${cfg.cycle}: ${err && err.stack ? err.stack : String(err)}\n`);
  process.exit(3);
}

let seed = cfg.seed >>> 0;
function rnd() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

async function main() {
  const store = await IdempotencyStore.open({
    dir: cfg.dir,
    retentionMs: 3_600_000,
    bucketMs: 400,
    journalKeysMax: 300,
    mergeFanIn: 3,
    maintenanceIntervalMs: 20,
    onError: die,
  });
  line(`O ${store.recovery.leasesRestored} ${store.recovery.truncatedBytes}`);
  // Keys whose lease a killed child held: in-progress until the lease ends, never lost.
  for (const [key] of cfg.probes) {
    const r = await store.lookup(key);
    // Taken after the lookup: the lookup's own clock read was at or before it.
    const after = Date.now();
    line(`PROBE ${key} ${typeof r === 'object' ? 'done' : r} ${after}`);
  }
  let n = 0;
  const worker = async (w) => {
    for (;;) {
      const u = rnd();
      const key = u < 0.3 && cfg.reuse.length > 0 ? cfg.reuse[Math.floor(rnd() * cfg.reuse.length)] : u < 0.45 ? `hot${Math.floor(rnd() * 20)}` : `c${cfg.cycle}-${w}-${n++}`;
      const ttlMs = 300 + Math.floor(rnd() * 1500);
      const start = Date.now();
      const c = await store.claim(key, { ttlMs });
      if (c === 'acquired') {
        line(`A ${key} ${start + ttlMs}`);
        const next = rnd();
        line(`X ${key} ${next < 0.8 ? 'complete' : next < 0.9 ? 'release' : 'keep'}`);
        if (rnd() < 0.2) await new Promise((r) => setTimeout(r, Math.floor(rnd() * 5)));
        if (next < 0.8) {
          await store.complete(key, `r:${key}`);
          line(`C ${key}`);
        } else if (next < 0.9) {
          await store.release(key);
          line(`R ${key}`);
        }
        // else: keep the lease, as a holder that hangs would
      } else if (c === 'in-progress') {
        line(`P ${key}`);
      } else {
        line(`D ${key} ${c.result}`);
      }
    }
  };
  await Promise.all(Array.from({ length: 16 }, (_, w) => worker(w)));
}

main().catch(die);
