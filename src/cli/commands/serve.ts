/** `spool serve`: owns a data dir, serves it on a unix socket (and on request TCP) until SIGINT or SIGTERM. */
import { type Command, InvalidArgumentError } from 'commander';
import { Broker } from '../../broker/broker.js';
import { SEGMENT_BYTES } from '../../log/index.js';
import { SpoolError } from '../../errors.js';
import { isLoopbackHost, startServer, type SpoolServer } from '../../server/index.js';
import { type CommonOptions, common, parseCount, usageError } from '../common.js';
import type { CliIo } from '../io.js';
import { emit } from '../output.js';

export interface ServeOptions extends CommonOptions {
  socket: boolean;
  tcp?: number;
  host?: string;
  token?: string;
  segmentBytes?: number;
}

export interface Listening {
  dataDir: string;
  pid: number;
  socket: string | null;
  tcp: string | null;
}

/** Opens the broker and starts the server; returns both and where it listens. */
export async function startServing(opts: ServeOptions): Promise<{ broker: Broker; server: SpoolServer | null; listening: Listening }> {
  const broker = await Broker.open({ dataDir: opts.data, ...(opts.segmentBytes !== undefined ? { segmentBytesMax: opts.segmentBytes } : {}) });
  let server: SpoolServer | null = null;
  try {
    if (opts.socket || opts.tcp !== undefined) {
      const host = opts.host ?? '127.0.0.1';
      server = await startServer(broker, {
        socketPath: opts.socket ? undefined : null,
        ...(opts.tcp !== undefined ? { tcp: { host, port: opts.tcp, ...(opts.token !== undefined ? { token: opts.token } : {}) } } : {}),
        allowRemote: !isLoopbackHost(host),
      });
    }
  } catch (err) {
    await broker.close();
    throw err;
  }
  const tcp = server?.tcpAddress ? `tcp://${server.tcpAddress.host.includes(':') ? `[${server.tcpAddress.host}]` : server.tcpAddress.host}:${server.tcpAddress.port}` : null;
  return { broker, server, listening: { dataDir: broker.dataDir, pid: process.pid, socket: server?.socketPath ?? null, tcp } };
}

/** commander argument parser for --segment-bytes: the range the log takes. */
function parseSegmentBytes(value: string): number {
  const n = parseCount(value);
  if (n < SEGMENT_BYTES.min || n > SEGMENT_BYTES.max) throw new InvalidArgumentError(`expected ${SEGMENT_BYTES.min} to ${SEGMENT_BYTES.max} bytes`);
  return n;
}

export function registerServe(program: Command, io: CliIo): void {
  const cmd = program
    .command('serve')
    .description('run a broker that owns the data dir and serves it to other processes')
    .option('--no-socket', 'do not listen on the unix socket <data>/spool.sock')
    .option('--tcp <port>', 'also listen on TCP (0 picks a free port)', parseCount)
    .option('--host <address>', 'TCP address to bind (anything but loopback needs --token)', '127.0.0.1')
    .option('--token <secret>', 'TCP clients must present this token')
    .option('--segment-bytes <n>', 'queue logs roll to a new segment at this size (1 KiB to 1 GiB; default 128 MiB)', parseSegmentBytes);
  common(cmd, [
    'spool serve',
    'spool serve --data /var/lib/spool',
    'spool serve --tcp 5679                       # also on 127.0.0.1:5679',
    'spool serve --tcp 5679 --host 0.0.0.0 --token s3cret',
    'spool serve --segment-bytes 16777216         # smaller segments: retention frees disk sooner',
    'npm start                                    # the same as spool serve --data ./data',
  ]);
  cmd.action(async (opts: ServeOptions) => {
    if (opts.host !== undefined && opts.host !== '127.0.0.1' && opts.tcp === undefined) usageError(cmd, '--host needs --tcp <port>');
    if (opts.host !== undefined && !isLoopbackHost(opts.host) && opts.token === undefined) {
      usageError(cmd, `listening on ${opts.host} needs --token: anyone who can reach it could use the broker`);
    }
    if (opts.broker !== undefined) usageError(cmd, 'serve owns a data dir; --broker does not apply');
    if (io.onInterrupt === undefined) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'serve needs signals to know when to stop');
    // Signals are watched before opening, so a Ctrl-C during startup still shuts down cleanly.
    let stop!: () => void;
    const stopped = new Promise<void>((resolve) => (stop = resolve));
    const unlisten = io.onInterrupt(() => stop());
    try {
      const { broker, server, listening } = await startServing(opts);
      const where = [listening.socket && `unix://${listening.socket}`, listening.tcp].filter(Boolean).join(' and ');
      io.err(`spool: serving ${listening.dataDir} (pid ${listening.pid})${where ? ` on ${where}` : ' (not listening: --no-socket)'}; Ctrl-C to stop\n`);
      if (opts.json) emit(io, true, listening, () => '');
      await stopped;
      io.err('spool: stopping\n');
      try {
        await server?.close();
      } finally {
        await broker.close();
      }
      io.err('spool: stopped cleanly\n');
    } finally {
      unlisten();
    }
  });
}
