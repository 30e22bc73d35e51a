/**
 * Where the server listens, and how safely (docs/protocol.md §7).
 *
 * The unix socket is born private: it is bound inside a fresh 0700 directory, set to 0600, and
 * only then renamed to its public path, so no other user can connect even between bind and
 * chmod. A socket file left by a dead server is removed first; one a live server answers on is
 * not touched. TCP binds loopback unless the caller explicitly allows a remote address, and then
 * only with a token.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { SpoolError } from '../errors.js';

/** sun_path holds 108 bytes on Linux (104 on macOS), including the terminating NUL. */
export const UNIX_SOCKET_PATH_BYTES_MAX = process.platform === 'linux' ? 107 : 103;
export const SOCKET_FILE = 'spool.sock';

export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost' || host === '::1' || host === '[::1]') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  return false;
}

/** Checks the TCP options against the policy: loopback by default; anything else needs allowRemote and a token. */
export function checkTcpPolicy(tcp: { host?: string; port: number; token?: string }, allowRemote: boolean): { host: string; port: number; token: string | null } {
  const host = tcp.host ?? '127.0.0.1';
  if (typeof host !== 'string' || host.length === 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'tcp.host must be a non-empty string');
  if (!Number.isInteger(tcp.port) || tcp.port < 0 || tcp.port > 65535) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'tcp.port must be an integer 0..65535 (0 picks a free port)');
  if (tcp.token !== undefined && (typeof tcp.token !== 'string' || tcp.token.length === 0)) {
    throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'tcp.token must be a non-empty string');
  }
  if (!isLoopbackHost(host)) {
    if (!allowRemote) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `tcp.host ${host} is not a loopback address: pass allowRemote (and a token) to listen beyond this machine`);
    if (tcp.token === undefined) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `listening on ${host} needs a token: anyone who can reach it could use the broker`);
  }
  return { host, port: tcp.port, token: tcp.token ?? null };
}

function listenOn(server: net.Server, options: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => {
      server.off('listening', onListening);
      reject(err);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(options);
  });
}

/** Resolves true when something accepts connections at `socketPath`. */
function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ path: socketPath });
    const done = (v: boolean) => {
      s.destroy();
      resolve(v);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    setTimeout(() => done(false), 1000).unref();
  });
}

/** Removes a stale socket file at `socketPath`; refuses a live one or a file that is not a socket. */
async function clearStaleSocket(socketPath: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = await fs.promises.lstat(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `${socketPath} exists and is not a socket; not removing it`);
  if (await answers(socketPath)) throw new SpoolError('SPOOL_ERR_LOCKED', `another server is listening on ${socketPath}`);
  await fs.promises.rm(socketPath, { force: true });
}

/** Listens on a unix socket at `socketPath` with mode 0600. */
export async function listenUnix(server: net.Server, socketPath: string): Promise<void> {
  if (Buffer.byteLength(socketPath) > UNIX_SOCKET_PATH_BYTES_MAX) {
    throw new SpoolError(
      'SPOOL_ERR_INVALID_ARGUMENT',
      `socket path ${socketPath} is ${Buffer.byteLength(socketPath)} bytes; the OS allows ${UNIX_SOCKET_PATH_BYTES_MAX}: use a shorter data dir or socketPath`,
    );
  }
  await clearStaleSocket(socketPath);
  const privateDir = await fs.promises.mkdtemp(path.join(path.dirname(socketPath), '.spool-sock-'));
  try {
    const staged = path.join(privateDir, 's');
    if (Buffer.byteLength(staged) > UNIX_SOCKET_PATH_BYTES_MAX) {
      // No room for the staging name: bind in place. The data dir's own permissions cover the
      // moment between bind and chmod.
      await listenOn(server, { path: socketPath });
      await fs.promises.chmod(socketPath, 0o600);
      return;
    }
    await listenOn(server, { path: staged });
    await fs.promises.chmod(staged, 0o600);
    await fs.promises.rename(staged, socketPath);
  } finally {
    await fs.promises.rm(privateDir, { recursive: true, force: true });
  }
}

export async function listenTcp(server: net.Server, host: string, port: number): Promise<{ host: string; port: number }> {
  await listenOn(server, { host, port });
  const addr = server.address() as net.AddressInfo;
  return { host: addr.address, port: addr.port };
}
