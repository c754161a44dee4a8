"""The few-shot GAN on classes cut to a few training images, trained for a set budget, and
its quality against training time: the runs behind docs/synthesis.md's 0.11.0 section.

Cuts each ``--rare`` class of a lab's cache to ``--rare-count`` training images (its other
training images held out, never trained on), meta-trains the few-shot GAN on the large
classes (more than ``--large-min`` training images; the ``cpu`` preset plus ``--fewshot``
overrides, ``--meta-iterations`` outer iterations) and adapts it to each cut class
(``--adapt-iterations`` steps, the preset's snapshots). Then, per cut class, against its
real **validation** images (val and the held-out training images; never test):

- the curve (``hemaflow.synth.curve``): KID, k-NN precision and recall of every snapshot,
  by training minutes counting the meta-training;
- the final generator: KID, precision, recall and LPIPS diversity of ``--final-images``
  images (the real images' own diversity beside it), and the share of ``--gate-images``
  candidates that the quality gate accepts; the gate's judge is a real-data classifier
  trained on the cut pool, as in the workflow (or ``--judge-model``), with its acceptance
  of the class's real validation images (the gate is fair at 0.9 or more);
- with ``--quality-gate min_realism=1`` (any ``synthesis.quality_gate`` key), the gate
  also scores realism against the class's training images, and the final measures are
  of the first ``--final-images`` candidates it accepted: the images a classifier would
  get. ``realism_real_acceptance``: the share of real validation images that pass the
  realism check;
- the few-shot route's default targets (``synthesis.quality_targets.fewshot``): met, or
  which were missed and by how much.

Writes curve.csv, curve.png, final.csv and grid.png (real validation cells above each
synthetic row) to ``--out``; a killed run resumes from its checkpoints under ``--out``.

    python bench/bench_fewshot_curve.py --meta-iterations 2400 --adapt-iterations 1500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from bench_synthesis_curve import domain_pool, real_classifier_for
from cli import parse_overrides

from hemaflow.synth.targets import QualityTargets, missed_targets, quality_measures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--domain", default="pbc")
    parser.add_argument("--out", type=Path, default=Path("results/bench/fewshot_curve"))
    parser.add_argument("--rare", nargs="+", default=["basophil", "monocyte"])
    parser.add_argument("--rare-count", type=int, default=50)
    parser.add_argument("--large-min", type=int, default=1000)
    parser.add_argument("--meta-iterations", type=int, default=2_400)
    parser.add_argument("--adapt-iterations", type=int, default=1_500)
    parser.add_argument("--fewshot", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--classifier", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--judge-model", type=Path, default=None)
    parser.add_argument("--quality-gate", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--curve-images", type=int, default=60)
    parser.add_argument("--curve-real", type=int, default=120)
    parser.add_argument("--final-images", type=int, default=120)
    parser.add_argument("--gate-images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="which images the cut keeps")
    parser.add_argument("--quick", action="store_true", help="tiny networks: a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hemaflow import smoke
    from hemaflow.metrics import InceptionFeatures, get_lpips
    from hemaflow.plots import plot_quality_curve
    from hemaflow.synth.curve import CURVE_SPLITS, CurveSettings, fewshot_curve
    from hemaflow.synth.evaluate import class_metrics, plot_samples
    from hemaflow.synth.fewshot import FewShotOptions, train_fewshot_meta
    from hemaflow.synth.fewshot_adapt import adapt_fewshot, generate_fewshot, load_fewshot
    from hemaflow.synth.pool import class_images, labelled_train, train_counts
    from hemaflow.synth.quality import (
        CopyDetector,
        GateSettings,
        RealismScorer,
        quality_gate,
        real_acceptance,
    )
    from hemaflow.synth.real_classifier import classify, load_real_classifier

    cache = args.results / "cache" / args.domain
    if not (cache / "images.npy").is_file():
        print(f"{cache / 'images.npy'} missing: run the workflow up to the caches first")
        return 2
    index = pd.read_parquet(cache / "index.parquet")
    trained = set(index.loc[index["split"] == "train", "canonical_class"].dropna())
    missing = sorted(set(args.rare) - trained)
    if missing:
        print(f"--rare: no training images of {missing} in {cache} (classes: {sorted(trained)})")
        return 2
    images, pool = domain_pool(
        args.results, args.domain, {name: args.rare_count for name in args.rare}, args.seed
    )
    counts = train_counts(pool)
    large = sorted(n for n, c in counts.items() if c > args.large_min and n not in args.rare)
    if not large:
        print(f"no class has more than --large-min {args.large_min} training images: {counts}")
        return 2
    print(f"training images: {counts}; meta-training on {large}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    judge_path = args.judge_model
    classes = sorted(c for c, n in counts.items() if n > 0)
    if judge_path is None:
        x, y = labelled_train(images, pool, classes)
        judge_path, seconds, _ = real_classifier_for(
            x, y, classes, out, "judge", args.classifier, args.quick
        )
        print(f"the gate's judge (real images of the cut pool): {seconds:.0f} s")

    overrides = {**(smoke.FEWSHOT if args.quick else {}), **parse_overrides(args.fewshot)}
    options = FewShotOptions.from_config(
        {
            **overrides,
            "meta_iterations": args.meta_iterations,
            "adapt_iterations": args.adapt_iterations,
        }
    )
    x, y = labelled_train(images, pool, large)
    meta, meta_losses = out / "meta.pt", out / "meta_losses.csv"
    summary = train_fewshot_meta(
        x, y, large, options, out / "state" / "meta", meta, log_csv=meta_losses
    )
    print(
        f"meta-training on {len(x)} images: {summary['iterations']} outer iterations, "
        f"{summary['seconds'] / 60:.1f} min, cpu_bf16 {summary['cpu_bf16']}"
    )
    settings = CurveSettings(images_per_class=args.curve_images, real_per_class=args.curve_real)
    inception, lpips = InceptionFeatures(), get_lpips()
    judge, judge_classes, _ = load_real_classifier(judge_path)
    gate = GateSettings.from_config(parse_overrides(args.quality_gate))
    targets = QualityTargets.defaults("fewshot")
    curves, finals, real_rows, synthetic_rows = [], [], {}, {}
    for name in args.rare:
        own = class_images(images, pool, name, ["train"])
        model, losses = out / f"{name}.pt", out / f"{name}_losses.csv"
        adapted = adapt_fewshot(meta, own, options, out / "state" / name, model, log_csv=losses)
        print(f"{name}: adapted to {len(own)} images in {adapted['seconds'] / 60:.1f} min")
        held_out = class_images(images, pool, name, CURVE_SPLITS)
        curves.append(
            fewshot_curve(model, losses, name, held_out, settings, meta_losses, inception)
        )
        generator, code, _ = load_fewshot(model)
        candidates = generate_fewshot(generator, code, args.gate_images, seed=args.seed + 2)
        realism = RealismScorer(own, inception.features) if gate.min_realism > 0 else None
        verdicts = quality_gate(
            candidates,
            judge_classes.index(name),
            classify(judge, candidates),
            list(judge_classes),
            CopyDetector(own, gate.copy_max_hamming),
            gate,
            realism,
        )
        acceptance = float(verdicts["accepted"].mean())
        if realism is None:
            final = generate_fewshot(generator, code, args.final_images, seed=args.seed + 1)
        else:  # measured on what passed the gate
            final = candidates[verdicts["accepted"].to_numpy()][: args.final_images]
        metrics = class_metrics(
            final,
            held_out,
            None,
            inception=inception,
            lpips_model=lpips,
            max_images=args.final_images,
            kid_subset_size=max(2, min(50, len(final), len(held_out))),
            seed=args.seed,
        )
        fairness = real_acceptance(
            classify(judge, held_out),
            [name] * len(held_out),
            judge_classes,
            gate,
            None if realism is None else realism.scores(held_out),
        ).set_index("canonical_class")
        measures = quality_measures(metrics, acceptance)
        finals.append(
            {
                "canonical_class": name,
                "training_images": len(own),
                "meta_minutes": summary["seconds"] / 60,
                "adapt_minutes": adapted["seconds"] / 60,
                **measures,
                "lpips_diversity": metrics.get("lpips_diversity"),
                "real_lpips_diversity": metrics.get("real_lpips_diversity"),
                "judge_real_acceptance": fairness.loc[name, "acceptance"],
                "realism_real_acceptance": fairness.loc[name, "realism_acceptance"],
                "measured_images": len(final),
                "missed": "; ".join(missed_targets(measures, targets)),
            }
        )
        real_rows[name] = class_images(images, pool, name, ["val"])[:8]
        synthetic_rows[name] = final[:8]

    curve = pd.concat(curves, ignore_index=True)
    curve.to_csv(out / "curve.csv", index=False)
    sizes = f"{settings.images_per_class} generated vs {settings.real_per_class} real per class"
    plot_quality_curve(curve, str(out / "curve.png"), f"few-shot GAN, {args.domain}: {sizes}")
    plot_samples(
        real_rows,
        synthetic_rows,
        str(out / "grid.png"),
        f"few-shot GAN, {args.rare_count} training images: real validation cells, synthetic",
    )
    table = pd.DataFrame(finals)
    table.to_csv(out / "final.csv", index=False)
    with pd.option_context("display.width", 250, "display.precision", 3):
        print(f"quality against training minutes (meta-training included; {sizes}):")
        print(
            curve[["canonical_class", "iteration", "seconds", "kid", "precision", "recall"]]
            .assign(minutes=lambda t: t["seconds"] / 60)
            .drop(columns="seconds")
            .to_string(index=False)
        )
        print(f"the final generators against the few-shot default targets {targets.checked()}:")
        print(
            table.drop(columns=["lpips_diversity", "real_lpips_diversity"]).to_string(index=False)
        )
    met = table["missed"] == ""
    print(f"classes meeting every target: {int(met.sum())} of {len(met)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
