/**
 * Where a command reads and writes. Data goes to `out` (stdout); messages and progress go to `err`
 * (stderr). Everything a command touches of the process (streams, terminals, environment,
 * signals) comes through here, so vitest runs commands in process with fakes.
 */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  /** Standard input, for `produce` without messages. Absent: nothing to read. */
  stdin?: NodeJS.ReadableStream;
  /** True when stdin is a terminal (a person typing). */
  stdinIsTTY?: boolean;
  /** The stderr stream when it is a terminal: progress bars draw on it. Absent: no progress bars. */
  errTTY?: NodeJS.WriteStream;
  /** True when stdout is a terminal (colors in human output). */
  outIsTTY?: boolean;
  env?: Readonly<Record<string, string | undefined>>;
  /** Calls `handler` on Ctrl-C (SIGINT), SIGTERM or a closed stdout; returns a function that stops listening. */
  onInterrupt?(handler: (reason: string) => void): () => void;
  /** Resolves once everything written to `out` so far has been handed to the operating system. */
  flush?(): Promise<void>;
}

function waitForWrite(stream: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => {
    if (stream.destroyed || !stream.writable) return resolve();
    stream.write('', () => resolve());
  });
}

/** The real process: stdout, stderr, stdin, SIGINT/SIGTERM. A second Ctrl-C exits at once (status 130). */
export const processIo: CliIo = {
  out: (t) => void process.stdout.write(t),
  err: (t) => void process.stderr.write(t),
  get stdin() {
    return process.stdin;
  },
  get stdinIsTTY() {
    return process.stdin.isTTY === true;
  },
  get errTTY() {
    return process.stderr.isTTY === true ? process.stderr : undefined;
  },
  get outIsTTY() {
    return process.stdout.isTTY === true;
  },
  env: process.env,
  onInterrupt(handler) {
    let count = 0;
    const onSignal = (signal: NodeJS.Signals) => {
      count++;
      if (count > 1) process.exit(130);
      handler(signal);
    };
    // `spool consume | head -3`: the reader went away; stop as if interrupted.
    const onStdoutError = (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') handler('EPIPE');
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.stdout.on('error', onStdoutError);
    return () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.stdout.off('error', onStdoutError);
    };
  },
  flush: () => waitForWrite(process.stdout),
};
