/** The soak's messages: what message n holds follows from n and the seed, so any process can check it. */

/** A small seeded generator (mulberry32), so a failing run can be repeated with its seed. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Message n's body: 20–400 B, or 8–64 KiB for a `largeFraction` of them. */
export function bodyOf(n: number, seed: number, largeFraction: number): Buffer {
  const r = random((n * 2654435761) ^ seed);
  const size = r() < largeFraction ? 8192 + Math.floor(r() * 57_344) : 20 + Math.floor(r() * 380);
  const b = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) b[i] = Math.floor(r() * 256);
  return b;
}

export function idOf(n: number): string {
  return `m-${n}`;
}

/** An id the client makes when the publisher gives none (generateId: 26 base32hex characters). */
const CLIENT_MADE_ID = /^[0-9a-v]{26}$/;

/**
 * Which message a received one is: its header `n`, when its id is `m-<n>` or one the client made
 * (some publishes carry no id, so the client's own one, with the PUBLISH flag NEW_ID, is tested
 * too); -1 for a message the soak never publishes.
 */
export function numberOf(m: { id: string; headers: Record<string, unknown> }): number {
  const n = m.headers.n;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) return -1;
  return m.id === idOf(n) || CLIENT_MADE_ID.test(m.id) ? n : -1;
}

/** What a received message must look like: null when it is message n as published, else what is wrong. */
export function problemWith(m: { id: string; body: Buffer; headers: Record<string, unknown> }, seed: number, largeFraction: number): string | null {
  const n = numberOf(m);
  if (n < 0) return `a message nobody published: id ${JSON.stringify(m.id)}, header n ${JSON.stringify(m.headers.n)}`;
  if (!m.body.equals(bodyOf(n, seed, largeFraction))) return `${m.id} (n ${n}) has a changed body (${m.body.length} B)`;
  return null;
}
