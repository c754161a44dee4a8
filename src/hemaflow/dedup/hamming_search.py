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

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np

__all__ = ["MAX_DISTANCE", "brute_force_pairs", "choose_chunks", "near_pairs"]

#: Largest supported ``max_distance``; beyond 32 bits "near" is meaningless for 64-bit hashes.
MAX_DISTANCE = 32
#: Chunk keys must fit in uint32.
_MAX_CHUNK_BITS = 32
#: Radius cap used by the automatic chunk choice (keeps the number of variants moderate).
_AUTO_MAX_CHUNK_RADIUS = 3
#: Chunks at most this wide use a dense bucket table (2**24 int32 = 64 MiB) for lookups.
_TABLE_BITS = 24
#: Max variant lookups materialised at once (uint32 + int32 each).
_LOOKUP_BATCH = 1 << 22
#: Relative costs used by :func:`choose_chunks` (measured on numpy 2.x, x86-64): one
#: variant lookup vs one candidate pair verified. Only their ratio matters.
_COST_LOOKUP = 1.5
_COST_CANDIDATE = 1.0


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


def _estimated_cost(n: int, chunks: list[_Chunk]) -> float:
    """Uniform-hash cost model: per chunk, one lookup per distinct key and variant (half
    of the variants, see _bucket_neighbours), plus n^2/2 * V / 2^b candidate pairs."""
    cost = 0.0
    for c in chunks:
        if c.radius < 0:
            continue
        v = _n_variants(c.bits, c.radius)
        space = 2.0**c.bits
        distinct = space * -math.expm1(-n / space)  # expected number of non-empty buckets
        cost += _COST_LOOKUP * distinct * (v - 1) / 2 + _COST_CANDIDATE * n * n / 2 * v / space
        cost += _COST_CANDIDATE * n  # sort + bucket bookkeeping
    return cost


def _check_distance(max_distance: int) -> int:
    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)):
        raise ValueError(f"max_distance must be an integer in [0, {MAX_DISTANCE}], got {max_distance!r}")
    r = int(max_distance)
    if not 0 <= r <= MAX_DISTANCE:
        raise ValueError(f"max_distance must be in [0, {MAX_DISTANCE}], got {r}")
    return r


