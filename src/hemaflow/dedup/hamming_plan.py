"""Chunk plans and the cost model that chooses between them, for
:mod:`hemaflow.dedup.hamming_search`.

A plan cuts the 64 bits into ``m`` contiguous chunks with per-chunk radii obeying the
generalised pigeonhole bound (:func:`_plan`). Its cost is estimated from work counters
(key variants looked up, neighbour bucket pairs, padded candidates verified, ...),
weighted by :data:`_COSTS`: either for uniformly random hashes (:func:`_uniform_stats`)
or from the bucket sizes of the actual data and a sample of its items
(:func:`_sampled_stats`). :func:`hemaflow.dedup.hamming_search.choose_chunks` scores the
feasible plans (:func:`_feasible_plans`) with these.
"""

from __future__ import annotations

import math

import numpy as np

from hemaflow.dedup.hamming_index import (
    _PAD_OF,
    _SMALL_BUCKET,
    _TABLE_BITS,
    _Chunk,
    _chunk_keys,
    _masks_by_top_bit,
)

#: Radius cap used by the automatic chunk choice (keeps the number of variants moderate).
_AUTO_MAX_CHUNK_RADIUS = 4
#: Cost model, in ~ns per unit (numpy 2.x, x86-64; fitted on timings of the bench data),
#: for the work counters of _uniform_stats / _sampled_stats: variant lookups in a dense
#: table, variant lookups by binary search (chunks wider than _TABLE_BITS), neighbour
#: bucket pairs found, bucket items gathered for the blocks, padded candidate pairs
#: verified in blocks, candidate pairs verified on the big-bucket row path, items indexed.
_COSTS = np.array([3.5, 30.0, 7.0, 7.0, 0.9, 3.0, 150.0])
#: Items sampled per chunk for the data-aware estimate, and cap on their variant lookups.
_SAMPLE_ITEMS = 4096
_SAMPLE_LOOKUPS = 1 << 22


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
