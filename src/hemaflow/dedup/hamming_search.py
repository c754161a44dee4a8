"""All pairs of 64-bit hashes within a Hamming radius, in sub-quadratic time.

Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): the 64 bits are cut into ``m``
contiguous substrings ("chunks"). By the pigeonhole principle, two hashes within distance
``r`` agree to within a small radius on at least one chunk, so it is enough to compare
pairs that are near on some chunk. Each chunk is indexed by sorting its keys; neighbouring
keys are found by enumerating every key variant within the chunk radius and looking it up.
Candidates are then verified with an exact popcount.

We use the generalised pigeonhole bound: with per-chunk radii ``s_k`` such that
``sum(s_k + 1) >= r + 1``, a pair that differs by more than ``s_k`` bits on every chunk
differs by at least ``r + 1`` bits in total. Spreading the ``r + 1`` budget evenly gives
radii ``floor(r / m)`` or less (never more), e.g. r=10, m=3 gives (3, 3, 2) instead of
(3, 3, 3), and a chunk whose budget is 0 is not searched at all.

Every pair is reported exactly once without a global ``unique``: a pair found on chunk
``k`` is kept only if no earlier chunk is within its own radius (the earliest chunk that
can find it owns it), and within a chunk each unordered pair of buckets / items is
generated once (see :func:`_bucket_neighbours`).
"""

from __future__ import annotations

import copy
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np

__all__ = [
    "DATA_AWARE_MIN_N",
    "MAX_DISTANCE",
    "brute_force_pairs",
    "choose_chunks",
    "near_pairs",
]

#: Largest supported ``max_distance``; beyond 32 bits "near" is meaningless for 64-bit hashes.
MAX_DISTANCE = 32
#: Radius cap used by the automatic chunk choice (keeps the number of variants moderate).
_AUTO_MAX_CHUNK_RADIUS = 4
#: Chunks at most this wide use a dense bucket table (2**24 int32 = 64 MiB) for lookups.
_TABLE_BITS = 24
#: Max variant lookups materialised at once (uint32 + int32 each).
_LOOKUP_BATCH = 1 << 22
#: Cost model, in ~ns per unit (numpy 2.x, x86-64; fitted on timings of the bench data),
#: for the work counters of _uniform_stats / _sampled_stats: variant lookups in a dense
#: table, variant lookups by binary search (chunks wider than _TABLE_BITS), neighbour
#: bucket pairs found, bucket items gathered for the blocks, padded candidate pairs
#: verified in blocks, candidate pairs verified on the big-bucket row path, items indexed.
_COSTS = np.array([3.5, 30.0, 7.0, 7.0, 0.9, 3.0, 150.0])
#: From this many hashes on, near_pairs picks the chunking from sampled bucket statistics
#: of the actual data (skewed hash bits inflate buckets far beyond the uniform model).
DATA_AWARE_MIN_N = 50_000
#: Items sampled per chunk for the data-aware estimate, and cap on their variant lookups.
_SAMPLE_ITEMS = 4096
_SAMPLE_LOOKUPS = 1 << 22


@dataclass(frozen=True)
class _Chunk:
    offset: int  # first bit (LSB = 0)
    bits: int
    radius: int  # -1: chunk not searched

    @property
    def mask(self) -> np.uint64:
        return np.uint64(((1 << self.bits) - 1) << self.offset)


def _n_variants(bits: int, radius: int) -> int:
    """V(b, s): keys within Hamming radius s of a b-bit key (0 for s < 0)."""
    return sum(math.comb(bits, k) for k in range(min(radius, bits) + 1)) if radius >= 0 else 0


def _plan(m: int, max_distance: int) -> list[_Chunk]:
    """Split 64 bits into m nearly equal contiguous chunks; give the wider chunks the
    larger radii so that sum(radius + 1) == max_distance + 1 (generalised pigeonhole)."""
    base, extra_bits = divmod(64, m)
    widths = [base + (1 if k < extra_bits else 0) for k in range(m)]
    budget, extra_r = divmod(max_distance + 1, m)
    radii = [budget + (1 if k < extra_r else 0) - 1 for k in range(m)]
    chunks, offset = [], 0
    for w, s in zip(widths, radii, strict=True):
        chunks.append(_Chunk(offset, w, s))
        offset += w
    return chunks


def _chunk_keys(h: np.ndarray, chunk: _Chunk) -> np.ndarray:
    return ((h >> np.uint64(chunk.offset)) & np.uint64((1 << chunk.bits) - 1)).astype(np.uint32)


def _pad(c: np.ndarray) -> np.ndarray:
    """Block size a bucket of c items is padded to (0 for big buckets, see _SMALL_BUCKET)."""
    return np.where(c <= _SMALL_BUCKET, _PAD_OF[np.minimum(c, _SMALL_BUCKET)], 0)