def choose_chunks(n: int, max_distance: int) -> int:
    """Number of chunks m (2..33) minimising the estimated lookup + verification cost for
    n uniformly distributed hashes. Few chunks: few candidates but many variants per key;
    many chunks: cheap lookups but short keys, hence many chance collisions."""
    r = _check_distance(max_distance)
    n = max(int(n), 2)
    best_m, best_cost = 2, math.inf
    for m in range(2, min(64, r + 1) + 1):
        chunks = _plan(m, r)
        if max(c.bits for c in chunks) > _MAX_CHUNK_BITS:
            continue
        if max(c.radius for c in chunks) > _AUTO_MAX_CHUNK_RADIUS:
            continue
        cost = _estimated_cost(n, chunks)
        if cost < best_cost:
            best_m, best_cost = m, cost
    return best_m


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
    contract as :func:`near_pairs`; used by the tests and as the small-n fallback."""
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
    ukeys: np.ndarray, bits: int, radius: int, lookup_table: np.ndarray | None
):
    """Yield (u1, u2) arrays of bucket indices with 1 <= popcount(k1 ^ k2) <= radius and
    k1 < k2, each unordered bucket pair exactly once.

    Only variants v = k ^ mask with v > k are looked up: that holds iff the mask's highest
    bit is 0 in k, so masks are grouped by highest bit and applied to the keys with that
    bit clear. This halves the lookups and the candidate pairs."""
    nu = ukeys.shape[0]
    for top, masks in enumerate(_masks_by_top_bit(bits, radius)):
        src = np.flatnonzero((ukeys & np.uint32(1 << top)) == 0)
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


#: Buckets up to this size are verified as dense (K, A, B) blocks by broadcasting, bigger
#: ones by expanding explicit candidate rows (np.repeat is ~4x slower per candidate).
_SMALL_BUCKET = 256
#: Block sizes: a bucket of c items is padded to the next class size (<= ~25 % waste).
_CLASS_SIZES = np.array(
    [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128]
    + [160, 192, 224, 256],
    dtype=np.int64,
)
_CLASS_OF = np.searchsorted(_CLASS_SIZES, np.arange(_SMALL_BUCKET + 1))
_N_CLASSES = _CLASS_SIZES.size
#: Bucket pairs buffered before verification (their arrays should stay cache-resident).
_FLUSH_PAIRS = 1 << 20


class _ChunkSearch:
    """State for one chunk: items sorted by chunk key, hashes in that order, buckets."""

    def __init__(self, h: np.ndarray, chunk: _Chunk, earlier: list[_Chunk], r: int, arange):
        self.r = r
        self.chunk = chunk
        self.earlier = [c for c in earlier if c.radius >= 0]
        self.arange = arange
        keys = ((h >> np.uint64(chunk.offset)) & np.uint64((1 << chunk.bits) - 1)).astype(
            np.uint32
        )
        self.order = np.argsort(keys, kind="stable")
        sk = keys[self.order]
        self.hs = h[self.order]
        n = h.shape[0]
        edges = np.flatnonzero(sk[1:] != sk[:-1]) + 1
        self.bstart = np.concatenate(([0], edges)).astype(np.int64)
        self.bcount = np.diff(np.concatenate((self.bstart, [n])))
        self.ukeys = sk[self.bstart]
        self.n = n

    def pair_keys(self, batch_pairs: int):
        """Yield int64 arrays of i*n + j (i < j) for the true pairs owned by this chunk."""
        # 1. pairs inside one bucket
        u = np.flatnonzero(self.bcount >= 2)
        if u.size:
            yield from self._bucket_pairs(u, u, batch_pairs, same=True)
        # 2. pairs across buckets within the chunk radius; bucket pairs are buffered so
        #    that the per-block Python overhead is amortised over many candidates
        if self.chunk.radius < 1:
            return
        table = None
        if self.chunk.bits <= _TABLE_BITS:
            table = np.full(1 << self.chunk.bits, -1, dtype=np.int32)
            table[self.ukeys] = np.arange(self.ukeys.size, dtype=np.int32)
        buf1, buf2, held, held_pairs = [], [], 0, 0
        neighbours = _bucket_neighbours(self.ukeys, self.chunk.bits, self.chunk.radius, table)
        for u1, u2 in neighbours:
            buf1.append(u1)
            buf2.append(u2)
            held += int(np.dot(self.bcount[u1], self.bcount[u2]))
            held_pairs += u1.size
            if held >= batch_pairs or held_pairs >= _FLUSH_PAIRS:
                yield from self._bucket_pairs(
                    np.concatenate(buf1), np.concatenate(buf2), batch_pairs, same=False
                )
                buf1, buf2, held, held_pairs = [], [], 0, 0
        if buf1:
            yield from self._bucket_pairs(
                np.concatenate(buf1), np.concatenate(buf2), batch_pairs, same=False
            )

    def _bucket_pairs(self, u1: np.ndarray, u2: np.ndarray, batch_pairs: int, *, same: bool):
        """All item pairs between buckets u1[k] and u2[k] (or inside u1[k] when same)."""
        a, b = self.bcount[u1], self.bcount[u2]
        if not same:  # the smaller bucket on the row side
            swap = a > b
            u1, u2 = np.where(swap, u2, u1), np.where(swap, u1, u2)
            a, b = np.minimum(a, b), np.maximum(a, b)
        big = b > _SMALL_BUCKET
        if big.any():
            yield from self._rows(u1[big], u2[big], batch_pairs, same=same)
            small = ~big
            u1, u2, a, b = u1[small], u2[small], a[small], b[small]
        if u1.size == 0:
            return
        # group bucket pairs by padded block shape (A, B); radix sort on a uint16 key
        gkey = (_CLASS_OF[a] * _N_CLASSES + _CLASS_OF[b]).astype(np.uint16)
        order = np.argsort(gkey, kind="stable")
        counts = np.bincount(gkey, minlength=_N_CLASSES * _N_CLASSES)
        ends = np.cumsum(counts)
        for g in np.flatnonzero(counts):
            big_a, big_b = _CLASS_SIZES[g // _N_CLASSES], _CLASS_SIZES[g % _N_CLASSES]
            sel = order[ends[g] - counts[g] : ends[g]]
            step = max(1, batch_pairs // int(big_a * big_b))
            for s in range(0, sel.size, step):
                k = sel[s : s + step]
                yield from self._block(u1[k], u2[k], a[k], b[k], int(big_a), int(big_b), same)

    def _block(self, u1, u2, a, b, big_a: int, big_b: int, same: bool):
        """Verify K bucket pairs as one (A, B, K) broadcast; padding repeats a bucket's last
        item (clamped index), and padded hits are dropped after the distance test. K is the
        innermost axis so that numpy's inner loops are long."""
        col = self.arange[:, None]
        ra = self.bstart[u1] + col[:big_a]  # (A, K)
        if big_a > 1:
            np.minimum(ra, self.bstart[u1] + (a - 1), out=ra)
        ha = self.hs[ra]
        if same:
            rb, hb = ra, ha
        else:
            rb = self.bstart[u2] + col[:big_b]
            if big_b > 1:
                np.minimum(rb, self.bstart[u2] + (b - 1), out=rb)
            hb = self.hs[rb]
        x = ha[:, None, :] ^ hb[None, :, :]  # (A, B, K)
        hit = np.flatnonzero(np.bitwise_count(x) <= np.uint8(self.r))
        if hit.size == 0:
            return
        n_k = u1.size
        ab, k = np.divmod(hit, n_k)
        ia, ib = np.divmod(ab, big_b)
        valid = (ia < ib) & (ib < a[k]) if same else (ia < a[k]) & (ib < b[k])
        if not valid.all():
            hit, k, ia, ib = hit[valid], k[valid], ia[valid], ib[valid]
        out = self._emit(ra[ia, k], rb[ib, k], x.reshape(-1)[hit])
        if out is not None:
            yield out

    def _rows(self, u1, u2, batch_pairs: int, *, same: bool):
        """Fallback for big buckets: one row per item of bucket u1 scanning bucket u2."""
        c1, c2 = self.bcount[u1], self.bcount[u2]
        cum = np.cumsum(c1)
        a = 0
        while a < u1.size:
            base = cum[a - 1] if a else 0
            b = max(a + 1, int(np.searchsorted(cum, base + batch_pairs, side="right")))
            p = _expand(self.bstart[u1[a:b]], c1[a:b], self.arange)
            if same:  # item at sorted position p vs p+1 .. end of its bucket
                end = np.repeat(self.bstart[u1[a:b]] + c1[a:b], c1[a:b])
                t, length = p + 1, end - p - 1
            else:
                t = np.repeat(self.bstart[u2[a:b]], c1[a:b])
                length = np.repeat(c2[a:b], c1[a:b])
            yield from self._verify_rows(p, t, length, batch_pairs)
            a = b

    def _verify_rows(self, p: np.ndarray, t: np.ndarray, length: np.ndarray, batch_pairs: int):
        """Rows (p, t, L): sorted position p against positions t .. t+L-1. Verify exact
        distances in batches of at most ~batch_pairs candidates."""
        hs, r = self.hs, np.uint8(self.r)
        cum = np.cumsum(length)
        a = 0
        while a < p.size:
            base = cum[a - 1] if a else 0
            b = max(a + 1, int(np.searchsorted(cum, base + batch_pairs, side="right")))
            lb = length[a:b]
            q = _expand(t[a:b], lb, self.arange)
            x = hs[q]
            x ^= np.repeat(hs[p[a:b]], lb)
            sel = np.flatnonzero(np.bitwise_count(x) <= r)
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


