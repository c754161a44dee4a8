"""The rare-class study: does synthesis lift the sensitivity of classes made rare?

On one lab's cache (pbc by default), basophil and monocyte are cut to 50 and to 20
training images (their other training images held out, unused), three seeds each, and
the classifier is trained in four arms: no synthesis (class-balanced batches and the
usual augmentation), the cut classes padded with gated C-WGAN-GP images, with gated
few-shot GAN images, or half of each. Prints, per level, class and arm, the test-split
sensitivity (balanced accuracy for class `all`) over the seeds: mean, std, min-max and
each run with its bootstrap 95 % interval; the lift of each synthesis arm over no
synthesis against the seed-to-seed spread; and whether the few-shot arm lifts the rare
classes by more than that spread. Writes runs.csv, summary.csv, lift.csv, summary.md and
chart.png to --out. The library does the work (`hemaflow.synth.rare_study`, also the
workflow's `rare_class_study` target).

Resumable: each (arm, level, seed) writes --out/runs/level{L}/seed{S}/{arm}.json (its
further classifiers, --classifier-repeats, {arm}.repeat{R}.json) and is skipped when it
exists with the same settings; generators are trained once per (level,
seed) (the few-shot meta-training once per seed) and shared by the arms; checkpoints in
--out/state; the log in --out/bench-levels{L}-seeds{S}.log. Reads the workflow's domain
cache (`snakemake` up to the caches first).

    python bench/bench_rare_classes.py --results results_cell --out results/bench/rare_classes
    python bench/bench_rare_classes.py --quick --levels 20 --seeds 0   # smoke run, minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from cli import parse_overrides

from hemaflow.logs import setup_logging
from hemaflow.synth.rare_study import run_study
from hemaflow.synth.rare_study_plan import ARMS, QUICK, RareStudySettings

SECTIONS = ("classifier", "real_classifier", "cwgan", "fewshot", "quality_gate")


def study_settings(args: argparse.Namespace) -> RareStudySettings:
    """The defaults (or --quick's tiny networks) with the command line's choices."""
    base = RareStudySettings().with_changes(**QUICK) if args.quick else RareStudySettings()
    target = args.target if args.target == "largest" else int(args.target)
    changes = {
        "classes": args.classes,
        "levels": args.levels,
        "seeds": args.seeds,
        "arms": args.arms,
        "target": target,
        "large_min": args.large_min,
        "synthetic_share": args.synthetic_share,
        "classifier_repeats": args.classifier_repeats,
    }
    if args.n_boot is not None:
        changes["n_boot"] = args.n_boot
    for section in SECTIONS:
        overrides = parse_overrides(getattr(args, section))
        changes[section] = {**getattr(base, section), **overrides}
    return base.with_changes(**changes)


def log_name(levels: list[int], seeds: list[int]) -> str:
    """The run's log file: one per (levels, seeds), so that runs of other seeds side by
    side on one --out (the way to use more cores) keep their own logs."""
    return f"bench-levels{'-'.join(map(str, levels))}-seeds{'-'.join(map(str, seeds))}.log"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="cache location")
    parser.add_argument("--domain", default="pbc")
    parser.add_argument("--classes", nargs="+", default=["basophil", "monocyte"])
    parser.add_argument("--levels", nargs="+", type=int, default=[50, 20])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--target", default="largest", help="'largest' or a count")
    parser.add_argument("--large-min", type=int, default=1000)
    parser.add_argument(
        "--synthetic-share",
        type=float,
        default=1.0,
        help="most of a cut class's padded rows that may be synthetic; the rest repeat "
        "its real images (synthesis.max_synthetic_share)",
    )
    parser.add_argument(
        "--classifier-repeats",
        type=int,
        default=1,
        help="classifiers per arm, level and seed on the same training set, other "
        "classifier seeds; each seed's value is their mean",
    )
    parser.add_argument("--n-boot", type=int, default=None)
    for section in SECTIONS:
        flag = "--" + section.replace("_", "-")
        parser.add_argument(flag, nargs="*", default=[], metavar="KEY=VALUE", dest=section)
    parser.add_argument("--out", type=Path, default=Path("results/bench/rare_classes"))
    parser.add_argument("--quick", action="store_true", help="tiny networks: a smoke run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    setup_logging(str(args.out / log_name(args.levels, args.seeds)))
    settings = study_settings(args)
    cache = args.results / "cache" / args.domain
    start = time.perf_counter()
    run_study(
        cache / "images.npy",
        cache / "index.parquet",
        args.domain,
        settings,
        args.out,
        args.out / "state",
        progress=lambda line: print(line, flush=True),
    )
    minutes = (time.perf_counter() - start) / 60
    print((args.out / "summary.md").read_text())
    print(f"whole run {minutes:.1f} min on {args.threads} threads; files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
