// Child-process tests run the compiled code in dist/; a stale build would test old code. One check
// for all of them, run before a test spawns its child.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Throws a clear error when a compiled file is missing or older than its source, for every .ts
 * under `srcDirs` (recursively, relative to the repo root) and src/errors.ts. `who` names the
 * child process in the message.
 */
export function assertDistFreshFor(srcDirs: readonly string[], who: string): void {
  const build = 'run `npx tsc -p tsconfig.json` (npm test does this before vitest)';
  const sources: string[] = [path.join('src', 'errors.ts')];
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(REPO_ROOT, rel), { withFileTypes: true })) {
      const p = path.join(rel, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.ts') && !p.endsWith('.d.ts')) sources.push(p);
    }
  };
  for (const dir of srcDirs) walk(dir);
  for (const src of sources) {
    const out = path.join(REPO_ROOT, 'dist', src.replace(/\.ts$/, '.js'));
    const outTime = fs.existsSync(out) ? fs.statSync(out).mtimeMs : -1;
    if (outTime < fs.statSync(path.join(REPO_ROOT, src)).mtimeMs) {
      throw new Error(`${path.relative(REPO_ROOT, out)} is missing or older than ${src}: ${who} would run stale code; ${build}`);
    }
  }
}
