// Shared plumbing for the server/client tests: a broker served on a unix socket in a temp dir,
// clients that are always closed, raw protocol sockets for fuzzing, and the child-process server.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Broker, type BrokerOptions } from '../../src/broker/broker.js';
import { connect, type ConnectOptions, type RemoteBroker } from '../../src/client/index.js';
import { startServer, type ServerOptions, type SpoolServer } from '../../src/server/index.js';
import { FrameType, HELLO_MAGIC, PROTOCOL_VERSION } from '../../src/server/wire/constants.js';
import { FrameReader, frameViews } from '../../src/server/wire/frame-reader.js';

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `cond` until it holds; fails naming `what` after `timeoutMs`. */
export async function waitFor(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** Owns every broker, server, client and temp dir a test makes; cleanup() (afterEach) closes them all. */
export class ServerHarness {
  private readonly dirs: string[] = [];
  private readonly brokers = new Set<Broker>();
  private readonly servers = new Set<SpoolServer>();
  private readonly clients = new Set<RemoteBroker>();
  private readonly sockets = new Set<net.Socket>();

  dir(prefix = 'spool-srv-'): string {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    this.dirs.push(d);
    return d;
  }

  async broker(options: BrokerOptions = {}): Promise<Broker> {
    const b = await Broker.open({ ...options, dataDir: options.dataDir ?? this.dir() });
    this.brokers.add(b);
    return b;
  }

  async serve(broker: Broker, options: ServerOptions = {}): Promise<SpoolServer> {
    const s = await startServer(broker, options);
    this.servers.add(s);
    return s;
  }

  /** A broker served on `<dataDir>/spool.sock`. */
  async served(brokerOptions: BrokerOptions = {}, serverOptions: ServerOptions = {}): Promise<{ broker: Broker; server: SpoolServer }> {
    const broker = await this.broker(brokerOptions);
    const server = await this.serve(broker, serverOptions);
    return { broker, server };
  }

  async client(url: string, options: ConnectOptions = {}): Promise<RemoteBroker> {
    const c = await connect(url, options);
    this.clients.add(c);
    return c;
  }

  track(socket: net.Socket): net.Socket {
    this.sockets.add(socket);
    return socket;
  }

  async cleanup(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await Promise.all([...this.clients].map((c) => c.close().catch(() => {})));
    this.clients.clear();
    await Promise.all([...this.servers].map((s) => s.close().catch(() => {})));
    this.servers.clear();
    for (const b of this.brokers) await b.close().catch(() => {});
    this.brokers.clear();
    for (const d of this.dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  }
}

/** Builds one frame: header + payload (docs/protocol.md §1). */
export function frame(type: number, requestId: number, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  const p = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const h = Buffer.alloc(9);
  h.writeUInt32LE(5 + p.length, 0);
  h[4] = type;
  h.writeUInt32LE(requestId, 5);
  return Buffer.concat([h, p]);
}

export function helloFrame(options: Record<string, unknown> = {}): Buffer {
  return frame(FrameType.HELLO, 0, Buffer.concat([Buffer.from(HELLO_MAGIC, 'latin1'), Buffer.from([PROTOCOL_VERSION]), Buffer.from(JSON.stringify(options))]));
}

/** A raw protocol socket that records the frames it receives. */
export class RawClient {
  readonly frames: { type: number; requestId: number; payload: Buffer }[] = [];
  closed = false;
  private readonly reader = new FrameReader(64 * 1024 * 1024, frameViews((type, requestId, payload) => this.frames.push({ type, requestId, payload: Buffer.from(payload) })));

  constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      try {
        this.reader.push(c);
      } catch {
        // A test may feed garbage through; only what the server sends matters here.
      }
    });
    socket.on('close', () => {
      this.closed = true;
    });
    socket.on('error', () => {});
  }

  static async open(target: { path: string } | { host: string; port: number }): Promise<RawClient> {
    const socket = net.connect(target as net.NetConnectOpts);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawClient(socket);
  }

  send(b: Buffer): void {
    this.socket.write(b);
  }

  ofType(type: number) {
    return this.frames.filter((f) => f.type === type);
  }

  /** The ERROR frames received, decoded. */
  errors(): { requestId: number; code: string; message: string }[] {
    return this.ofType(FrameType.ERROR).map((f) => {
      const n = f.payload.readUInt16LE(0);
      return { requestId: f.requestId, code: f.payload.toString('latin1', 2, 2 + n), message: f.payload.toString('utf8', 2 + n) };
    });
  }

  async waitClosed(timeoutMs = 3000): Promise<void> {
    await waitFor(() => this.closed, 'the server to close the raw connection', timeoutMs);
  }
}