def _uniform_stats(n: int, c: _Chunk) -> np.ndarray:
    """Work counters (see _COSTS) for n uniformly random hashes."""
    v = _n_variants(c.bits, c.radius)
    space = 2.0**c.bits
    lam = n / space
    occupied = -math.expm1(-lam)  # P(bucket non-empty)
    lookups = space * occupied * (v - 1) / 2  # half the variants: see _bucket_neighbours
    pairs = lookups * occupied
    sides = 2 * pairs * max(1.0, lam / occupied)
    padded = 1.1 * (n * n / 2 * (v - 1) / space + n * (lam + 1))
    wide = c.bits > _TABLE_BITS
    return np.array([0 if wide else lookups, lookups if wide else 0, pairs, sides, padded, 0, n])


def _sampled_stats(h: np.ndarray, c: _Chunk, rng: np.random.Generator) -> np.ndarray:
    """Work counters (see _COSTS) estimated on the data: exact bucket sizes, and the
    neighbour buckets of a uniform sample of items (each bucket weighted by its size,
    so the heavy buckets that dominate the candidate count are seen)."""
    n = h.shape[0]
    keys = _chunk_keys(h, c)
    if c.bits <= _TABLE_BITS:
        table = np.bincount(keys, minlength=1 << c.bits)
        sizes = table[table > 0]

        def lookup(v: np.ndarray) -> np.ndarray:
            return table[v]
    else:
        ukeys, sizes = np.unique(keys, return_counts=True)

        def lookup(v: np.ndarray) -> np.ndarray:
            pos = np.minimum(np.searchsorted(ukeys, v), ukeys.size - 1)
            return np.where(ukeys[pos] == v, sizes[pos], 0)

    small = sizes <= _SMALL_BUCKET
    pad = _pad(sizes[small]).astype(np.float64)
    # blocks inside a bucket: full A x A squares; big buckets: rows of c(c-1)/2 candidates
    padded = float(np.dot(pad, pad))
    big = float(np.dot(sizes[~small], sizes[~small] - 1.0)) / 2
    sides = float(pad.sum())
    pairs = float(small.sum())
    lookups = 0.0
    if c.radius >= 1:
        masks = np.concatenate(_masks_by_top_bit(c.bits, c.radius))
        lookups = sizes.size * masks.size / 2
        budget = _SAMPLE_LOOKUPS if c.bits <= _TABLE_BITS else _SAMPLE_LOOKUPS // 64
        m = int(min(n, _SAMPLE_ITEMS, max(64, budget // masks.size)))
        k = keys[rng.integers(0, n, m)]
        ck = lookup(k)
        cv = lookup(k[:, None] ^ masks[None, :])
        row, col = np.nonzero(cv)  # the neighbour buckets that exist
        cv = cv[row, col]
        cr = ck[row]
        is_big = (cv > _SMALL_BUCKET) | (cr > _SMALL_BUCKET)
        pk, pv = _pad(cr).astype(np.float64), _pad(cv).astype(np.float64)
        w = (n / m / 2) / cr  # item sample -> sum over buckets; each pair seen twice
        pairs += float(w.sum())
        sides += float(np.dot(w, np.where(is_big, 0.0, pk + pv)))
        padded += float(np.dot(w, pk * pv))
        big += float(np.dot(w * is_big, cr.astype(np.float64) * cv))
    wide = c.bits > _TABLE_BITS
    return np.array([0 if wide else lookups, lookups if wide else 0, pairs, sides, padded, big, n])


def _plan_cost(plan: list[_Chunk], stats) -> float:
    return float(sum(np.dot(_COSTS, stats(c)) for c in plan if c.radius >= 0))


def _feasible_plans(max_distance: int) -> dict[int, list[_Chunk]]:
    """Chunk counts whose keys fit in 32 bits and whose radii stay <= the auto cap."""
    plans = {}
    for m in range(2, min(64, max_distance + 1) + 1):
        plan = _plan(m, max_distance)
        if max(c.radius for c in plan) <= _AUTO_MAX_CHUNK_RADIUS:
            plans[m] = plan
    return plans or {2: _plan(2, max_distance)}


def _check_distance(max_distance: int) -> int:
    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)):
        raise ValueError(
            f"max_distance must be an integer in [0, {MAX_DISTANCE}], got {max_distance!r}"
        )
    r = int(max_distance)
    if not 0 <= r <= MAX_DISTANCE:
        raise ValueError(f"max_distance must be in [0, {MAX_DISTANCE}], got {r}")
    return r


def choose_chunks(n: int, max_distance: int, *, hashes: np.ndarray | None = None) -> int:
    """Number of chunks m minimising the estimated lookup + verification cost.

    Few chunks: few candidates but many key variants to look up; many chunks: cheap
    lookups but short keys, hence many chance collisions. Without ``hashes`` the estimate
    assumes n uniformly random hashes. With ``hashes`` (what near_pairs passes for large
    inputs) the few best uniform-model choices are re-scored on the data's own bucket
    sizes: real perceptual hashes have biased, correlated bits, which inflate the buckets
    of short chunks far more than those of long ones."""
    r = _check_distance(max_distance)
    n = max(int(n), 2)
    plans = _feasible_plans(r)
    model = {m: _plan_cost(p, lambda c: _uniform_stats(n, c)) for m, p in plans.items()}
    best = min(model, key=model.__getitem__)
    if hashes is None:
        return best
    h = _as_uint64(hashes)
    if h.shape[0] < 2:
        return best
    # the uniform model ranks within ~3x of the data on the bench distributions
    shortlist = sorted(model, key=model.__getitem__)[:4]
    shortlist = [m for m in shortlist if model[m] <= 6 * model[best]]
    rng = np.random.default_rng(0)
    data = {m: _plan_cost(plans[m], lambda c: _sampled_stats(h, c, rng)) for m in shortlist}
    return min(data, key=data.__getitem__)


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


def _as_uint64(hashes: np.ndarray) -> np.ndarray:
    h = np.asarray(hashes)
    if h.ndim != 1:
        raise ValueError(f"hashes must be 1-D, got shape {h.shape}")
    if h.dtype == np.uint64:
        pass
    elif h.dtype == np.int64:
        h = h.view(np.uint64)
    elif h.size == 0:
        h = h.astype(np.uint64)
    elif np.issubdtype(h.dtype, np.integer):
        if np.issubdtype(h.dtype, np.signedinteger) and h.min() < 0:
            raise ValueError("negative hashes are only accepted as int64 (viewed as uint64)")
        h = h.astype(np.uint64)
    else:
        raise TypeError(f"hashes must be uint64 or int64, got {h.dtype}")
    return np.ascontiguousarray(h)


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)


