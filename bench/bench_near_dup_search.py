"""Benchmark all-pairs Hamming-radius search (hemaflow.dedup.hamming_search.near_pairs).

Two hash distributions:
  uniform    independent uniformly random 64-bit hashes (almost no near pairs);
  clustered  mimics perceptual hashes of many similar images: ~n/20 centre hashes whose
             bits are biased (bit k set with probability p_k ~ Beta(2, 2), the same p_k for
             all centres, so bits have unequal, correlated statistics), and every item is a
             random centre with Binomial(64, 0.08) distinct random bits flipped.

Each case runs in a fresh subprocess so that its peak RSS (getrusage ru_maxrss) is its own.
With --dihedral, the flip/rotation-tolerant search (hemaflow.dedup.dihedral) is timed
instead: each of the n items gets eight orientation hashes (the identity from the
distribution, the seven others drawn from it independently), and 1% of the items are
planted as a turned copy of another (its orientation hash within 3 bits of the other's
identity hash); every planted pair must be found.

Usage (from the repository root):
  PYTHONPATH=src python bench/bench_near_dup_search.py [--sizes 10000,100000,1000000]
      [--radius 8] [--seed 0] [--dists uniform,clustered] [--dihedral]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

#: Hamming radius benchmarked when --radius is not given (the dedup threshold under study).
DEFAULT_RADIUS = 8
#: n at which the result is checked against the O(n^2) brute force (and timed).
BRUTE_FORCE_N = 10_000
DISTRIBUTIONS = ("uniform", "clustered")


def uniform_hashes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64)


def _pack(bits: np.ndarray) -> np.ndarray:
    """(n, 64) bool -> (n,) uint64, bit k of the hash = column k."""
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").ravel().astype(np.uint64)


def clustered_hashes(
    n: int, seed: int, *, flip_p: float = 0.08, per_centre: int = 20
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_centres = max(1, n // per_centre)
    p_bit = rng.beta(2.0, 2.0, size=64)
    centres = _pack(rng.random((n_centres, 64)) < p_bit)
    out = np.empty(n, dtype=np.uint64)
    block = 50_000
    for a in range(0, n, block):
        b = min(n, a + block)
        n_flips = rng.binomial(64, flip_p, size=b - a)
        # n_flips distinct random positions: the first n_flips of a random permutation
        rank = np.argsort(np.argsort(rng.random((b - a, 64)), axis=1), axis=1)
        out[a:b] = centres[rng.integers(0, n_centres, b - a)] ^ _pack(rank < n_flips[:, None])
    return out


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_dihedral_case(dist: str, n: int, radius: int, seed: int) -> dict:
    """The dihedral search on n items (eight hashes each), in this process."""
    from hemaflow.dedup.dihedral import DIHEDRAL, SEARCHED, dihedral_pairs

    gen = uniform_hashes if dist == "uniform" else clustered_hashes
    hashes = {name: gen(n, seed + k) for k, name in enumerate(DIHEDRAL)}
    rng = np.random.default_rng(seed + 100)
    planted = rng.choice(n, size=(n // 100, 2), replace=False)
    names = rng.choice(list(SEARCHED), size=len(planted))
    flips = np.uint64(1) << rng.integers(0, 64, size=(len(planted), 3)).astype(np.uint64)
    noise = flips[:, 0] | flips[:, 1] | flips[:, 2]
    for (i, j), name, bits in zip(planted, names, noise, strict=True):
        hashes[name][j] = hashes["identity"][i] ^ bits
    rss_data = _peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    left, right, _, found_names = dihedral_pairs(hashes, radius)
    seconds = time.perf_counter() - t0
    found = set(zip(left.tolist(), right.tolist(), found_names.tolist(), strict=True))
    missed = sum(
        (int(i), int(j), str(name)) not in found
        for (i, j), name in zip(planted, names, strict=True)
    )
    assert missed == 0, f"{missed} planted turned copies not found"
    return dict(
        dist=dist,
        n=n,
        radius=radius,
        chunks=0,
        pairs=int(left.size),
        seconds=seconds,
        cpu_seconds=time.process_time() - c0,
        peak_rss_mib=_peak_rss_mib(),
        rss_before_mib=rss_data,
        exact_dupe_pairs=len(planted),
    )


def run_case(dist: str, n: int, radius: int, seed: int, workers: int | None) -> dict:
    """One measurement, in this process (called in a subprocess by main)."""
    from hemaflow.dedup.hamming_search import (
        DATA_AWARE_MIN_N,
        brute_force_pairs,
        choose_chunks,
        near_pairs,
    )

    gen = uniform_hashes if dist == "uniform" else clustered_hashes
    h = gen(n, seed)
    rss_data = _peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    # the same choice near_pairs makes by default, done here to report it
    m = choose_chunks(n, radius, hashes=h if n >= DATA_AWARE_MIN_N else None)
    i, j, d = near_pairs(h, radius, chunks=m, workers=workers)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0  # all threads; robust to a busy machine
    rec = dict(
        dist=dist,
        n=n,
        radius=radius,
        chunks=m,
        pairs=int(i.size),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        peak_rss_mib=_peak_rss_mib(),
        rss_before_mib=rss_data,
        exact_dupe_pairs=int(np.count_nonzero(d == 0)),
    )
    if n == BRUTE_FORCE_N:
        t0 = time.perf_counter()
        bi, bj, bd = brute_force_pairs(h, radius)
        rec["brute_seconds"] = time.perf_counter() - t0
        assert np.array_equal(i, bi) and np.array_equal(j, bj) and np.array_equal(d, bd), (
            f"near_pairs differs from brute force ({dist}, n={n}, r={radius})"
        )
        rec["brute_match"] = True
    return rec


def _in_subprocess(
    dist: str, n: int, radius: int, seed: int, workers: int | None, dihedral: bool = False
) -> dict:
    case = f"{dist},{n},{radius},{seed},{workers or 0},{int(dihedral)}"
    cmd = [sys.executable, __file__, "--_case", case]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated n")
    ap.add_argument(
        "--radius",
        default=str(DEFAULT_RADIUS),
        help=f"Hamming radius, or comma-separated radii (default {DEFAULT_RADIUS})",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dists", default=",".join(DISTRIBUTIONS), help="uniform,clustered")
    ap.add_argument("--workers", type=int, default=0, help="threads (0: all usable CPUs)")
    ap.add_argument(
        "--dihedral", action="store_true", help="time the flip/rotation-tolerant search"
    )
    ap.add_argument("--_case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._case:
        dist, n, radius, seed, workers, dihedral = args._case.split(",")
        if int(dihedral):
            rec = run_dihedral_case(dist, int(n), int(radius), int(seed))
        else:
            rec = run_case(dist, int(n), int(radius), int(seed), int(workers) or None)
        print(json.dumps(rec))
        return

    sizes, radii = _ints(args.sizes), _ints(args.radius)
    dists = [d.strip() for d in args.dists.split(",") if d.strip()]
    if unknown := set(dists) - set(DISTRIBUTIONS):
        ap.error(f"unknown distribution(s): {sorted(unknown)}")
    import numpy  # noqa: F401  (version line)

    print(
        f"load average {os.getloadavg()[0]:.1f}  "
        f"radius={','.join(map(str, radii))} (default {DEFAULT_RADIUS})  sizes={sizes}  "
        f"seed={args.seed}  workers={args.workers or 'all'}  cpus={os.cpu_count()}  "
        f"numpy={np.__version__}"
        + ("  dihedral (d=0 pairs column: planted)" if args.dihedral else "")
    )
    header = (
        f"{'dist':<10}{'n':>10}{'radius':>7}{'chunks':>7}{'pairs':>12}{'d=0 pairs':>11}"
        f"{'seconds':>10}{'cpu s':>8}{'peak RSS MiB':>14}{'brute s':>9}{'match':>7}"
    )
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, int], list[dict]] = {}
    for dist in dists:
        for radius in radii:
            for n in sizes:
                rec = _in_subprocess(
                    dist, n, radius, args.seed, args.workers or None, args.dihedral
                )
                results.setdefault((dist, radius), []).append(rec)
                brute = f"{rec['brute_seconds']:.2f}" if "brute_seconds" in rec else "-"
                match = "yes" if rec.get("brute_match") else "-"
                print(
                    f"{dist:<10}{n:>10}{radius:>7}{rec['chunks']:>7}{rec['pairs']:>12}"
                    f"{rec['exact_dupe_pairs']:>11}{rec['seconds']:>10.2f}{rec['cpu_seconds']:>8.1f}"
                    f"{rec['peak_rss_mib']:>14.0f}{brute:>9}{match:>7}",
                    flush=True,
                )
    print("\ngrowth of time with n (exponent = log(t2/t1) / log(n2/n1); 2 = quadratic)")
    for (dist, radius), recs in results.items():
        parts = []
        for a, b in zip(recs, recs[1:], strict=False):
            ratio = b["seconds"] / max(a["seconds"], 1e-9)
            expo = math.log(ratio) / math.log(b["n"] / a["n"])
            parts.append(f"{a['n']}->{b['n']}: x{ratio:.1f} (exp {expo:.2f})")
        print(f"  {dist:<10} r={radius:<3} " + ("; ".join(parts) or "(one size only)"))


if __name__ == "__main__":
    main()
