/** Exit statuses: 0 success, 1 error, 2 usage error. Every SpoolError code maps through ERROR_CODES. */
import { ERROR_CODES, SpoolError } from '../errors.js';

export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;

export function exitCodeFor(err: unknown): number {
  if (err instanceof SpoolError) return ERROR_CODES[err.code].exit;
  return EXIT_ERROR;
}
