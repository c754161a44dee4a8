"""One C-WGAN-GP over every class of a lab's cache, trained for a set budget, and its
quality against training time: the run behind docs/synthesis.md's 0.10.0 section.

Trains the real-data classifier that guides it (or takes ``--classifier-model``), then the
C-WGAN-GP (the ``cpu`` preset plus ``--cwgan`` overrides; ``--iterations`` steps with
``--snapshots`` copies of G_ema), then measures every snapshot with
``hemaflow.synth.curve``: KID and k-NN precision and recall of ``--curve-images``
generated images per class against at most ``--curve-real`` of the class's real
**validation** images (never test), and the share of them that an independent judge
gives their class at confidence 0.5 (``acceptance``): a second real-data classifier,
trained with another seed (``--judge``, or ``--judge-model``), that never guided the GAN.
Without it, a generator that ignores the class it is asked for can look good on KID and
recall (docs/synthesis.md, 0.15.0). Prints one row per snapshot (the mean over classes,
the worst class) and the last snapshot within ``--minutes`` per class against the issue's
targets; writes curve.csv, curve.png and grid.png (real validation cells above each
synthetic row) to ``--out``. A killed run resumes from its checkpoints under ``--out``.
``--rare`` cuts classes to ``--rare-count`` training images (their other training images
join the validation images they are measured against): a rare class trained beside the
large ones, to compare with the few-shot GAN (``bench_fewshot_curve.py``, the same cut).

    python bench/bench_cwgan_curve.py --iterations 12600 --snapshots 7      # about an hour
    python bench/bench_cwgan_curve.py --iterations 12600 --cwgan cpu_bf16=false
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from bench_synthesis_curve import domain_pool, real_classifier_for
from cli import parse_overrides

from hemaflow.synth.targets import QualityTargets, missed_targets

CURVE_METRICS = ("kid", "precision", "recall", "acceptance")


def per_class_at(curve: pd.DataFrame, minutes: float, targets: QualityTargets) -> pd.DataFrame:
    """Each class's row at the last snapshot within ``minutes`` of training (the first
    snapshot if none is), with ``missed``: the targets among the curve's metrics that
    the class missed (``missed_targets``' lines, empty when it met them all)."""
    within = curve[curve["seconds"] <= minutes * 60]
    chosen = within if len(within) else curve[curve["iteration"] == curve["iteration"].min()]
    last = chosen[chosen["iteration"] == chosen["iteration"].max()].copy()
    # acceptance and diversity are not on the curve: judged by the metrics it has
    judged = QualityTargets(**{k: v for k, v in targets.checked().items() if k in CURVE_METRICS})
    last["missed"] = ["; ".join(missed_targets(row, judged)) for row in last.to_dict("records")]
    return last


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--domain", default="pbc")
    parser.add_argument("--out", type=Path, default=Path("results/bench/cwgan_curve"))
    parser.add_argument("--iterations", type=int, default=12_600)
    parser.add_argument("--snapshots", type=int, default=7)
    parser.add_argument("--minutes", type=float, default=60.0, help="the budget judged")
    parser.add_argument("--cwgan", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--classifier", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--classifier-model", type=Path, default=None)
    parser.add_argument(
        "--judge",
        nargs="*",
        default=["seed=1"],
        metavar="KEY=VALUE",
        help="the independent judge's overrides of the classifier's cpu preset",
    )
    parser.add_argument("--judge-model", type=Path, default=None)
    parser.add_argument("--curve-images", type=int, default=60)
    parser.add_argument("--curve-real", type=int, default=120)
    parser.add_argument(
        "--rare",
        nargs="*",
        default=[],
        help="classes cut to --rare-count training images (the others held out, measured "
        "against with the validation images): how the C-WGAN-GP does on a rare class "
        "trained beside the large ones",
    )
    parser.add_argument("--rare-count", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="which images the cut keeps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny networks: a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from hemaflow import smoke
    from hemaflow.metrics import InceptionFeatures
    from hemaflow.plots import plot_quality_curve
    from hemaflow.synth.curve import CURVE_SPLITS, CurveSettings, classifier_judge, cwgan_curve
    from hemaflow.synth.cwgan import CWGANOptions, generate_cwgan, load_cwgan, train_cwgan
    from hemaflow.synth.evaluate import plot_samples
    from hemaflow.synth.pool import class_images, labelled_train

    cache = args.results / "cache" / args.domain
    if not (cache / "images.npy").is_file():
        print(f"{cache / 'images.npy'} missing: run the workflow up to the caches first")
        return 2
    images, pool = domain_pool(
        args.results, args.domain, {name: args.rare_count for name in args.rare}, args.seed
    )
    classes = sorted(pool.loc[pool["split"] == "train", "canonical_class"].unique())
    x, y = labelled_train(images, pool, classes)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    classifier = args.classifier_model
    if classifier is None:
        classifier, seconds, _ = real_classifier_for(
            x, y, classes, out, "classifier", args.classifier, args.quick
        )
        print(f"real classifier: {seconds:.0f} s")
    judge_model = args.judge_model
    if judge_model is None:
        judge_model, seconds, _ = real_classifier_for(
            x, y, classes, out, "judge", args.judge, args.quick
        )
        print(f"independent judge: {seconds:.0f} s")
    if judge_model == classifier:
        print("warning: the judge is the GAN's own guide, so its acceptance is not independent")

    overrides = {**(smoke.CWGAN if args.quick else {}), **parse_overrides(args.cwgan)}
    options = CWGANOptions.from_config(
        {**overrides, "iterations": args.iterations, "snapshots": args.snapshots}
    )
    model, losses = out / "cwgan.pt", out / "cwgan_losses.csv"
    summary = train_cwgan(
        x, y, classes, classifier, options, out / "state" / "cwgan", model, log_csv=losses
    )
    print(
        f"C-WGAN-GP over {len(classes)} classes, {len(x)} training images: "
        f"{summary['iterations']} steps, {summary['seconds_per_iteration']:.3f} s per step, "
        f"cpu_bf16 {summary['cpu_bf16']}"
    )

    settings = CurveSettings(images_per_class=args.curve_images, real_per_class=args.curve_real)
    held_out = {name: class_images(images, pool, name, CURVE_SPLITS) for name in classes}
    targets = QualityTargets.defaults("cwgan")
    judge = classifier_judge(judge_model, 0.5)
    curve = cwgan_curve(model, losses, held_out, settings, InceptionFeatures(), judge=judge)
    curve.to_csv(out / "curve.csv", index=False)
    sizes = f"{settings.images_per_class} generated vs {settings.real_per_class} real per class"
    plot_quality_curve(curve, str(out / "curve.png"), f"C-WGAN-GP over {args.domain}: {sizes}")
    generator, names, _ = load_cwgan(model)
    plot_samples(
        {name: class_images(images, pool, name, ["val"])[:8] for name in names},
        {name: generate_cwgan(generator, names.index(name), 8, seed=1) for name in names},
        str(out / "grid.png"),
        f"C-WGAN-GP after {summary['iterations']} steps: real validation cells, synthetic",
    )

    table = curve.assign(minutes=curve["seconds"] / 60)
    by_step = table.groupby("iteration").agg(
        minutes=("minutes", "first"),
        kid_mean=("kid", "mean"),
        kid_max=("kid", "max"),
        precision_mean=("precision", "mean"),
        precision_min=("precision", "min"),
        recall_mean=("recall", "mean"),
        acceptance_mean=("acceptance", "mean"),
        acceptance_min=("acceptance", "min"),
    )
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(f"quality against training time ({sizes}):")
        print(by_step.to_string())
        last = per_class_at(table, args.minutes, targets)
        print(
            f"per class at {last['iteration'].iloc[0]} steps "
            f"({last['minutes'].iloc[0]:.1f} min, the last snapshot within {args.minutes:g}), "
            f"against the C-WGAN-GP route's default targets {targets.checked()}:"
        )
        columns = ["canonical_class", *CURVE_METRICS, "missed"]
        print(last[columns].to_string(index=False))
    met = last["missed"] == ""
    print(f"classes meeting every target: {int(met.sum())} of {len(met)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
