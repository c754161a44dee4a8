"""Stain normalization on the real shared data: raw vs Reinhard vs CycleGAN.

Trains the CycleGAN of each pair (default: zheng_tecom -> pbc and bccd -> pbc) with the
`cpu` preset (or --preset / --set overrides) on the train split of the domain caches that
the workflow wrote (run `snakemake` first, or pass --results), then prints, per pair,
FID and KID of held-out source images against held-out target images before
normalization, after Reinhard and after the CycleGAN, with the wall times, and writes the
image grids next to the models.

    python bench/bench_normalization.py --pairs zheng_tecom:pbc bccd:pbc
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from cli import parse_overrides

from hemaflow.normalize.evaluate import evaluate_pair_files
from hemaflow.normalize.stages import fit_reinhard, train_pair


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=Path("results/bench/normalization"))
    parser.add_argument("--pairs", nargs="+", default=["zheng_tecom:pbc", "bccd:pbc"])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="CycleGAN option overrides, e.g. iterations=2000",
    )
    parser.add_argument("--max-images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {"preset": args.preset, **parse_overrides(args.set)}
    cache = args.results / "cache"
    rows = []
    for pair in args.pairs:
        source, target = pair.split(":")
        name = f"{source}_to_{target}"
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        files = {
            d: (str(cache / d / "images.npy"), str(cache / d / "index.parquet"))
            for d in (source, target)
        }
        start = time.perf_counter()
        summary = train_pair(
            *files[source],
            *files[target],
            options,
            name,
            state_root=str(args.out / "state"),
            out_model=str(out / "model.pt"),
            out_losses=str(out / "losses.csv"),
            out_summary=str(out / "summary.json"),
        )
        train_seconds = time.perf_counter() - start
        fit_reinhard(*files[target], str(out / "reinhard.json"))
        start = time.perf_counter()
        metrics = evaluate_pair_files(
            name,
            *files[source],
            *files[target],
            str(out / "model.pt"),
            str(out / "reinhard.json"),
            str(out / "metrics.json"),
            str(out / "grid.png"),
            args.max_images,
        )
        metrics.update(
            train_seconds=train_seconds,
            eval_seconds=time.perf_counter() - start,
            iterations=summary.get("iterations"),
        )
        rows.append(metrics)
    print(f"CycleGAN options: {options}")
    header = (
        f"{'pair':<22} {'n src/tgt':>10} {'FID raw':>8} {'FID rein':>8} {'FID cgan':>8} "
        f"{'KID raw':>8} {'KID rein':>8} {'KID cgan':>8} {'SSIM rec':>8} {'train s':>8}"
    )
    print(header)
    for m in rows:
        print(
            f"{m['pair']:<22} {m['source_images']:>4}/{m['target_images']:<5} "
            f"{m['fid_raw']:>8.1f} {m['fid_reinhard']:>8.1f} {m['fid_cyclegan']:>8.1f} "
            f"{m['kid_raw']:>8.4f} {m['kid_reinhard']:>8.4f} {m['kid_cyclegan']:>8.4f} "
            f"{m['ssim_reconstruction']:>8.3f} {m['train_seconds']:>8.0f}"
        )
    with open(args.out / "table.json", "w") as handle:
        json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
