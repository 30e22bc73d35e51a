/** Exit statuses: 0 success, 1 error, 2 usage error. Every SpoolError code maps through ERROR_CODES (`spool help exit-codes`). */
import { ERROR_CODES, SpoolError } from '../errors.js';

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;

export function exitCodeFor(err: unknown): number {
  if (err instanceof SpoolError) return ERROR_CODES[err.code]?.exit ?? EXIT_ERROR;
  return EXIT_ERROR;
}

export function exitStatuses(): { status: number; meaning: string }[] {
  return [
    { status: EXIT_OK, meaning: 'success' },
    { status: EXIT_ERROR, meaning: 'error: the command could not do its job (see the code on stderr; `spool verify` found bad data)' },
    { status: EXIT_USAGE, meaning: 'usage error: unknown command or option, bad argument, invalid name' },
    { status: 130, meaning: 'a second Ctrl-C stopped the command at once, without a clean shutdown' },
  ];
}
