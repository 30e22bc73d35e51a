/**
 * One soak worker in its own process, so the soak can SIGKILL it: consumes queue 'work' as a
 * member of group 'workers' (soak/worker.ts) until SIGTERM, journaling to a file.
 *
 *   node dist/soak/consumer-child.js <broker url> <journal file> <seed> <large fraction> <rng seed>
 */
import { connect } from '../src/client/index.js';
import { fileJournal, workerHandler } from './worker.js';

const [url, journalFile, seed, largeFraction, rngSeed] = process.argv.slice(2);
if (url === undefined || journalFile === undefined) {
  process.stderr.write('usage: consumer-child.js <broker url> <journal file> <seed> <large fraction> <rng seed>\n');
  process.exit(2);
}
const client = await connect(url, { reconnect: { initialDelayMs: 20, maxDelayMs: 250 }, timeoutMs: 30_000 });
client.on('error', (err) => process.stderr.write(`worker client error: ${err.message}\n`));
const handler = workerHandler(Number(seed), Number(largeFraction), Number(rngSeed), fileJournal(journalFile));
const consumer = await client.consume('work', handler, { group: 'workers', ack: 'manual', prefetch: 64, concurrency: 32 });
process.stdout.write('ready\n');
process.once('SIGTERM', () => {
  void consumer
    .close()
    .then(() => client.close())
    .then(() => process.exit(0));
});
