"""Cross-lab arms: does a pbc classifier hold up on labs it never saw?

One arm is one set of classifier options (``--set``, on the ``small`` preset) trained on
the training domain's real training images (early stopping on its validation images
only), then tested on ALL kept images of every other labelled lab (images it never
saw), raw, after Reinhard and after Macenko (fitted on the training domain's training
images) and, with --cyclegan-dir, after each lab's CycleGAN,
over the classes both labs have. Each seed is one run; the table gives each run and the
mean and spread over seeds. ``--results`` picks the domain caches, so that centre crops
(``results``) and cell crops (a config with ``crop: cell``) are two arms as well.

    python bench/bench_cross_lab.py --results results_cell --arm cell-aug \\
        --set stain_augment=1.0 --seeds 0 1 2
    python bench/bench_cross_lab.py --table          # every arm run so far, one table
    python bench/bench_cross_lab.py --results results --in-lab bccd zheng_tecom \\
        --set iterations=1000 eval_every=50 warmup_iterations=50   # what a lab's own labels reach

Writes ``{out}/{arm}/seed{k}.json``; ``--table`` reads them all back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from cli import parse_overrides

from hemaflow.classify.predict import load_classifier
from hemaflow.classify.stages import lab_evaluation, labelled_rows, train_domain_stage
from hemaflow.normalize.macenko import MacenkoNormalizer
from hemaflow.normalize.reinhard import ReinhardNormalizer

ALL_SPLITS = ("train", "val", "test")


def run_arm(args) -> None:
    torch.set_num_threads(args.threads)
    cache = args.results / "cache"

    def files(domain: str) -> tuple[str, str]:
        return str(cache / domain / "images.npy"), str(cache / domain / "index.parquet")

    overrides = {"preset": "small", **parse_overrides(args.set)}
    for seed in args.seeds:
        out = args.out / args.arm
        out.mkdir(parents=True, exist_ok=True)
        options = {**overrides, "seed": seed}
        start = time.perf_counter()
        previous = out / f"seed{seed}.json"
        if args.evaluate_only and previous.is_file():
            # the model of an earlier run of this arm, evaluated again (new methods)
            summary = json.loads((out / f"summary{seed}.json").read_text())
            seconds = json.loads(previous.read_text())["train_seconds"]
            options = json.loads(previous.read_text())["options"]
        else:
            summary = train_domain_stage(
                *files(args.train_domain),
                args.train_domain,
                options,
                str(out / "state"),
                str(out / f"model{seed}.pt"),
                str(out / f"losses{seed}.csv"),
                str(out / f"summary{seed}.json"),
            )
            seconds = time.perf_counter() - start
        net, classes, _ = load_classifier(out / f"model{seed}.pt")
        record = {
            "arm": args.arm,
            "results": str(args.results),
            "options": options,
            "seed": seed,
            "train_seconds": seconds,
            "iterations": summary["iterations"],
            "val_balanced_accuracy": summary.get("best_val_balanced_accuracy"),
            "tta": args.tta,
            "labs": {},
        }
        test_images, test_rows = labelled_rows(*files(args.train_domain), ("test",))
        record["labs"][f"{args.train_domain} (test split)"] = lab_evaluation(
            net, classes, test_images, test_rows, args.n_boot, seed, args.tta
        )
        target_train = labelled_rows(*files(args.train_domain), ("train",))[0]
        reinhard = ReinhardNormalizer().fit(target_train)
        macenko = MacenkoNormalizer().fit(target_train)
        for domain in args.test_domains:
            images, rows = labelled_rows(*files(domain), ALL_SPLITS)
            variants = [
                ("none", images),
                ("reinhard", reinhard.transform(images)),
                ("macenko", macenko.transform(images)),
            ]
            folder = args.cyclegan_dir
            model = folder / f"{domain}_to_{args.train_domain}" / "model.pt" if folder else None
            if model is not None and model.is_file():
                from hemaflow.normalize.cyclegan import load_cyclegan, translate

                generator, _, _ = load_cyclegan(model)
                variants.append(("cyclegan", translate(generator, images)))
            for method, batch in variants:
                record["labs"][f"{domain} {method}"] = lab_evaluation(
                    net, classes, batch, rows, args.n_boot, seed, args.tta
                )
        with open(out / f"seed{seed}.json", "w") as handle:
            json.dump(record, handle, indent=1, default=float)
        print(f"{args.arm} seed {seed}: {seconds:.0f} s, {summary['iterations']} iterations")
        for lab, metrics in record["labs"].items():
            print(
                f"  {lab:<24} n={metrics['n_images']:<5} balanced accuracy "
                f"{metrics['balanced_accuracy']:.3f} [{metrics['balanced_accuracy_low']:.3f}, "
                f"{metrics['balanced_accuracy_high']:.3f}]  sensitivity "
                f"{ {k: round(v, 3) for k, v in metrics['sensitivity'].items()} }"
            )


def result_line(result: dict) -> str:
    """n, balanced accuracy with its interval and per-class sensitivity, one line."""
    sensitivity = {k: round(v, 3) for k, v in result["sensitivity"].items()}
    return (
        f"n={result['n_images']} balanced accuracy {result['balanced_accuracy']:.3f} "
        f"[{result['balanced_accuracy_low']:.3f}, {result['balanced_accuracy_high']:.3f}]"
        f"  sensitivity {sensitivity}"
    )


def run_lolo(args) -> None:
    """Leave-one-lab-out over every labelled lab (``--lolo``): each lab's images are
    first normalized to the training domain (``--method``, fitted on its training
    images; the training domain itself is left as it is), then for each held-out lab a
    classifier is trained on the others pooled and tested on all of the held-out lab."""
    from hemaflow.classify.leave_one_out import leave_one_lab_out

    torch.set_num_threads(args.threads)
    cache = args.results / "cache"
    labs = [args.train_domain, *args.test_domains]
    out = args.out / f"lolo-{args.arm}-{args.method}"
    out.mkdir(parents=True, exist_ok=True)
    target_train = labelled_rows(
        str(cache / args.train_domain / "images.npy"),
        str(cache / args.train_domain / "index.parquet"),
        ("train",),
    )[0]
    normalizers = {
        "reinhard": lambda: ReinhardNormalizer().fit(target_train),
        "macenko": lambda: MacenkoNormalizer().fit(target_train),
    }
    normalizer = normalizers[args.method]() if args.method in normalizers else None
    files = {}
    for lab in labs:
        files[lab] = (str(cache / lab / "images.npy"), str(cache / lab / "index.parquet"))
        if normalizer is not None and lab != args.train_domain:
            # one file per process: runs of several --held-out labs may share ``out``
            path = out / f"{lab}-{'-'.join(args.held_out) or 'all'}.npy"
            np.save(path, normalizer.transform(np.load(files[lab][0])))
            files[lab] = (str(path), files[lab][1])
    options = {"preset": "small", **parse_overrides(args.set)}
    for seed in args.seeds:
        for held_out in args.held_out or labs:
            start = time.perf_counter()
            result = leave_one_lab_out(
                files,
                held_out,
                labs,
                {**options, "seed": seed},
                str(out / "state"),
                str(out / f"model-{held_out}-{seed}.pt"),
                str(out / f"lolo-{held_out}-seed{seed}.json"),
                n_boot=args.n_boot,
                seed=seed,
                method=args.method,
                tta=args.tta,
                balance=args.balance_labs,
            )
            print(
                f"lolo {args.arm} {args.method} seed {seed}: {held_out} held out, "
                f"{time.perf_counter() - start:.0f} s, {result_line(result)}",
                flush=True,
            )


def run_in_lab(args) -> None:
    """``--in-lab LAB ...``: each lab's own yardstick, 5-fold cross-validation over all its
    kept labelled images (``in_lab_cross_validation``), one process per lab if run side by
    side."""
    from hemaflow.classify.leave_one_out import in_lab_cross_validation

    torch.set_num_threads(args.threads)
    cache = args.results / "cache"
    options = {"preset": "small", **parse_overrides(args.set)}
    for lab in args.in_lab:
        files = {lab: (str(cache / lab / "images.npy"), str(cache / lab / "index.parquet"))}
        for seed in args.seeds:
            out = args.out / f"in-lab-{args.arm}" / lab / f"seed{seed}"
            start = time.perf_counter()
            result = in_lab_cross_validation(
                files,
                lab,
                {**options, "seed": seed},
                str(args.out / "state"),
                str(out),
                folds=args.folds,
                n_boot=args.n_boot,
                seed=seed,
                tta=args.tta,
            )
            print(
                f"in-lab {lab} {args.arm} seed {seed}: {args.folds}-fold, "
                f"{time.perf_counter() - start:.0f} s, {result_line(result)}",
                flush=True,
            )


def print_table(out: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(out.glob("*/seed*.json")):
        record = json.loads(path.read_text())
        for lab, metrics in record["labs"].items():
            rows.append(
                {
                    "arm": record["arm"],
                    "seed": record["seed"],
                    "lab": lab,
                    "balanced_accuracy": metrics["balanced_accuracy"],
                    "val": record["val_balanced_accuracy"],
                    "seconds": record["train_seconds"],
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        print(f"no runs under {out}")
        return table
    grouped = table.groupby(["arm", "lab"])["balanced_accuracy"]
    summary = pd.DataFrame(
        {
            "runs": grouped.size(),
            "mean": grouped.mean(),
            "min": grouped.min(),
            "max": grouped.max(),
            "seeds": grouped.apply(lambda v: " ".join(f"{x:.3f}" for x in v)),
        }
    ).reset_index()
    wide = summary.pivot(index="arm", columns="lab", values="mean")
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(summary.to_string(index=False))
        print()
        print(wide.to_string())
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=Path("results/bench/cross_lab"))
    parser.add_argument("--arm", default="baseline")
    parser.add_argument("--train-domain", default="pbc")
    parser.add_argument("--test-domains", nargs="+", default=["bccd", "zheng_tecom"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="print the table of all runs")
    parser.add_argument("--lolo", action="store_true", help="leave-one-lab-out instead")
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="predict as the mean over the 8 symmetries of the square (the workflow's "
        "cross_lab.tta default); --no-tta for single predictions",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="evaluate the arm's models again (e.g. with --cyclegan-dir), no training",
    )
    parser.add_argument("--held-out", nargs="*", default=[], help="--lolo: only these labs")
    parser.add_argument(
        "--balance-labs",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="--lolo: weight the training labs alike within each class (the workflow's "
        "cross_lab.balance_labs)",
    )
    parser.add_argument(
        "--in-lab",
        nargs="+",
        default=[],
        metavar="LAB",
        help="instead: cross-validate a classifier inside each of these labs (its yardstick)",
    )
    parser.add_argument("--folds", type=int, default=5, help="--in-lab: folds (5)")
    parser.add_argument("--method", default="none", choices=["none", "reinhard", "macenko"])
    parser.add_argument(
        "--cyclegan-dir",
        type=Path,
        default=None,
        help="folder of {lab}_to_{train domain}/model.pt CycleGANs (bench_normalization.py)",
    )
    args = parser.parse_args(argv)
    if args.table:
        print_table(args.out)
        return 0
    if args.in_lab:
        run_in_lab(args)
    elif args.lolo:
        run_lolo(args)
    else:
        run_arm(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