def _finish(keys: list[np.ndarray], h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair keys i*n + j -> (i, j, d) sorted by (i, j). Distances are recomputed after the
    sort rather than permuted along with it (a plain sort is cheaper than an argsort)."""
    n = h.shape[0]
    if not keys:
        return _empty()
    key = np.concatenate(keys) if len(keys) > 1 else keys[0]
    key.sort()
    i, j = np.divmod(key, n)
    d = np.bitwise_count(h[i] ^ h[j])
    return i, j, d


def brute_force_pairs(
    hashes: np.ndarray, max_distance: int, *, block_elems: int = 1 << 23
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """O(n^2) reference: compare row blocks against everything after them. Same output
    contract as :func:`near_pairs`; the ground truth for the tests and the benchmark."""
    r = _check_distance(max_distance)
    h = _as_uint64(hashes)
    n = h.shape[0]
    if n < 2:
        return _empty()
    rows = max(1, block_elems // n)
    keys = []
    for a in range(0, n - 1, rows):
        b = min(n - 1, a + rows)
        d = np.bitwise_count(h[a:b, None] ^ h[None, a + 1 :])  # (b-a, n-a-1)
        # column c of row k is j = a + 1 + c; keep j > i = a + k  <=>  c >= k
        d[np.tri(b - a, n - a - 1, -1, dtype=bool)] = 255
        ii, cc = np.nonzero(d <= r)
        if ii.size:
            keys.append((ii + a).astype(np.int64) * n + (cc + a + 1))
    return _finish(keys, h)


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
#: Below this many hashes threads cost more than they save.
_THREADS_MIN_N = 20_000


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


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def near_pairs(
    hashes: np.ndarray,
    max_distance: int,
    *,
    chunks: int | None = None,
    batch_pairs: int = 20_000_000,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) with popcount(hashes[i] ^ hashes[j]) <= max_distance.

    Parameters
    ----------
    hashes : 1-D uint64 (int64 is viewed as uint64).
    max_distance : Hamming radius r, 0..32.
    chunks : number of substrings m (2..64); default :func:`choose_chunks`.
    batch_pairs : upper bound on the candidate pairs materialised at once by one worker
        (~10 bytes of scratch each; the verifier works in cache-sized tiles below this).
    workers : threads (numpy releases the GIL in the heavy loops); default: usable CPUs.
        Results do not depend on it.

    Returns
    -------
    (i, j, d): int64, int64, uint8 arrays, sorted by (i, j), every pair exactly once.
    """
    r = _check_distance(max_distance)
    h = _as_uint64(hashes)
    n = h.shape[0]
    if chunks is not None and not (
        isinstance(chunks, (int, np.integer)) and not isinstance(chunks, bool) and 2 <= chunks <= 64
    ):
        raise ValueError(
            f"chunks must be an integer in [2, 64] (chunk keys <= 32 bits), got {chunks!r}"
        )
    if batch_pairs < 1:
        raise ValueError(f"batch_pairs must be positive, got {batch_pairs}")
    workers = _default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if n < 2:
        return _empty()
    if chunks is not None:
        m = int(chunks)
    else:
        m = choose_chunks(n, r, hashes=h if n >= DATA_AWARE_MIN_N else None)
    plan = _plan(m, r)
    searches = [
        _ChunkSearch(h, chunk, plan[:k], r, batch_pairs)
        for k, chunk in enumerate(plan)
        if chunk.radius >= 0
    ]
    if workers == 1 or n < _THREADS_MIN_N:
        keys = [key for s in searches for key in s.run_part(0, 1)]
    else:
        parts = 4  # several parts per chunk balance the uneven chunk costs
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(s.run_part, p, parts) for s in searches for p in range(parts)]
            keys = [key for f in futures for key in f.result()]
    return _finish(keys, h)
