"""Synthesis on real pbc images at 64 px: the few-shot GAN and the C-WGAN-GP on a class
made rare on purpose, and the C-WGAN-GP on two large classes.

With basophil subsampled to 50 training images (its other training images held out with
val and test), trains the real-data classifier, one C-WGAN-GP over basophil and two large
classes, and the few-shot GAN (meta-trained on the large classes, adapted to the 50
basophils); generates images of each and prints, per (route, class), KID, FID (where
there are enough images), LPIPS diversity (next to the real held-out images' own),
precision, recall, the classifier's accuracy on the synthetic images and the quality
gate's acceptance, with wall times. Grids go to --out. Then the quality curves
(bench_synthesis_curve.py): KID and precision of each generator's snapshots (the presets
keep 5) against training minutes, on real validation images; curves.csv and
curve_*.png go to --out (--curve-images 0 leaves them out).

Reads the pbc domain cache of the workflow (run `snakemake` up to the caches first).

    python bench/bench_synthesis.py --out results/bench/synthesis
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
from bench_synthesis_curve import bench_curves, rare_pool, real_classifier_for
from cli import parse_overrides

from hemaflow.metrics import InceptionFeatures, get_lpips
from hemaflow.synth.curve import CurveSettings, classifier_judge
from hemaflow.synth.evaluate import HELD_OUT_SPLITS, class_metrics, plot_samples
from hemaflow.synth.pool import class_images, labelled_train, train_counts
from hemaflow.synth.quality import CopyDetector, GateSettings, quality_gate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=Path("results/bench/synthesis"))
    parser.add_argument("--rare", default="basophil")
    parser.add_argument("--rare-count", type=int, default=50)
    parser.add_argument("--large", nargs=2, default=["eosinophil", "neutrophil"])
    parser.add_argument("--large-min", type=int, default=1000)
    parser.add_argument("--generate", type=int, default=300, help="images per (route, class)")
    parser.add_argument("--classifier", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cwgan", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fewshot", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--curve-images", type=int, default=100, help="0: no quality curves")
    parser.add_argument("--curve-real", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hemaflow.synth.cwgan import CWGANOptions, generate_cwgan, load_cwgan, train_cwgan
    from hemaflow.synth.fewshot import FewShotOptions, train_fewshot_meta
    from hemaflow.synth.fewshot_adapt import adapt_fewshot, generate_fewshot, load_fewshot
    from hemaflow.synth.real_classifier import classify, load_real_classifier

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    images, pool = rare_pool(args.results, args.rare, args.rare_count, args.seed)
    counts = train_counts(pool)
    print(f"train counts after subsampling: {counts}")
    classes = sorted(c for c, n in counts.items() if n > 0)
    times = {}

    x, y = labelled_train(images, pool, classes)
    model, times["classifier"], summary = real_classifier_for(
        x,
        y,
        classes,
        out,
        "classifier",
        args.classifier,
        quick=False,
        log_csv=out / "classifier_losses.csv",
    )
    net, net_classes, _ = load_real_classifier(model)
    test_x, test_names = [], []
    for name in classes:
        held = class_images(images, pool, name, ["test"])
        test_x.append(held)
        test_names += [name] * len(held)
    predicted = np.asarray(net_classes)[classify(net, np.concatenate(test_x)).argmax(axis=1)]
    test_names = np.asarray(test_names)
    per_class = [float((predicted[test_names == c] == c).mean()) for c in classes]
    print(
        f"real classifier: {summary['iterations']} iterations in {times['classifier']:.0f} s; "
        f"test balanced accuracy {np.mean(per_class):.3f} "
        f"({', '.join(f'{c} {a:.2f}' for c, a in zip(classes, per_class))})"
    )

    cwgan_classes = sorted([args.rare, *args.large])
    start = time.perf_counter()
    x, y = labelled_train(images, pool, cwgan_classes)
    cwgan_summary = train_cwgan(
        x,
        y,
        cwgan_classes,
        out / "classifier.pt",
        CWGANOptions.from_config(parse_overrides(args.cwgan)),
        out / "state" / "cwgan",
        out / "cwgan.pt",
        log_csv=out / "cwgan_losses.csv",
    )
    times["cwgan"] = time.perf_counter() - start

    meta_classes = sorted(c for c, n in counts.items() if n > args.large_min)
    fewshot_options = FewShotOptions.from_config(parse_overrides(args.fewshot))
    start = time.perf_counter()
    x, y = labelled_train(images, pool, meta_classes)
    meta_summary = train_fewshot_meta(
        x,
        y,
        meta_classes,
        fewshot_options,
        out / "state" / "fewshot_meta",
        out / "fewshot_meta.pt",
        log_csv=out / "fewshot_meta_losses.csv",
    )
    times["fewshot_meta"] = time.perf_counter() - start
    start = time.perf_counter()
    adapt_summary = adapt_fewshot(
        out / "fewshot_meta.pt",
        class_images(images, pool, args.rare, ["train"]),
        fewshot_options,
        out / "state" / "fewshot_adapt",
        out / "fewshot_adapted.pt",
        log_csv=out / "fewshot_adapt_losses.csv",
    )
    times["fewshot_adapt"] = time.perf_counter() - start
    print(
        f"C-WGAN-GP over {cwgan_classes}: {cwgan_summary['iterations']} iterations in "
        f"{times['cwgan']:.0f} s; few-shot meta-training on {meta_classes}: "
        f"{meta_summary['iterations']} iterations in {times['fewshot_meta']:.0f} s, "
        f"adaptation to {args.rare_count} {args.rare}: {adapt_summary['iterations']} iterations "
        f"in {times['fewshot_adapt']:.0f} s"
    )

    generator, names, _ = load_cwgan(out / "cwgan.pt")
    fewshot_generator, code, _ = load_fewshot(out / "fewshot_adapted.pt")
    runs = [("fewshot", args.rare, lambda n, s: generate_fewshot(fewshot_generator, code, n, s))]
    for name in cwgan_classes:
        index = names.index(name)
        runs.append(("cwgan", name, lambda n, s, i=index: generate_cwgan(generator, i, n, s)))

    inception, lpips_model = InceptionFeatures(), get_lpips()
    rows, grids_real, grids_fake = [], {}, {}
    for route, name, sample in runs:
        start = time.perf_counter()
        fake = sample(args.generate, args.seed + 1)
        probabilities = classify(net, fake)
        gate = quality_gate(
            fake,
            list(net_classes).index(name),
            probabilities,
            list(net_classes),
            CopyDetector(class_images(images, pool, name, ["train"]), 8),
            GateSettings(),
        )
        real = class_images(images, pool, name, HELD_OUT_SPLITS)
        accuracy = float((np.asarray(net_classes)[probabilities.argmax(1)] == name).mean())
        metrics = class_metrics(
            fake,
            real,
            accuracy,
            inception=inception,
            lpips_model=lpips_model,
            max_images=500,
            fid_min_images=200,
            seed=args.seed,
        )
        metrics["gate_acceptance"] = float(gate["accepted"].mean())
        metrics["near_copies"] = int((gate["reject_reason"] == "near_copy_of_training_image").sum())
        metrics["seconds"] = time.perf_counter() - start
        rows.append({"route": route, "class": name, "train_images": counts[name], **metrics})
        grids_real[f"{route}:{name}"], grids_fake[f"{route}:{name}"] = real[:8], fake[:8]
    plot_samples(grids_real, grids_fake, str(out / "grid.png"), "real held-out | synthetic")

    table = pd.DataFrame(rows)
    columns = [
        "route",
        "class",
        "train_images",
        "kid",
        "kid_std",
        "fid",
        "lpips_diversity",
        "real_lpips_diversity",
        "precision",
        "recall",
        "classifier_accuracy",
        "gate_acceptance",
        "near_copies",
    ]
    with pd.option_context("display.width", 200, "display.precision", 4):
        print(table[columns].to_string(index=False))
    print("wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    table.to_csv(out / "table.csv", index=False)
    with open(out / "times.json", "w") as handle:
        json.dump(times, handle, indent=2)
    if args.curve_images:
        settings = CurveSettings(args.curve_images, args.curve_real, args.seed)
        judge = classifier_judge(out / "classifier.pt", GateSettings().min_confidence)
        bench_curves(out, images, pool, args.rare, settings, inception, judge=judge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
