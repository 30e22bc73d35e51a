// Child process of test/log/sigkill.test.ts. It opens the log named in its JSON argument and
// appends until SIGKILLed, printing `C <offset> <id>` on stdout only after that append resolved
// (i.e. after its fdatasync). To be killed at exact steps it can also freeze before its k-th
// storage call while opening the log or while rolling a segment, or tear its k-th segment write
// (write a prefix, then freeze), printing `P ...` first. It imports the compiled library: run
// `npx tsc -p tsconfig.json` first (npm test does). SPOOL_KILL_LIB=/abs/path/index.js loads
// another build instead (to check that the test catches a deliberately broken copy).
//
// Lines on stdout: `S` before Log.open; `O <start> <end> <storage calls during open>` after it;
// `C <offset> <id>` per confirmed record; `P <phase> <k> <call> <file> [<written>/<bytes>]` when frozen.
import fs from 'node:fs';
import path from 'node:path';
import { prng, recordFor } from './kill-records.mjs';

const LIB = process.env.SPOOL_KILL_LIB ?? '../../dist/src/log/index.js';
const { Log, nodeStorage } = await import(LIB);
if (typeof Log?.open !== 'function' || typeof nodeStorage?.open !== 'function') {
  process.stderr.write(`kill-appender: ${LIB} lacks Log or nodeStorage (was dist being rebuilt meanwhile?)\n`);
  process.exit(1);
}

const cfg = JSON.parse(process.argv[2]);
// cfg: { dir, tag, seed, tsBase, segmentBytesMax, outstanding, batchPercent, batchMax, pause: null | { phase: 'open' | 'roll' | 'write', at } }

// ---- stdout side channel: write(2) straight to fd 1, so a line is in the pipe once written.
let queued = [];
let scheduled = false;
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
function flushQueued() {
  scheduled = false;
  if (queued.length === 0) return;
  const text = queued.join('');
  queued = [];
  writeAll(text);
}
function emit(line) {
  queued.push(line);
  if (!scheduled) {
    scheduled = true;
    setImmediate(flushQueued);
  }
}
function emitNow(line) {
  flushQueued();
  writeAll(line);
}
function die(err) {
  try {
    flushQueued();
  } catch {}
  process.stderr.write(`kill-appender ${cfg.tag}: ${err && err.stack ? err.stack : String(err)}\n`);
  process.exit(1);
}
process.on('uncaughtException', die);
process.on('unhandledRejection', die);
// Never outlive the test: exit when the parent is gone (or after 30 s, far past any kill).
const parentPid = process.ppid;
const bornAt = Date.now();
setInterval(() => {
  if (process.ppid !== parentPid || Date.now() - bornAt > 30_000) process.exit(3);
}, 250).unref();

// ---- storage that can freeze before its k-th call in a phase.
let phase = 'open';
let phaseCalls = 0;
let openCalls = 0;
let frozen = false;
const never = new Promise(() => {});

/** Counts a call; returns true when the process must freeze instead of making it. */
function gate(call, file, storageLevel) {
  if (frozen) return true;
  if (phase === 'run' && storageLevel) {
    // Appends only ever writev+sync the active file; any other storage call starts a roll.
    phase = 'roll';
    phaseCalls = 0;
  }
  if (phase === 'open') openCalls++;
  if (phase === 'run') return false;
  phaseCalls++;
  const p = cfg.pause;
  if (p && p.phase === phase && p.at === phaseCalls) {
    frozen = true;
    setInterval(() => {}, 60_000); // stay alive until the parent's SIGKILL
    emitNow(`P ${phase} ${phaseCalls} ${call} ${path.basename(file)}\n`);
    return true;
  }
  if (phase === 'roll' && phaseCalls > 64) phase = 'done';
  return false;
}

let segmentWrites = 0;
const tearRand = prng(cfg.seed ^ 0x5eed);

/** With pause `write`: the at-th write to a segment after opening writes only a prefix, then freezes (a torn write). */
async function maybeTear(inner, bufs, position) {
  const p = cfg.pause;
  if (!p || p.phase !== 'write' || phase === 'open' || frozen || !inner.path.endsWith('.log')) return false;
  if (++segmentWrites !== p.at) return false;
  frozen = true;
  const all = Buffer.concat(bufs);
  const cut = all.length <= 1 ? 0 : 1 + (tearRand() % (all.length - 1));
  if (cut > 0) await inner.writev([all.subarray(0, cut)], position);
  setInterval(() => {}, 60_000);
  emitNow(`P write ${p.at} writev ${path.basename(inner.path)} ${cut}/${all.length}\n`);
  return true;
}

function wrapFile(inner) {
  const f = (call, fn) => (gate(call, inner.path, false) ? never : fn());
  return {
    path: inner.path,
    read: (b, o, l, p) => f('read', () => inner.read(b, o, l, p)),
    writev: (bufs, p) => f('writev', async () => ((await maybeTear(inner, bufs, p)) ? never : inner.writev(bufs, p))),
    sync: () => f('sync', () => inner.sync()),
    truncate: (l) => f('truncate', () => inner.truncate(l)),
    size: () => f('size', () => inner.size()),
    close: () => f('close', () => inner.close()),
  };
}

const s = (call, file, fn) => (gate(call, file, true) ? never : fn());
const storage = {
  open: (p, mode) => s(`open:${mode}`, p, () => nodeStorage.open(p, mode).then(wrapFile)),
  readdir: (d) => s('readdir', d, () => nodeStorage.readdir(d)),
  mkdir: (d) => s('mkdir', d, () => nodeStorage.mkdir(d)),
  rename: (a, b) => s('rename', b, () => nodeStorage.rename(a, b)),
  unlink: (p) => s('unlink', p, () => nodeStorage.unlink(p)),
  syncDir: (d) => s('syncDir', d, () => nodeStorage.syncDir(d)),
  exists: (p) => s('exists', p, () => nodeStorage.exists(p)),
};

// ---- open, then append forever.
emitNow('S\n');
const { log } = await Log.open(cfg.dir, { segmentBytesMax: cfg.segmentBytesMax, storage });
phase = 'run';
emitNow(`O ${log.startOffset} ${log.endOffset} ${openCalls}\n`);

const rand = prng(cfg.seed);
let seq = 0;
let inflight = 0;

function pump() {
  while (inflight < cfg.outstanding) {
    const n = seq++;
    inflight++;
    if (rand() % 100 < cfg.batchPercent) {
      const count = 2 + (rand() % (cfg.batchMax - 1));
      const ids = [];
      for (let i = 0; i < count; i++) ids.push(`${cfg.tag}:${n}/${i}/${count}`);
      log.append(ids.map((id) => recordFor(id, cfg.tsBase))).then((r) => {
        if (r.count !== count || r.lastOffset !== r.baseOffset + count - 1) die(new Error(`bad AppendResult ${JSON.stringify(r)} for ${count} records`));
        let lines = '';
        for (let i = 0; i < count; i++) lines += `C ${r.baseOffset + i} ${ids[i]}\n`;
        emit(lines);
        inflight--;
        pump();
      }, die);
    } else {
      const id = `${cfg.tag}:${n}`;
      log.appendOne(recordFor(id, cfg.tsBase)).then((offset) => {
        emit(`C ${offset} ${id}\n`);
        inflight--;
        pump();
      }, die);
    }
  }
}
pump();
