/**
 * Names of queues, exchanges and groups become directory names, so they are checked strictly:
 * only [A-Za-z0-9._-], 1..255 characters, and never "." or ".." (which would leave the data dir).
 */
import { SpoolError } from '../errors.js';

const NAME_PATTERN = /^[A-Za-z0-9._-]{1,255}$/;

export type NameKind = 'queue' | 'exchange' | 'group';

export function checkName(kind: NameKind, name: unknown): string {
  if (typeof name !== 'string' || !NAME_PATTERN.test(name) || name === '.' || name === '..') {
    const shown = typeof name === 'string' ? JSON.stringify(name.length > 40 ? `${name.slice(0, 40)}…` : name) : typeof name;
    throw new SpoolError(
      'SPOOL_ERR_INVALID_NAME',
      `invalid ${kind} name ${shown}: use 1-255 characters from [A-Za-z0-9._-], not "." or ".."`,
    );
  }
  return name;
}

/** Exchange names may also be '' (the default exchange), which cannot be declared or deleted. */
export function checkExchangeName(name: unknown): string {
  if (name === '') return '';
  return checkName('exchange', name);
}
