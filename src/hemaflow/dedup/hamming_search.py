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
generated once (see :func:`hemaflow.dedup.hamming_index._bucket_neighbours`).

The code is split by responsibility: this module holds the public entry points
(:func:`near_pairs`, :func:`choose_chunks`, :func:`brute_force_pairs`) and the input
checks; :mod:`hemaflow.dedup.hamming_plan` the chunk plans and the cost model behind
:func:`choose_chunks`; :mod:`hemaflow.dedup.hamming_index` the per-chunk bucket index,
the neighbour-bucket enumeration and the candidate verification.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hemaflow.dedup.hamming_index import _ChunkSearch
from hemaflow.dedup.hamming_plan import (
    _feasible_plans,
    _plan,
    _plan_cost,
    _sampled_stats,
    _uniform_stats,
)

__all__ = [
    "DATA_AWARE_MIN_N",
    "MAX_DISTANCE",
    "brute_force_pairs",
    "choose_chunks",
    "near_pairs",
]

#: Largest supported ``max_distance``; beyond 32 bits "near" is meaningless for 64-bit hashes.
MAX_DISTANCE = 32
#: From this many hashes on, near_pairs picks the chunking from sampled bucket statistics
#: of the actual data (skewed hash bits inflate buckets far beyond the uniform model).
DATA_AWARE_MIN_N = 50_000
#: Below this many hashes threads cost more than they save.
_THREADS_MIN_N = 20_000


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
