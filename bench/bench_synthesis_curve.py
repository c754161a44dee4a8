"""Quality against training time of the generators that bench_synthesis.py trained.

For every snapshot of the C-WGAN-GP (its classes) and of the few-shot GAN's adaptation
(the rare class): KID and k-NN precision and recall of images generated from the
snapshot against the class's real validation images and held-out training images
(never the test split: the curve is for choosing how long to train), by training
minutes (the few-shot GAN's count its meta-training), and the share of them that a
classifier gives their class at the gate's confidence (``acceptance``; by default the
bench's guide, which is its gate's judge too). Prints the table; writes
curves.csv, curve_cwgan.png and curve_fewshot.png to --out.

bench_synthesis.py ends with this; run alone on the folder it wrote to redo the curves
with other sizes:

    python bench/bench_synthesis_curve.py --out results/bench/synthesis --images 100 --real 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hemaflow.metrics import InceptionFeatures
from hemaflow.plots import plot_quality_curve
from hemaflow.synth.curve import (
    CURVE_SPLITS,
    CurveSettings,
    Judge,
    classifier_judge,
    cwgan_curve,
    fewshot_curve,
)
from hemaflow.synth.pool import build_pool, class_images
from hemaflow.synth.quality import GateSettings


def domain_pool(results: Path, domain: str, subsample: dict[str, int] | None = None, seed: int = 0):
    """A domain cache of the workflow (``results/cache/<domain>``) as a synthesis pool,
    the classes of ``subsample`` cut to that many training images (the others held out)."""
    cache = results / "cache" / domain
    return build_pool(
        {
            domain: (
                np.load(cache / "images.npy", mmap_mode="r"),
                pd.read_parquet(cache / "index.parquet"),
            )
        },
        subsample=subsample,
        seed=seed,
    )


def real_classifier_for(
    x,
    y,
    classes,
    out: Path,
    name: str,
    overrides: list[str],
    quick: bool,
    log_csv: Path | None = None,
) -> tuple[Path, float, dict]:
    """Train a real-data classifier (``hemaflow.synth.real_classifier``, the C-WGAN-GP's
    guide and the gate's judge) on ``x, y`` into ``out/{name}.pt`` (checkpoints in
    ``out/state/{name}``, losses to ``log_csv``), its ``cpu`` preset with the command
    line's KEY=VALUE ``overrides`` (the smoke run's tiny network first under ``quick``).
    Returns the model, the seconds it took and the training summary."""
    from cli import parse_overrides

    from hemaflow import smoke
    from hemaflow.synth.real_classifier import RealClassifierOptions, train_real_classifier

    options = {**(smoke.REAL_CLASSIFIER if quick else {}), **parse_overrides(overrides)}
    model = out / f"{name}.pt"
    start = time.perf_counter()
    summary = train_real_classifier(
        x,
        y,
        classes,
        RealClassifierOptions.from_config(options),
        out / "state" / name,
        model,
        log_csv=log_csv,
    )
    return model, time.perf_counter() - start, summary


def rare_pool(results: Path, rare: str, rare_count: int, seed: int):
    """The pbc domain cache as a synthesis pool, ``rare`` subsampled to ``rare_count``
    training images (its others held out)."""
    return domain_pool(results, "pbc", {rare: rare_count}, seed)


def bench_curves(
    out: Path,
    images: np.ndarray,
    pool: pd.DataFrame,
    rare: str,
    settings: CurveSettings,
    inception: InceptionFeatures | None = None,
    judge: Judge | None = None,
) -> pd.DataFrame:
    """The curves of the models bench_synthesis.py wrote to ``out``; table and plots.
    ``judge``: the share of each point's images a classifier gives their class (the
    curves' ``acceptance``; empty without one)."""
    for name in ("cwgan.pt", "fewshot_adapted.pt", "fewshot_meta_losses.csv"):
        if not (out / name).is_file():
            raise FileNotFoundError(f"{out / name} missing: run bench/bench_synthesis.py first")
    inception = inception or InceptionFeatures()
    start = time.perf_counter()
    names = sorted(pool["canonical_class"].unique())
    held_out = {name: class_images(images, pool, name, CURVE_SPLITS) for name in names}
    cwgan = cwgan_curve(
        out / "cwgan.pt", out / "cwgan_losses.csv", held_out, settings, inception, judge=judge
    )
    fewshot = fewshot_curve(
        out / "fewshot_adapted.pt",
        out / "fewshot_adapt_losses.csv",
        rare,
        held_out[rare],
        settings,
        meta_losses_csv=out / "fewshot_meta_losses.csv",
        inception=inception,
        judge=judge,
    )
    sizes = f"{settings.images_per_class} generated vs {settings.real_per_class} real per class"
    plot_quality_curve(cwgan, str(out / "curve_cwgan.png"), f"C-WGAN-GP: {sizes}")
    plot_quality_curve(
        fewshot,
        str(out / "curve_fewshot.png"),
        f"few-shot GAN adapted to {rare} (time includes meta-training): {sizes}",
    )
    table = pd.concat([cwgan, fewshot], ignore_index=True)
    table.to_csv(out / "curves.csv", index=False)
    shown = table.assign(minutes=table["seconds"] / 60).drop(columns=["seconds"])
    columns = ["generator", "canonical_class", "iteration", "minutes", "kid", "kid_std"]
    columns += ["precision", "recall", "acceptance", "fake_images", "real_images"]
    with pd.option_context("display.width", 200, "display.precision", 4):
        print(shown[columns].to_string(index=False))
    print(f"quality curves: {time.perf_counter() - start:.0f} s ({sizes})")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=Path("results/bench/synthesis"))
    parser.add_argument("--rare", default="basophil")
    parser.add_argument("--rare-count", type=int, default=50)
    parser.add_argument("--images", type=int, default=100, help="generated per class and snapshot")
    parser.add_argument("--real", type=int, default=200, help="real validation images per class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--judge-model",
        type=Path,
        default=None,
        help="the classifier behind the acceptance column (default: the bench's guide, "
        "--out/classifier.pt, which is also its gate's judge: not independent)",
    )
    parser.add_argument("--min-confidence", type=float, default=GateSettings().min_confidence)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images, pool = rare_pool(args.results, args.rare, args.rare_count, args.seed)
    settings = CurveSettings(args.images, args.real, args.seed)
    judge_model = args.judge_model or args.out / "classifier.pt"
    judge = classifier_judge(judge_model, args.min_confidence)
    bench_curves(args.out, images, pool, args.rare, settings, judge=judge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
