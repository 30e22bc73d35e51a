/** How a stored message record (read from the files by `tail` and `dlq list`) is shown. */
import { isUtf8 } from 'node:buffer';
import { routeOf, userHeadersOf } from '../broker/message.js';
import type { LogRecord } from '../log/index.js';

export interface RecordView {
  offset: number;
  timestamp: string;
  id: string;
  exchange: string;
  routingKey: string;
  headers: Record<string, unknown>;
  body?: string;
  bodyBase64?: string;
}

export function recordView(r: LogRecord): RecordView {
  let headers: Record<string, unknown> = {};
  let route = { exchange: '', routingKey: '' };
  try {
    route = routeOf(r);
    headers = userHeadersOf(r);
  } catch {
    // Not a broker message (a bare log): show what there is.
  }
  const text = isUtf8(r.value);
  return {
    offset: r.offset,
    timestamp: new Date(r.timestamp).toISOString(),
    id: r.keyText(),
    exchange: route.exchange,
    routingKey: route.routingKey,
    headers,
    ...(text ? { body: r.value.toString('utf8') } : { bodyBase64: r.value.toString('base64') }),
  };
}

/** One line for people: offset, time, id, route, body (cut at `width` characters). */
export function recordLine(v: RecordView, width = 200): string {
  const body = v.body !== undefined ? v.body.replace(/\n/g, '\\n') : `<${Buffer.from(v.bodyBase64 ?? '', 'base64').length} bytes binary>`;
  const cut = body.length > width ? `${body.slice(0, width)}…` : body;
  const route = v.exchange === '' ? v.routingKey : `${v.exchange}/${v.routingKey}`;
  return `${v.offset}\t${v.timestamp}\t${v.id}\t${route}\t${cut}`;
}
