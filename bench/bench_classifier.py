"""The classifier on real shared data at 64 px: pbc 8 classes, and the cross-lab table.

1. Trains the classifier (``small`` preset, or --preset / --set overrides) on pbc's real
   training images only (early stopping on its validation images) and prints accuracy,
   balanced accuracy and macro-F1 with bootstrap 95 % CIs on pbc's test split, per-class
   sensitivity and specificity, and the training time.
2. Tests that model on the held-out (val + test) images of bccd and zheng_tecom over the
   classes they share with pbc, raw, after Reinhard (statistics of pbc's training images)
   and after the CycleGANs of each --cyclegan-dir (``{source}_to_pbc/model.pt``, e.g. the
   models `bench/bench_normalization.py` wrote; ``LABEL=DIR`` names a variant, by default
   the folder's name) and prints the table.

Reads the domain caches of the workflow (run `snakemake` up to the caches first).

    python bench/bench_classifier.py --cyclegan-dir results/bench/normalization_wgangp
    python bench/bench_classifier.py --cyclegan-dir shift=results/bench/a affine=results/bench/b
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

from hemaflow.classify.metrics import evaluation_report
from hemaflow.classify.predict import load_classifier, predict_proba
from hemaflow.classify.stages import cross_lab_row, labelled_rows, train_domain_stage
from hemaflow.normalize.reinhard import ReinhardNormalizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=Path("results/bench/classifier"))
    parser.add_argument("--train-domain", default="pbc")
    parser.add_argument("--test-domains", nargs="+", default=["bccd", "zheng_tecom"])
    parser.add_argument("--cyclegan-dir", nargs="*", default=[], metavar="[LABEL=]DIR")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cache = args.results / "cache"

    def files(domain: str) -> tuple[str, str]:
        return str(cache / domain / "images.npy"), str(cache / domain / "index.parquet")

    options = {"preset": args.preset, **parse_overrides(args.set)}
    cyclegan_dirs = {}
    for spec in args.cyclegan_dir:
        label, _, folder = spec.rpartition("=")
        path = Path(folder)
        name = label or ("cyclegan" if len(args.cyclegan_dir) == 1 else path.name)
        if name in cyclegan_dirs or name in ("none", "reinhard"):
            parser.error(f"--cyclegan-dir: label {name!r} given twice or reserved")
        cyclegan_dirs[name] = path
    start = time.perf_counter()
    summary = train_domain_stage(
        *files(args.train_domain),
        args.train_domain,
        options,
        str(out / "state"),
        str(out / "model.pt"),
        str(out / "losses.csv"),
        str(out / "summary.json"),
    )
    train_seconds = time.perf_counter() - start
    net, classes, _ = load_classifier(out / "model.pt")
    images, rows = labelled_rows(*files(args.train_domain), ("test",))
    keep = rows["canonical_class"].isin(classes).to_numpy()
    lookup = {name: k for k, name in enumerate(classes)}
    y_true = rows.loc[keep, "canonical_class"].map(lookup).to_numpy(dtype=np.int64)
    y_pred = predict_proba(net, images[keep]).argmax(axis=1)
    report, per_class, _ = evaluation_report(y_true, y_pred, list(classes), args.n_boot, 0)
    print(f"classifier options: {options}")
    print(
        f"{args.train_domain}, {len(classes)} classes, real images only: "
        f"{summary['iterations']} iterations in {train_seconds:.0f} s "
        f"(early stop: {summary.get('stopped_early')}, best validation balanced accuracy "
        f"{summary.get('best_val_balanced_accuracy', float('nan')):.4f})"
    )
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        print(
            f"  test {name}: {report[name]:.4f} "
            f"[{report[name + '_low']:.4f}, {report[name + '_high']:.4f}]"
        )
    with pd.option_context("display.width", 160, "display.precision", 3):
        print(per_class[["support", "sensitivity", "specificity", "precision"]].to_string())

    reinhard = ReinhardNormalizer().fit(labelled_rows(*files(args.train_domain), ("train",))[0])
    table = []
    for domain in args.test_domains:
        images, rows = labelled_rows(*files(domain), ("val", "test"))
        variants = {"none": images, "reinhard": reinhard.transform(images)}
        for label, folder in cyclegan_dirs.items():
            model = folder / f"{domain}_to_{args.train_domain}" / "model.pt"
            if not model.is_file():
                print(f"  {domain}: no CycleGAN at {model}, skipped")
                continue
            from hemaflow.normalize.cyclegan import load_cyclegan, translate

            generator, _, _ = load_cyclegan(model)
            variants[label] = translate(generator, images)
        for method, normalized in variants.items():
            metrics = cross_lab_row(net, list(classes), normalized, rows, args.n_boot, 0)
            table.append({"test_domain": domain, "method": method, **metrics})
    table = pd.DataFrame(table)
    print(f"cross-lab: trained on {args.train_domain}, tested on held-out images of each lab")
    for row in table.itertuples():
        print(
            f"  {row.test_domain:<12} {row.method:<12} n={row.n_images:<4} "
            f"balanced accuracy {row.balanced_accuracy:.3f} "
            f"[{row.balanced_accuracy_low:.3f}, {row.balanced_accuracy_high:.3f}]  "
            f"accuracy {row.accuracy:.3f}  classes: {row.shared_classes}"
        )
    table.to_csv(out / "cross_lab.csv", index=False)
    with open(out / "report.json", "w") as handle:
        json.dump({"train_seconds": train_seconds, **report}, handle, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
