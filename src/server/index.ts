/** The broker server: serves an open Broker over a unix socket and, on request, TCP (docs/protocol.md). */
export { startServer } from './server.js';
export type { ServerOptions, SpoolServer, TcpOptions } from './server.js';
export { SOCKET_FILE, isLoopbackHost } from './listen.js';
export { MAX_FRAME_BYTES_DEFAULT, HEARTBEAT_MS_DEFAULT, PROTOCOL_VERSION } from './wire/constants.js';
