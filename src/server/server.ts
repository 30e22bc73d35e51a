/**
 * Serves an open broker to other processes (docs/protocol.md): on a unix socket inside the data
 * dir, and on request over TCP.
 *
 * @example
 *   const broker = await Broker.open({ dataDir: './data' });
 *   const server = await startServer(broker);                 // ./data/spool.sock, mode 0600
 *   const remote = await connect(server.url);                 // from any process
 *   await server.close();                                     // the broker stays open
 *   await broker.close();
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { readLock } from '../broker/lock.js';
import { SpoolError } from '../errors.js';
import { ServerConnection } from './connection.js';
import { HEARTBEAT_MS_DEFAULT, MAX_FRAME_BYTES_DEFAULT } from './wire/constants.js';
import { SOCKET_FILE, checkTcpPolicy, listenTcp, listenUnix } from './listen.js';
import { SerialQueue, type ServedBroker, advertise } from './served-broker.js';

export interface TcpOptions {
  /** Address to bind. Default '127.0.0.1'; anything not loopback needs `allowRemote` and `token`. */
  host?: string;
  /** Port; 0 picks a free one (see `tcpAddress`). */
  port: number;
  /** When set, a TCP client must present it in HELLO or is refused with SPOOL_ERR_UNAUTHORIZED. */
  token?: string;
}

export interface ServerOptions {
  /** The unix socket. Default `<dataDir>/spool.sock`; null for none (then `tcp` is required). */
  socketPath?: string | null;
  tcp?: TcpOptions;
  /** Allow `tcp.host` to be a non-loopback address (a token is still required). */
  allowRemote?: boolean;
  /** Heartbeat interval both ways; a peer silent for 3 intervals is dropped. Default 1000 ms. */
  heartbeatMs?: number;
  /** Largest frame accepted (its length field). Default 16 MiB + 64 KiB. */
  maxFrameBytes?: number;
  /** Most connections at once. Default 1024. */
  maxConnections?: number;
  /** Record the addresses in the data dir's LOCK so `spool` commands find this server. Default true. */
  advertise?: boolean;
  /** Errors no client can be told about. Default: a process warning. */
  onError?: (err: unknown) => void;
}

export interface SpoolServer {
  /** The unix socket's path, or null. */
  readonly socketPath: string | null;
  /** The bound TCP address, or null. */
  readonly tcpAddress: { host: string; port: number } | null;
  /** A URL `connect()` accepts: the unix socket's when there is one, else the TCP one (without the token). */
  readonly url: string;
  /** Connections open now. */
  readonly connectionCount: number;
  /**
   * Stops listening, lets in-flight requests finish (so their confirms reach the clients), closes
   * every connection (their consumers' unacked messages are redelivered later) and removes the
   * socket file. The broker stays open: its owner closes it.
   */
  close(): Promise<void>;
}

const DRAIN_TIMEOUT_MS = 5000;

function checkRange(v: unknown, min: number, max: number, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${what} must be an integer ${min}..${max}`);
  return v;
}

/** Starts serving `broker`. Throws SPOOL_ERR_INVALID_ARGUMENT for an unsafe TCP address, SPOOL_ERR_LOCKED if another server owns the socket. */
export async function startServer(broker: ServedBroker, options: ServerOptions = {}): Promise<SpoolServer> {
  const heartbeatMs = checkRange(options.heartbeatMs ?? HEARTBEAT_MS_DEFAULT, 10, 60_000, 'heartbeatMs');
  const maxFrameBytes = checkRange(options.maxFrameBytes ?? MAX_FRAME_BYTES_DEFAULT, 64 * 1024, 1024 * 1024 * 1024, 'maxFrameBytes');
  const maxConnections = checkRange(options.maxConnections ?? 1024, 1, 1_000_000, 'maxConnections');
  const tcp = options.tcp === undefined ? null : checkTcpPolicy(options.tcp, options.allowRemote === true);
  const socketPath = options.socketPath === null ? null : path.resolve(options.socketPath ?? path.join(broker.dataDir, SOCKET_FILE));
  if (socketPath === null && tcp === null) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'nothing to listen on: give a socketPath or tcp');
  const onError = options.onError ?? ((err: unknown) => process.emitWarning(`spool server: ${(err as Error)?.stack ?? String(err)}`));

  const connections = new Set<ServerConnection>();
  const topology = new SerialQueue();
  const accept = (token: string | null) => (socket: net.Socket) => {
    if (connections.size >= maxConnections) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const conn = new ServerConnection(socket, broker, { token, heartbeatMs, maxFrameBytes, topology, onClosed: (c) => connections.delete(c), onError });
    connections.add(conn);
  };

  const servers: net.Server[] = [];
  const closeServers = () => Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  let tcpAddress: { host: string; port: number } | null = null;
  let socketMade = false;
  try {
    if (socketPath !== null) {
      const unix = net.createServer(accept(null));
      servers.push(unix);
      await listenUnix(unix, socketPath);
      socketMade = true;
    }
    if (tcp !== null) {
      const server = net.createServer(accept(tcp.token));
      servers.push(server);
      tcpAddress = await listenTcp(server, tcp.host, tcp.port);
    }
  } catch (err) {
    await closeServers();
    // Only a socket this call made is removed: a foreign one made listenUnix throw before binding.
    if (socketMade) await fs.promises.rm(socketPath as string, { force: true });
    throw err;
  }

  const tcpUrl = tcpAddress === null ? null : `tcp://${tcpAddress.host.includes(':') ? `[${tcpAddress.host}]` : tcpAddress.host}:${tcpAddress.port}`;
  const lockPid = () => readLock(broker.dataDir)?.pid ?? null;
  const wantAdvertise = options.advertise !== false;
  if (wantAdvertise) {
    advertise(broker, { ...(socketPath !== null ? { socket: socketPath } : {}), ...(tcpUrl !== null ? { tcp: tcpUrl } : {}) }, lockPid);
  }

  let lastTickAt = Date.now();
  const heartbeat = setInterval(() => {
    const now = Date.now();
    // A tick this late means our own event loop stalled: the peers' frames may be sitting unread,
    // so their silence is not judged this round.
    const stalled = now - lastTickAt > 2 * heartbeatMs;
    lastTickAt = now;
    for (const c of connections) c.tick(now, stalled);
  }, heartbeatMs);
  heartbeat.unref();

  let closing: Promise<void> | null = null;
  return {
    socketPath,
    tcpAddress,
    url: socketPath !== null ? `unix://${socketPath}` : (tcpUrl as string),
    get connectionCount() {
      return connections.size;
    },
    close() {
      closing ??= (async () => {
        clearInterval(heartbeat);
        const stopped = closeServers();
        await Promise.all([...connections].map((c) => c.drain(DRAIN_TIMEOUT_MS)));
        await stopped;
        if (socketPath !== null) await fs.promises.rm(socketPath, { force: true });
        if (wantAdvertise) advertise(broker, undefined, lockPid);
      })();
      return closing;
    },
  };
}
