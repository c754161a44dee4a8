"""Per-chunk index and candidate search for :mod:`hemaflow.dedup.hamming_search`.

Holds the chunk description (:class:`_Chunk`: bit offset, width, search radius) and,
for one chunk, everything that finds and verifies its pairs: the bucket index
(:class:`_ChunkSearch`: items sorted by chunk key, bucket starts and sizes, a dense
lookup table for narrow chunks), the enumeration of neighbouring buckets within the
chunk radius (:func:`_bucket_neighbours`), and the exact popcount verification of the
candidates, as padded (A, B, K) blocks for small buckets and as explicit rows for big
ones, keeping only the pairs the chunk owns. The block size classes live here too,
since the cost model in :mod:`hemaflow.dedup.hamming_plan` counts work in them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np

#: Chunks at most this wide use a dense bucket table (2**24 int32 = 64 MiB) for lookups.
_TABLE_BITS = 24
#: Max variant lookups materialised at once (uint32 + int32 each).
_LOOKUP_BATCH = 1 << 22


@dataclass(frozen=True)
class _Chunk:
    offset: int  # first bit (LSB = 0)
    bits: int
    radius: int  # -1: chunk not searched

    @property
    def mask(self) -> np.uint64:
        return np.uint64(((1 << self.bits) - 1) << self.offset)


def _chunk_keys(h: np.ndarray, chunk: _Chunk) -> np.ndarray:
    return ((h >> np.uint64(chunk.offset)) & np.uint64((1 << chunk.bits) - 1)).astype(np.uint32)


@lru_cache(maxsize=256)
def _masks_by_top_bit(bits: int, radius: int) -> tuple[np.ndarray, ...]:
    """Non-zero masks of popcount <= radius over `bits` bits, grouped by their highest bit."""
    groups = []
    for top in range(bits):
        ms = [1 << top]
        for k in range(1, radius):
            for low in combinations(range(top), k):
                ms.append((1 << top) | sum(1 << b for b in low))
        groups.append(np.array(ms, dtype=np.uint32))
    return tuple(groups)


def _bucket_neighbours(
    ukeys: np.ndarray,
    bits: int,
    radius: int,
    lookup_table: np.ndarray | None,
    lo: int = 0,
    hi: int | None = None,
):
    """Yield (u1, u2) arrays of bucket indices with 1 <= popcount(k1 ^ k2) <= radius and
    k1 < k2, each unordered bucket pair exactly once.

    Only variants v = k ^ mask with v > k are looked up: that holds iff the mask's highest
    bit is 0 in k, so masks are grouped by highest bit and applied to the keys with that
    bit clear. This halves the lookups and the candidate pairs. Only source buckets in
    [lo, hi) are enumerated (work split between threads)."""
    nu = ukeys.shape[0]
    hi = nu if hi is None else hi
    for top, masks in enumerate(_masks_by_top_bit(bits, radius)):
        src = lo + np.flatnonzero((ukeys[lo:hi] & np.uint32(1 << top)) == 0)
        if src.size == 0:
            continue
        step = max(1, _LOOKUP_BATCH // masks.size)
        for a in range(0, src.size, step):
            s = src[a : a + step]
            v = ukeys[s][:, None] ^ masks[None, :]
            if lookup_table is not None:
                idx = lookup_table[v]
                hit = np.flatnonzero(idx >= 0)
                u2 = idx.ravel()[hit]
            else:
                flat = v.ravel()
                pos = np.searchsorted(ukeys, flat)
                np.minimum(pos, nu - 1, out=pos)
                hit = np.flatnonzero(ukeys[pos] == flat)
                u2 = pos[hit]
            if hit.size:
                yield s[hit // masks.size], u2.astype(np.int64)


def _expand(first: np.ndarray, count: np.ndarray, arange: np.ndarray) -> np.ndarray:
    """Concatenation of ranges [first[k], first[k] + count[k]) without a Python loop."""
    total = int(count.sum())
    offs = np.cumsum(count) - count
    out = np.repeat(first - offs, count)
    out += arange[:total] if total <= arange.size else np.arange(total)
    return out


#: Buckets up to this size are verified as dense (A, B, K) blocks by broadcasting; bigger
#: ones by expanding explicit candidate rows (np.repeat is ~4x slower per candidate).
_SMALL_BUCKET = 256
#: Block sizes: a bucket of c items is padded to the next class size (<= ~25 % waste).
_CLASS_SIZES = np.array(
    [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128]
    + [160, 192, 224, 256],
    dtype=np.int64,
)
_N_CLASSES = _CLASS_SIZES.size  # class code _N_CLASSES = "big bucket"
_CLASS_OF = np.searchsorted(_CLASS_SIZES, np.arange(_SMALL_BUCKET + 1))
_PAD_OF = np.concatenate(([0], _CLASS_SIZES[_CLASS_OF[1:]]))
#: Bucket pairs buffered before verification (amortises per-block Python overhead).
_FLUSH_PAIRS = 1 << 20
#: Candidates verified per numpy pass: small enough for the temporaries to stay in cache.
_TILE = 1 << 20


class _ChunkSearch:
    """One chunk: items sorted by chunk key (hashes stored in that order, so a bucket is a
    contiguous slice), bucket starts/sizes, and reusable verification buffers."""

    def __init__(
        self, h: np.ndarray, chunk: _Chunk, earlier: list[_Chunk], r: int, batch_pairs: int
    ):
        self.r = np.uint8(r)
        self.chunk = chunk
        self.earlier = [c for c in earlier if c.radius >= 0]
        self.batch_pairs = batch_pairs
        keys = _chunk_keys(h, chunk)
        self.order = np.argsort(keys, kind="stable")
        sk = keys[self.order]
        self.hs = h[self.order]
        n = h.shape[0]
        edges = np.flatnonzero(sk[1:] != sk[:-1]) + 1
        self.bstart = np.concatenate(([0], edges)).astype(np.int64)
        self.bcount = np.diff(np.concatenate((self.bstart, [n])))
        self.blast = self.bstart + self.bcount - 1
        self.bclass = np.full(self.bcount.size, _N_CLASSES, dtype=np.uint16)
        small = self.bcount <= _SMALL_BUCKET
        self.bclass[small] = _CLASS_OF[self.bcount[small]]
        self.ukeys = sk[self.bstart]
        self.n = n
        self.table = None
        if chunk.radius >= 1 and chunk.bits <= _TABLE_BITS:
            self.table = np.full(1 << chunk.bits, -1, dtype=np.int32)
            self.table[self.ukeys] = np.arange(self.ukeys.size, dtype=np.int32)
        self.tile = max(1, min(batch_pairs, _TILE))

    def run_part(self, part: int, parts: int) -> list[np.ndarray]:
        """Pair keys owned by this chunk whose lower-key bucket is in the part-th slice of
        the buckets. Parts are independent, so threads can run them concurrently; each gets
        its own scratch buffers (a shallow copy shares the read-only index)."""
        worker = copy.copy(self)
        worker._alloc_scratch()
        return list(worker._pair_keys(part, parts))

    def _alloc_scratch(self) -> None:
        # reused so that big temporaries are not page-faulted in again for every block
        cap = max(self.tile, _SMALL_BUCKET * _SMALL_BUCKET)
        self.xbuf = np.empty(cap, np.uint64)
        self.cbuf = np.empty(cap, np.uint8)
        self.mbuf = np.empty(cap, np.bool_)
        self.arange = np.arange(cap + 1, dtype=np.int64)

    def _pair_keys(self, part: int, parts: int):
        """Yield int64 arrays of i*n + j (i < j) for the true pairs owned by this chunk."""
        nu = self.ukeys.size
        lo, hi = nu * part // parts, nu * (part + 1) // parts
        # 1. pairs inside one bucket
        u = lo + np.flatnonzero(self.bcount[lo:hi] >= 2)
        if u.size:
            yield from self._bucket_pairs(u, u, same=True)
        # 2. pairs across buckets within the chunk radius; bucket pairs are buffered so
        #    that the per-block Python overhead is amortised over many candidates
        if self.chunk.radius < 1:
            return
        buf1, buf2, held = [], [], 0
        chunk = self.chunk
        for u1, u2 in _bucket_neighbours(self.ukeys, chunk.bits, chunk.radius, self.table, lo, hi):
            buf1.append(u1)
            buf2.append(u2)
            held += u1.size
            if held >= _FLUSH_PAIRS:
                yield from self._bucket_pairs(np.concatenate(buf1), np.concatenate(buf2))
                buf1, buf2, held = [], [], 0
        if buf1:
            yield from self._bucket_pairs(np.concatenate(buf1), np.concatenate(buf2))

    def _bucket_pairs(self, u1: np.ndarray, u2: np.ndarray, *, same: bool = False):
        """All item pairs between buckets u1[k] and u2[k] (inside u1[k] when same), grouped
        by padded block shape (A, B) with a radix sort on a uint16 group key."""
        nc = _N_CLASSES + 1
        gkey = self.bclass[u1] if same else self.bclass[u1] * np.uint16(nc) + self.bclass[u2]
        order = np.argsort(gkey, kind="stable")
        u1 = u1[order]
        u2 = u1 if same else u2[order]
        counts = np.bincount(gkey, minlength=nc * nc)
        ends = np.cumsum(counts)
        for g in np.flatnonzero(counts):
            lo, hi = int(ends[g] - counts[g]), int(ends[g])
            ca, cb = (g, g) if same else divmod(int(g), nc)
            if ca == _N_CLASSES or cb == _N_CLASSES:
                yield from self._rows(u1[lo:hi], u2[lo:hi], same=same)
                continue
            big_a, big_b = int(_CLASS_SIZES[ca]), int(_CLASS_SIZES[cb])
            step = max(1, self.tile // (big_a * big_b))
            for s in range(lo, hi, step):
                e = min(hi, s + step)
                yield from self._block(u1[s:e], u2[s:e], big_a, big_b, same)

    def _block(self, u1, u2, big_a: int, big_b: int, same: bool):
        """Verify K bucket pairs as one (A, B, K) broadcast. Padding repeats a bucket's last
        item (clamped index); padded hits are dropped after the distance test. K is the
        innermost axis so that numpy's inner loops are long."""
        n_k = u1.size
        ra = self.bstart[u1] + self.arange[:big_a, None]  # (A, K) sorted positions
        if big_a > 1:
            np.minimum(ra, self.blast[u1], out=ra)
        ha = self.hs[ra]
        if same:
            rb, hb = ra, ha
        else:
            rb = self.bstart[u2] + self.arange[:big_b, None]
            if big_b > 1:
                np.minimum(rb, self.blast[u2], out=rb)
            hb = self.hs[rb]
        size = big_a * big_b * n_k
        x = self.xbuf[:size].reshape(big_a, big_b, n_k)
        np.bitwise_xor(ha[:, None, :], hb[None, :, :], out=x)
        cnt = np.bitwise_count(x, out=self.cbuf[:size].reshape(x.shape))
        hit = np.flatnonzero(np.less_equal(cnt, self.r, out=self.mbuf[:size].reshape(x.shape)))
        if hit.size == 0:
            return
        ab, k = np.divmod(hit, n_k)
        ia, ib = np.divmod(ab, big_b)
        if same:
            valid = (ia < ib) & (ib < self.bcount[u1[k]])
        else:
            valid = (ia < self.bcount[u1[k]]) & (ib < self.bcount[u2[k]])
        if not valid.all():
            hit, k, ia, ib = hit[valid], k[valid], ia[valid], ib[valid]
        out = self._emit(ra[ia, k], rb[ib, k], x.reshape(-1)[hit])
        if out is not None:
            yield out

    def _rows(self, u1: np.ndarray, u2: np.ndarray, *, same: bool):
        """Fallback for big buckets: one row per item of the smaller bucket, scanning the
        other bucket (or the rest of its own bucket when same)."""
        if not same:
            swap = self.bcount[u1] > self.bcount[u2]
            u1, u2 = np.where(swap, u2, u1), np.where(swap, u1, u2)
        c1, c2 = self.bcount[u1], self.bcount[u2]
        cum = np.cumsum(c1)
        a = 0
        while a < u1.size:
            base = cum[a - 1] if a else 0
            b = max(a + 1, int(np.searchsorted(cum, base + self.tile, side="right")))
            p = _expand(self.bstart[u1[a:b]], c1[a:b], self.arange)
            if same:  # item at sorted position p vs p+1 .. end of its bucket
                t = p + 1
                length = np.repeat(self.blast[u1[a:b]], c1[a:b]) - p
            else:
                t = np.repeat(self.bstart[u2[a:b]], c1[a:b])
                length = np.repeat(c2[a:b], c1[a:b])
            yield from self._verify_rows(p, t, length)
            a = b

    def _verify_rows(self, p: np.ndarray, t: np.ndarray, length: np.ndarray):
        """Rows (p, t, L): sorted position p against positions t .. t+L-1, verified in
        tiles of about self.tile candidates."""
        hs = self.hs
        cum = np.cumsum(length)
        a = 0
        while a < p.size:
            base = cum[a - 1] if a else 0
            b = max(a + 1, int(np.searchsorted(cum, base + self.tile, side="right")))
            lb = length[a:b]
            q = _expand(t[a:b], lb, self.arange)
            x = hs[q]
            x ^= np.repeat(hs[p[a:b]], lb)
            sel = np.flatnonzero(np.bitwise_count(x) <= self.r)
            if sel.size:
                row = np.searchsorted(cum[a:b] - base, sel, side="right")
                out = self._emit(p[a:b][row], q[sel], x[sel])
                if out is not None:
                    yield out
            a = b

    def _emit(self, pp: np.ndarray, qq: np.ndarray, xx: np.ndarray) -> np.ndarray | None:
        """Verified pairs of sorted positions -> keys i*n + j, keeping only the pairs this
        chunk owns (no earlier chunk within its own radius)."""
        owned = np.ones(xx.shape, dtype=bool)
        for c in self.earlier:
            owned &= np.bitwise_count(xx & c.mask) > c.radius
        if not owned.all():
            pp, qq = pp[owned], qq[owned]
        if pp.size == 0:
            return None
        i, j = self.order[pp], self.order[qq]
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        return lo.astype(np.int64) * self.n + hi
