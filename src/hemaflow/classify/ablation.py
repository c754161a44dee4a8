"""The ablation study: what each stage contributes to the classifier.

Each variant is a full pipeline with one stage taken out (or changed), evaluated like the
main run on real held-out test images of its own pool. The table has accuracy, balanced
accuracy and macro-F1 with their bootstrap intervals and the sensitivity of every class,
as in the reference study's ablation; the chart shows both."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

# variant -> (normalization, synthesis variant, classifier change, description)
VARIANTS: dict[str, tuple[str | None, str, str | None, str]] = {
    "full": (None, "routed", None, "every stage as configured"),
    "no_normalization": ("none", "routed", None, "without stain normalization"),
    "no_cwgan": (None, "no_cwgan", None, "without the C-WGAN-GP (its classes unbalanced)"),
    "no_fewshot": (None, "no_fewshot", None, "without the few-shot GAN (its classes unbalanced)"),
    "fewshot_all": (None, "fewshot_all", None, "the few-shot GAN for every class"),
    "no_ge": (None, "routed", "no_ge", "without the gather-excite module"),
}


def variant_settings(variant: str, method: str) -> tuple[str, str, str | None]:
    """(normalization method, synthesis variant, classifier change) of ``variant`` in a
    run whose normalization method is ``method``."""
    if variant not in VARIANTS:
        raise ValueError(f"ablation variant {variant!r} is not one of {', '.join(VARIANTS)}")
    norm, synth, change, _ = VARIANTS[variant]
    return norm or method, synth, change


def classifier_options_for(options: Mapping, change: str | None) -> dict:
    """The classifier options of a variant: ``no_ge`` turns the gather-excite module off
    (the SE-ResNeXt ablation of SENet-GE)."""
    options = dict(options)
    if change == "no_ge":
        options["gather_excite"] = False
    elif change is not None:
        raise ValueError(f"unknown classifier change {change!r}")
    return options


def ablation_table(evaluations: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """``evaluations``: variant -> (evaluation summary.json, per_class.csv). One row per
    variant, in the order given."""
    rows = []
    for variant, (summary_path, per_class_path) in evaluations.items():
        with open(summary_path) as handle:
            summary = json.load(handle)
        per_class = pd.read_csv(per_class_path, index_col=0)
        if "canonical_class" not in per_class:
            per_class = per_class.rename_axis("canonical_class").reset_index()
        row = {"variant": variant, "description": VARIANTS.get(variant, ("", "", "", ""))[3]}
        row["test_images"] = int(summary["n_images"])
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            for suffix in ("", "_low", "_high"):
                row[metric + suffix] = summary[metric + suffix]
        for _, item in per_class.iterrows():
            row[f"sensitivity_{item['canonical_class']}"] = item["sensitivity"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if "full" in evaluations:
        full = table.loc[table["variant"] == "full", "balanced_accuracy"].iloc[0]
        table["balanced_accuracy_vs_full"] = table["balanced_accuracy"] - full
    return table


def plot_ablation(table: pd.DataFrame, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [c.removeprefix("sensitivity_") for c in table if c.startswith("sensitivity_")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    x = np.arange(len(table))
    value = table["balanced_accuracy"].to_numpy()
    error = np.vstack(
        [value - table["balanced_accuracy_low"], table["balanced_accuracy_high"] - value]
    )
    left.bar(x, value, yerr=error, capsize=3, color="tab:blue")
    left.set_xticks(x, table["variant"], rotation=40, ha="right")
    left.set_ylabel("balanced accuracy (95 % CI)")
    left.set_ylim(max(0.0, float(table["balanced_accuracy_low"].min()) - 0.05), 1.0)
    left.set_title("test split, real images")
    for i, variant in enumerate(table["variant"]):
        sens = [table.loc[i, f"sensitivity_{c}"] for c in classes]
        right.plot(range(len(classes)), sens, marker="o", label=variant)
    right.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
    right.set_ylabel("sensitivity")
    right.set_title("per class")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def ablation_stage(
    variants: list[str], summaries: list[str], per_class: list[str], out_csv: str, out_png: str
) -> pd.DataFrame:
    if not (len(variants) == len(summaries) == len(per_class)):
        raise ValueError("ablation_stage: one summary and one per-class table per variant")
    table = ablation_table(
        {v: (s, p) for v, s, p in zip(variants, summaries, per_class, strict=True)}
    )
    table.to_csv(out_csv, index=False)
    plot_ablation(table, out_png)
    return table
