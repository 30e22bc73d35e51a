/**
 * `npm run soak` (node dist/soak/run.js): the durability soak of soak/soak.ts, by default for two
 * minutes; prints what happened and every violation, and exits 1 when there was one.
 *
 *   node dist/soak/run.js [--seconds 120] [--kill-min-ms 1000] [--kill-max-ms 4000] [--seed 1]
 *                         [--window 64] [--workers 2] [--tcp] [--dir /tmp] [--keep]
 */
import { SOAK_DEFAULTS, type SoakOptions, runSoak } from './soak.js';

const USAGE = 'usage: node dist/soak/run.js [--seconds n] [--kill-min-ms n] [--kill-max-ms n] [--seed n] [--window n] [--workers n] [--tcp] [--dir path] [--keep]';

function parse(argv: string[]): Partial<SoakOptions> {
  const o: Partial<SoakOptions> = {};
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const num = (): number => {
      const v = Number(argv[++i]);
      if (!Number.isFinite(v) || v < 0) throw new Error(`${flag} needs a non-negative number\n${USAGE}`);
      return v;
    };
    switch (flag) {
      case '--seconds':
        o.seconds = num();
        break;
      case '--kill-min-ms':
        o.killMinMs = num();
        break;
      case '--kill-max-ms':
        o.killMaxMs = num();
        break;
      case '--seed':
        o.seed = num();
        break;
      case '--workers':
        o.workers = Math.max(1, Math.floor(num()));
        break;
      case '--window':
        o.window = Math.max(1, Math.floor(num()));
        break;
      case '--dir':
        o.dir = argv[++i];
        break;
      case '--tcp':
        o.tcp = true;
        break;
      case '--keep':
        o.keep = true;
        break;
      default:
        throw new Error(`unknown option ${flag}\n${USAGE}`);
    }
  }
  return o;
}

let options: Partial<SoakOptions>;
try {
  options = parse(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exit(2);
}
const o = { ...SOAK_DEFAULTS, ...options };
if (o.killMaxMs < o.killMinMs) {
  process.stderr.write(`--kill-max-ms must be at least --kill-min-ms\n${USAGE}\n`);
  process.exit(2);
}
process.stderr.write(`soak: ${o.seconds} s, a SIGKILL every ${o.killMinMs}-${o.killMaxMs} ms, seed ${o.seed}${o.tcp ? ', clients over TCP' : ''}\n`);
const started = Date.now();
const r = await runSoak({ ...o, log: (line) => process.stderr.write(`soak: ${line}\n`) });
const sorted = [...r.downMs].sort((a, b) => a - b);
const median = sorted.length === 0 ? 0 : (sorted[sorted.length >> 1] as number);
const lines = [
  `published ${r.published} (${r.delayed} delayed, ${r.batches} batches): ${r.confirmed} confirmed (${r.confirmedClientIds} with a client-made id; ${r.duplicateAnswers} answered 'duplicate'), ${r.failed} failed`,
  `cancels: ${r.cancels.cancelled} cancelled, ${r.cancels.notPending} too late (fired), ${r.cancels.unknown} cut off`,
  `server kills ${r.kills} (and ${r.startupKills} more during a startup), reconnects ${r.reconnects}, down time median ${median} ms, max ${sorted.at(-1) ?? 0} ms; worker process kills ${r.workerKills}`,
  `workers: ${r.workerDeliveries} deliveries (${r.workerRedeliveries} redeliveries, ${r.nacks} requeued, ${r.rejects} rejected); auditor: ${r.auditorDeliveries} deliveries`,
  `retriers: ${r.retrierDeliveries} deliveries, ${r.retrierFailures} handler failures`,
  `stored: work ${r.stored.work}, audit ${r.stored.audit}, dead ${r.stored.dead}, retry ${r.stored.retry}, gaveup ${r.stored.gaveup}, expired ${r.stored.expired} records`,
  `took ${((Date.now() - started) / 1000).toFixed(1)} s`,
];
for (const l of lines) process.stdout.write(`${l}\n`);
for (const v of r.violations) process.stdout.write(`VIOLATION ${v}\n`);
process.stdout.write(r.ok ? 'soak passed: nothing confirmed was lost, duplicated or changed\n' : `soak FAILED with ${r.violations.length} violations; data kept in ${r.dataDir}\n`);
process.exit(r.ok ? 0 : 1);
