/** Where a command writes: data to `out` (stdout), messages and progress to `err` (stderr). Injected for in-process tests. */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
}

export const processIo: CliIo = {
  out: (t) => void process.stdout.write(t),
  err: (t) => void process.stderr.write(t),
};
