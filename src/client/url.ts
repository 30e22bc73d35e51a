/**
 * Where a client connects: `unix:///path/to/spool.sock`, `tcp://host:port?token=…`, or a plain
 * path (a socket file, or a data directory holding `spool.sock`).
 */
import fs from 'node:fs';
import path from 'node:path';
import { SpoolError } from '../errors.js';
import { SOCKET_FILE } from '../server/listen.js';

export type BrokerAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number; token?: string };

export function parseBrokerUrl(url: string): BrokerAddress {
  if (typeof url !== 'string' || url.length === 0) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', 'the broker URL must be a non-empty string');
  if (url.startsWith('unix:')) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `cannot parse broker URL ${url}`);
    }
    const p = decodeURIComponent(u.pathname);
    if (p.length === 0 || p === '/') throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `broker URL ${url} names no socket path (use unix:///absolute/path/spool.sock)`);
    return { kind: 'unix', path: socketIn(p) };
  }
  if (url.startsWith('tcp:')) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `cannot parse broker URL ${url}`);
    }
    const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
    const port = Number(u.port);
    if (host.length === 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
      throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `broker URL ${url} needs a host and a port (tcp://127.0.0.1:5679)`);
    }
    const token = u.searchParams.get('token');
    return { kind: 'tcp', host, port, ...(token !== null ? { token } : {}) };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) throw new SpoolError('SPOOL_ERR_INVALID_ARGUMENT', `broker URL ${url}: the scheme must be unix:// or tcp://`);
  return { kind: 'unix', path: socketIn(path.resolve(url)) };
}

/** A directory stands for the socket inside it (a data dir). */
function socketIn(p: string): string {
  try {
    if (fs.statSync(p).isDirectory()) return path.join(p, SOCKET_FILE);
  } catch {
    // Missing: connecting reports it.
  }
  return p;
}

/** The address without its token, for messages. */
export function describeAddress(a: BrokerAddress): string {
  return a.kind === 'unix' ? `unix://${a.path}` : `tcp://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}