def near_pairs(
    hashes: np.ndarray,
    max_distance: int,
    *,
    chunks: int | None = None,
    batch_pairs: int = 20_000_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) with popcount(hashes[i] ^ hashes[j]) <= max_distance.

    Parameters
    ----------
    hashes : 1-D uint64 (int64 is viewed as uint64).
    max_distance : Hamming radius r, 0..32.
    chunks : number of substrings m (2..64); default :func:`choose_chunks`.
    batch_pairs : max candidate pairs materialised at once (bounds memory: ~25 bytes each).

    Returns
    -------
    (i, j, d): int64, int64, uint8 arrays, sorted by (i, j), every pair exactly once.
    """
    r = _check_distance(max_distance)
    h = _as_uint64(hashes)
    n = h.shape[0]
    if chunks is not None and not (isinstance(chunks, (int, np.integer)) and 2 <= chunks <= 64):
        raise ValueError(f"chunks must be an integer in [2, 64] (chunk keys <= 32 bits), got {chunks!r}")
    if batch_pairs < 1:
        raise ValueError(f"batch_pairs must be positive, got {batch_pairs}")
    if n < 2:
        return _empty()
    m = int(chunks) if chunks is not None else choose_chunks(n, r)
    plan = _plan(m, r)
    arange = np.arange(min(batch_pairs, 1 << 26) + 1, dtype=np.int64)
    keys: list[np.ndarray] = []
    for k, chunk in enumerate(plan):
        if chunk.radius < 0:
            continue
        search = _ChunkSearch(h, chunk, plan[:k], r, arange)
        keys.extend(search.pair_keys(batch_pairs))
        del search
    return _finish(keys, h)
