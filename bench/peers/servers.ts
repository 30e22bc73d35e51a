/**
 * Starting and stopping the peers' servers: each bound to 127.0.0.1 on a free port with a temporary
 * data dir, started as the leader of a process group of its own, and stopped by that pid (SIGTERM
 * to the group, SIGKILL after a grace period). Nothing is sent anywhere but 127.0.0.1.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

/** A free TCP port on 127.0.0.1 (bound, read, released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves when 127.0.0.1:port accepts a connection, rejects after `timeoutMs` or when `alive()` turns false. */
export async function waitForPort(port: number, timeoutMs: number, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (!alive()) throw new Error(`the server exited before listening on 127.0.0.1:${port}`);
    if (Date.now() > deadline) throw new Error(`nothing listened on 127.0.0.1:${port} within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Processes started here and not yet stopped: killed at exit if the run dies midway. */
const live = new Set<ManagedServer>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const s of live) s.killNow();
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      for (const s of live) s.killNow();
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  }
}

export interface StartOptions {
  name: string;
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Where stdout and stderr go. */
  logFile: string;
  /** The port to wait for (null: do not wait). */
  port: number | null;
  startTimeoutMs?: number;
}

export class ManagedServer {
  private exited = false;
  private exitCode: number | null = null;
  private readonly exitPromise: Promise<void>;

  private constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly logFile: string,
  ) {
    this.exitPromise = new Promise((resolve) => {
      child.once('exit', (code) => {
        this.exited = true;
        this.exitCode = code;
        live.delete(this);
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid as number;
  }

  get alive(): boolean {
    return !this.exited;
  }

  /** Spawns the server as a process-group leader and waits for its port. */
  static async start(o: StartOptions): Promise<ManagedServer> {
    hookExit();
    fs.mkdirSync(path.dirname(o.logFile), { recursive: true });
    const fd = fs.openSync(o.logFile, 'a');
    const child = spawn(o.command, o.args, { cwd: o.cwd, env: o.env ?? process.env, stdio: ['ignore', fd, fd], detached: true });
    fs.closeSync(fd);
    const s = new ManagedServer(o.name, child, o.logFile);
    live.add(s);
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', reject);
    });
    if (o.port !== null) {
      try {
        await waitForPort(o.port, o.startTimeoutMs ?? 60_000, () => s.alive);
      } catch (err) {
        await s.stop();
        throw new Error(`${o.name}: ${(err as Error).message}; log tail:\n${s.logTail()}`);
      }
    }
    return s;
  }

  /** The last lines of the server's log. */
  logTail(lines = 15): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** SIGTERM to the process group, SIGKILL to it after `graceMs`; resolves once the leader exited. */
  async stop(graceMs = 20_000): Promise<{ code: number | null; killed: boolean }> {
    if (this.exited) return { code: this.exitCode, killed: false };
    this.signal('SIGTERM');
    const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), graceMs).unref());
    const r = await Promise.race([this.exitPromise.then(() => 'exited' as const), timer]);
    if (r === 'timeout') {
      this.signal('SIGKILL');
      await this.exitPromise;
      return { code: this.exitCode, killed: true };
    }
    // Children left in the group (e.g. helpers of the Erlang VM) go too.
    this.signal('SIGKILL');
    return { code: this.exitCode, killed: false };
  }

  /** Synchronous last resort at process exit. */
  killNow(): void {
    this.signal('SIGKILL');
  }

  private signal(sig: NodeJS.Signals): void {
    try {
      process.kill(-this.pid, sig);
    } catch {
      // the group is gone
    }
  }
}

/** A command's first line of output (e.g. a version), or null when it cannot run. */
export function commandOutput(command: string, args: string[]): string | null {
  try {
    const r = spawnSync(command, args, { encoding: 'utf8', timeout: 10_000 });
    if (r.error) return null;
    return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  } catch {
    return null;
  }
}

/** The installed version of a Debian package, or null. */
export function debVersion(pkg: string): string | null {
  const out = commandOutput('dpkg-query', ['-W', '-f=${Version}', pkg]);
  return out === null || out === '' || out.includes('no packages found') ? null : out;
}

/** Whether an executable exists (absolute path, or found on PATH). */
export function which(command: string): string | null {
  if (path.isAbsolute(command)) return fs.existsSync(command) ? command : null;
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const p = path.join(dir, command);
    if (dir !== '' && fs.existsSync(p)) return p;
  }
  for (const dir of ['/usr/sbin', '/sbin', '/usr/lib/rabbitmq/bin']) {
    const p = path.join(dir, command);
    if (fs.existsSync(p)) return p;
  }
  return null;
}
