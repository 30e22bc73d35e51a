/**
 * Sorting entries by 64-bit hash without BigInt: an LSD radix sort over four 16-bit digits that
 * returns the permutation. Linear time; sealing a journal sorts up to `journalKeysMax` entries.
 */
export function sortByHash(hi: Uint32Array, lo: Uint32Array, n: number): Uint32Array {
  let idx = new Uint32Array(n);
  for (let i = 0; i < n; i++) idx[i] = i;
  let tmp = new Uint32Array(n);
  const count = new Uint32Array(65537);
  const digit = [(i: number) => (lo[i] as number) & 0xffff, (i: number) => (lo[i] as number) >>> 16, (i: number) => (hi[i] as number) & 0xffff, (i: number) => (hi[i] as number) >>> 16];
  for (const d of digit) {
    count.fill(0);
    for (let i = 0; i < n; i++) {
      const b = d(idx[i] as number) + 1;
      count[b] = (count[b] as number) + 1;
    }
    for (let b = 0; b < 65536; b++) count[b + 1] = (count[b + 1] as number) + (count[b] as number);
    for (let i = 0; i < n; i++) {
      const v = idx[i] as number;
      const b = d(v);
      tmp[count[b] as number] = v;
      count[b] = (count[b] as number) + 1;
    }
    [idx, tmp] = [tmp, idx];
  }
  return idx;
}
