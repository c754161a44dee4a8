"""near_pairs (multi-index hashing) must return exactly the brute-force pair set."""

from __future__ import annotations

import numpy as np
import pytest

from hemaflow.dedup import hamming_search as hs
from hemaflow.dedup.hamming_search import brute_force_pairs, choose_chunks, near_pairs


def _bits_to_u64(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").ravel().astype(np.uint64)


def _uniform(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64)


def _clustered(n: int, seed: int, n_seeds: int = 8, flip_p: float = 0.05) -> np.ndarray:
    """Few seeds with biased bits; items flip ~3 random bits of a seed: many near pairs."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 2, size=64)
    seeds = _bits_to_u64(rng.random((n_seeds, 64)) < p)
    flips = _bits_to_u64(rng.random((n, 64)) < flip_p)
    return seeds[rng.integers(0, n_seeds, n)] ^ flips


def _assert_same(got, want) -> None:
    i, j, d = got
    wi, wj, wd = want
    assert i.dtype == np.int64 and j.dtype == np.int64
    np.testing.assert_array_equal(i, wi)
    np.testing.assert_array_equal(j, wj)
    np.testing.assert_array_equal(d.astype(np.int64), wd.astype(np.int64))


def _check_contract(h: np.ndarray, r: int, result) -> None:
    i, j, d = result
    assert np.all(i < j)
    key = i * len(h) + j
    assert np.all(np.diff(key) > 0)  # sorted by (i, j), no duplicates
    np.testing.assert_array_equal(d, np.bitwise_count(h[i] ^ h[j]))
    assert np.all(d <= r)


def test_brute_force_matches_definition() -> None:
    h = _clustered(200, seed=1)
    r = 9
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    want_i, want_j = np.nonzero(np.triu(dist <= r, k=1))
    i, j, d = brute_force_pairs(h, r)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(j, want_j)
    np.testing.assert_array_equal(d, dist[want_i, want_j])


@pytest.mark.parametrize("n", [37, 700, 3000])
@pytest.mark.parametrize("r", [0, 1, 3, 5, 8, 10, 12])
def test_uniform_matches_brute_force(n: int, r: int) -> None:
    h = _uniform(n, seed=n + r)
    got = near_pairs(h, r)
    _assert_same(got, brute_force_pairs(h, r))
    _check_contract(h, r, got)


@pytest.mark.parametrize("n", [300, 2500])
@pytest.mark.parametrize("r", [0, 1, 3, 5, 8, 10, 12])
def test_clustered_matches_brute_force(n: int, r: int) -> None:
    h = _clustered(n, seed=r)
    want = brute_force_pairs(h, r)
    if r >= 3:
        assert len(want[0]) > n  # the clustered data really has many pairs
    got = near_pairs(h, r)
    _assert_same(got, want)
    _check_contract(h, r, got)


@pytest.mark.parametrize("r", [0, 2, 6])
def test_duplicates(r: int) -> None:
    rng = np.random.default_rng(r)
    base = _uniform(40, seed=7)
    h = base[rng.integers(0, 40, 600)]  # every value ~15 times: big zero-distance buckets
    h[:5] = h[5]
    want = brute_force_pairs(h, r)
    got = near_pairs(h, r)
    _assert_same(got, want)
    assert np.count_nonzero(got[2] == 0) >= 600 * 14 // 2


def test_all_identical_uses_big_bucket_path() -> None:
    # one bucket of 700 > _SMALL_BUCKET items: exercised the row-expansion fallback
    h = np.full(700, 0x0123456789ABCDEF, dtype=np.uint64)
    h[::7] ^= np.uint64(1 << 40)
    i, j, d = near_pairs(h, 1, batch_pairs=5000)
    assert len(i) == 700 * 699 // 2
    _assert_same((i, j, d), brute_force_pairs(h, 1))


@pytest.mark.parametrize("chunks", [2, 3, 4, 5, 8])
def test_forced_chunks_agree(chunks: int) -> None:
    h = np.concatenate([_clustered(1200, seed=3), _uniform(800, seed=4)])
    r = 6
    _assert_same(near_pairs(h, r, chunks=chunks), brute_force_pairs(h, r))


@pytest.mark.parametrize("r", [0, 1, 4, 9, 16, 32])
def test_forced_chunks_agree_all_radii(r: int) -> None:
    h = _clustered(400, seed=11, flip_p=0.15)
    want = brute_force_pairs(h, r)
    for chunks in (3, 4, 8, 17, 64):
        if (r + 1) / chunks <= 4:  # skip plans with huge per-chunk radii (slow, not wrong)
            _assert_same(near_pairs(h, r, chunks=chunks), want)


def test_small_batches_and_threads_agree() -> None:
    h = _clustered(2000, seed=5)
    want = brute_force_pairs(h, 8)
    _assert_same(near_pairs(h, 8, batch_pairs=1000), want)
    _assert_same(near_pairs(h, 8, workers=1), want)


def test_threaded_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hs, "_THREADS_MIN_N", 0)
    h = _clustered(2000, seed=6)
    for workers in (2, 3):
        _assert_same(near_pairs(h, 7, workers=workers), brute_force_pairs(h, 7))


def test_data_aware_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hs, "DATA_AWARE_MIN_N", 0)
    h = _clustered(1500, seed=8)
    for r in (2, 8):
        m = choose_chunks(len(h), r, hashes=h)
        assert 2 <= m <= r + 1
        _assert_same(near_pairs(h, r), brute_force_pairs(h, r))


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single(n: int) -> None:
    i, j, d = near_pairs(np.zeros(n, dtype=np.uint64), 5)
    assert len(i) == len(j) == len(d) == 0
    assert i.dtype == np.int64 and j.dtype == np.int64
    assert len(brute_force_pairs(np.zeros(n, dtype=np.uint64), 5)[0]) == 0


def test_two_hashes() -> None:
    h = np.array([0b1011, 0b0010], dtype=np.uint64)  # distance 2
    for r, expected in [(0, 0), (1, 0), (2, 1), (32, 1)]:
        i, j, d = near_pairs(h, r)
        assert len(i) == expected
        if expected:
            assert (i[0], j[0], d[0]) == (0, 1, 2)
    i, j, d = near_pairs(np.array([7, 7], dtype=np.uint64), 0)
    assert list(zip(i, j, d, strict=True)) == [(0, 1, 0)]


def test_int64_input_viewed_as_uint64() -> None:
    u = _clustered(1500, seed=9)
    s = u.view(np.int64)
    assert (s < 0).any()
    for r in (0, 4, 9):
        _assert_same(near_pairs(s, r), near_pairs(u, r))
        _assert_same(near_pairs(s, r), brute_force_pairs(u, r))


@pytest.mark.parametrize("bad", [-1, 33, 64, 2.5, None, "3", True])
def test_bad_distance_raises(bad) -> None:
    h = _uniform(10, seed=0)
    with pytest.raises(ValueError, match="max_distance"):
        near_pairs(h, bad)
    with pytest.raises(ValueError, match="max_distance"):
        brute_force_pairs(h, bad)
    with pytest.raises(ValueError, match="max_distance"):
        choose_chunks(10, bad)


def test_bad_arguments_raise() -> None:
    h = _uniform(10, seed=0)
    with pytest.raises(ValueError, match="chunks"):
        near_pairs(h, 3, chunks=1)
    with pytest.raises(ValueError, match="chunks"):
        near_pairs(h, 3, chunks=65)
    with pytest.raises(ValueError, match="1-D"):
        near_pairs(h.reshape(2, 5), 3)
    with pytest.raises(TypeError):
        near_pairs(h.astype(np.float64), 3)


def test_choose_chunks_sane() -> None:
    for n in (10, 10_000, 1_000_000):
        for r in range(33):
            m = choose_chunks(n, r)
            plan = hs._plan(m, r)
            assert 2 <= m <= 64
            assert all(c.bits <= 32 for c in plan)
            assert sum(c.radius + 1 for c in plan) == r + 1  # generalised pigeonhole
            assert sum(c.bits for c in plan) == 64
    # larger radii need more (shorter) chunks
    assert choose_chunks(1_000_000, 2) <= choose_chunks(1_000_000, 12)


def test_large_default_path_consistent() -> None:
    # n above DATA_AWARE_MIN_N / _THREADS_MIN_N: data-aware chunking and threads, checked
    # against a different chunking run single-threaded (brute force would be too slow here)
    n = max(hs.DATA_AWARE_MIN_N, hs._THREADS_MIN_N) + 10_000
    rng = np.random.default_rng(12)
    h = np.concatenate([_clustered(n // 2, seed=12, n_seeds=n // 40), _uniform(n // 2, seed=13)])
    h = h[rng.permutation(n)]
    got = near_pairs(h, 8)
    assert len(got[0]) > n
    _check_contract(h, 8, got)
    other = near_pairs(h, 8, chunks=5, workers=1)
    _assert_same(got, other)
