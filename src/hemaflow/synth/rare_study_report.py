"""The rare-class study's tables, chart and verdict (the runs: ``hemaflow.synth.rare_study``).

- ``runs.csv``: one row per (arm, level, seed, repeat, measure, class): the test-split
  sensitivity of each cut class and the balanced accuracy ("all"), with the run's
  stratified bootstrap 95 % interval, and the cut class's real and synthetic training
  images;
- ``summary.csv``: arm x level x class over the seeds: mean, std, min and max, and every
  seed's value with its interval. A seed's value is the mean over its classifiers (the
  study's ``classifier_repeats``: classifiers of other seeds on the same training set);
  with more than one, ``classifier_spread`` is their max - min, averaged over seeds;
- ``lift.csv``: per synthesis arm, level and class, the change against ``none`` paired
  by seed (mean, min, max) and the seed-to-seed spread (max - min over seeds of either
  arm, the larger); a lift counts only when its mean exceeds that spread;
- ``summary.md``: the settings, both tables and the plain verdict on the few-shot arm;
- ``chart.png``: per level, the mean over seeds per arm and class, the min-max range as
  error bars, every seed as a dot."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.synth.rare_study_plan import ARM_LABELS, RareStudySettings

ALL = "all"  # the class of a balanced-accuracy row
REPORT_FILES = ("runs.csv", "summary.csv", "lift.csv", "summary.md", "chart.png")


def runs_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    rows = []
    for result in results:
        test = result["test"]
        base = {
            "arm": result["arm"],
            "level": result["level"],
            "seed": result["seed"],
            "repeat": result.get("repeat", 0),
        }
        for name in result["cut_classes"]:
            counts = result["training_images"][name]
            rows.append(
                {
                    **base,
                    "measure": "sensitivity",
                    "class": name,
                    "value": test["sensitivity"][name],
                    "low": test["sensitivity_low"][name],
                    "high": test["sensitivity_high"][name],
                    "real_images": counts["real"],
                    "synthetic_images": counts["synthetic_cwgan"] + counts["synthetic_fewshot"],
                }
            )
        rows.append(
            {
                **base,
                "measure": "balanced_accuracy",
                "class": ALL,
                "value": test["balanced_accuracy"],
                "low": test["balanced_accuracy_low"],
                "high": test["balanced_accuracy_high"],
                "real_images": np.nan,
                "synthetic_images": np.nan,
            }
        )
    return pd.DataFrame(rows)


def _cells(runs: pd.DataFrame, settings: RareStudySettings) -> list[tuple[int, str, str]]:
    """(level, measure, class) in report order: levels as given, the cut classes, then
    balanced accuracy."""
    measures = [("sensitivity", name) for name in settings.classes] + [("balanced_accuracy", ALL)]
    return [
        (level, measure, name)
        for level in settings.levels
        for measure, name in measures
        if ((runs["level"] == level) & (runs["class"] == name)).any()
    ]


def _select(runs: pd.DataFrame, level: int, name: str, arm: str) -> pd.DataFrame:
    """One row per seed: ``value`` the mean over the seed's classifiers (``classifiers``
    of them, from ``classifier_min`` to ``classifier_max``); ``low``, ``high``: the
    bootstrap interval of a seed with one classifier."""
    chosen = runs[(runs["level"] == level) & (runs["class"] == name) & (runs["arm"] == arm)]
    return (
        chosen.groupby("seed", sort=True)
        .agg(
            value=("value", "mean"),
            low=("low", "mean"),
            high=("high", "mean"),
            classifiers=("repeat", "size"),
            classifier_min=("value", "min"),
            classifier_max=("value", "max"),
            synthetic_images=("synthetic_images", "mean"),
        )
        .reset_index()
    )


def _seed_text(row) -> str:
    if row.classifiers == 1:
        return f"s{row.seed} {row.value:.3f} [{row.low:.3f}, {row.high:.3f}]"
    return (
        f"s{row.seed} {row.value:.3f} ({row.classifiers} classifiers "
        f"{row.classifier_min:.3f}-{row.classifier_max:.3f})"
    )


def summary_table(runs: pd.DataFrame, settings: RareStudySettings) -> pd.DataFrame:
    """arm x level x class: mean, std (n - 1; NaN for one seed), min, max over seeds (of
    each seed's mean over its classifiers); ``classifiers``: the fewest a seed has;
    ``classifier_spread``: max - min over a seed's classifiers, averaged over the seeds
    with more than one (NaN if none)."""
    rows = []
    for level, measure, name in _cells(runs, settings):
        for arm in settings.arms:
            part = _select(runs, level, name, arm)
            if part.empty:
                continue
            values = part["value"].to_numpy(dtype=float)
            several = part[part["classifiers"] > 1]
            rows.append(
                {
                    "level": level,
                    "measure": measure,
                    "class": name,
                    "arm": arm,
                    "n_seeds": len(part),
                    "mean": values.mean(),
                    "std": values.std(ddof=1) if len(values) > 1 else np.nan,
                    "min": values.min(),
                    "max": values.max(),
                    "classifiers": int(part["classifiers"].min()),
                    "classifier_spread": (
                        float((several["classifier_max"] - several["classifier_min"]).mean())
                        if len(several)
                        else np.nan
                    ),
                    "synthetic_images": part["synthetic_images"].mean(),
                    "per_seed": "; ".join(_seed_text(r) for r in part.itertuples()),
                }
            )
    return pd.DataFrame(rows)


def lift_table(runs: pd.DataFrame, settings: RareStudySettings) -> pd.DataFrame:
    """Each synthesis arm against ``none``, paired by seed, next to the seed-to-seed
    spread; ``seeds_higher``: in how many seeds the arm scores higher than ``none``;
    ``exceeds_spread``: the mean lift is larger than the spread (needs two seeds)."""
    if "none" not in settings.arms:
        return pd.DataFrame()
    rows = []
    for level, measure, name in _cells(runs, settings):
        base = _select(runs, level, name, "none").set_index("seed")["value"]
        for arm in settings.arms:
            if arm == "none":
                continue
            other = _select(runs, level, name, arm).set_index("seed")["value"]
            seeds = sorted(set(base.index) & set(other.index))
            if not seeds:
                continue
            lift = (other[seeds] - base[seeds]).to_numpy(dtype=float)
            spread = max(np.ptp(base[seeds]), np.ptp(other[seeds]))
            rows.append(
                {
                    "level": level,
                    "measure": measure,
                    "class": name,
                    "arm": arm,
                    "n_seeds": len(seeds),
                    "lift_mean": lift.mean(),
                    "lift_min": lift.min(),
                    "lift_max": lift.max(),
                    "seeds_higher": int((lift > 0).sum()),
                    "spread_none": float(np.ptp(base[seeds])),
                    "spread_arm": float(np.ptp(other[seeds])),
                    "spread": float(spread),
                    "exceeds_spread": bool(len(seeds) > 1 and lift.mean() > spread),
                }
            )
    return pd.DataFrame(rows)


def verdict(lift: pd.DataFrame, arm: str = "fewshot") -> list[str]:
    """Plain sentences: does ``arm`` lift the cut classes' sensitivity by more than the
    seed-to-seed spread?"""
    label = ARM_LABELS[arm]
    if lift.empty or not (lift["arm"] == arm).any():
        return [f"The {label} arm was not compared with no synthesis (both arms are needed)."]
    cells = lift[(lift["arm"] == arm) & (lift["measure"] == "sensitivity")]
    lines = []
    for _, row in cells.iterrows():
        if row["n_seeds"] < 2:
            judged = "one seed, no spread to compare with"
        elif row["exceeds_spread"]:
            judged = "larger than the spread"
        else:
            judged = "not larger than the spread"
        lines.append(
            f"- level {row['level']}, {row['class']}: {row['lift_mean']:+.3f} sensitivity "
            f"(per seed {row['lift_min']:+.3f} to {row['lift_max']:+.3f}, higher in "
            f"{row['seeds_higher']} of {row['n_seeds']} seeds; seed-to-seed "
            f"spread {row['spread']:.3f}): {judged}."
        )
    lifted = int(cells["exceeds_spread"].sum())
    if (cells["n_seeds"] < 2).all():
        return [f"Not judged: one seed gives no seed-to-seed spread for the {label} arm.", *lines]
    answer = "Yes" if lifted == len(cells) else ("No" if lifted == 0 else "Partly")
    head = (
        f"{answer}: the {label} arm lifts the cut classes' test sensitivity above no "
        f"synthesis by more than the seed-to-seed spread in {lifted} of {len(cells)} "
        "(level, class) cells."
    )
    return [head, *lines]


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    lines = [
        "| " + " | ".join(frame.columns) + " |",
        "|" + "---|" * len(frame.columns),
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def study_markdown(
    summary: pd.DataFrame,
    lift: pd.DataFrame,
    settings: RareStudySettings,
    domain: str,
    target: str,
) -> str:
    """The study as a markdown page; ``target``: what the cut classes were padded to."""
    shown = summary.copy()
    shown["arm"] = shown["arm"].map(ARM_LABELS)
    shown["min-max"] = [f"{a:.3f}-{b:.3f}" for a, b in zip(shown["min"], shown["max"])]
    columns = ["level", "class", "arm", "mean", "std", "min-max", "per_seed"]
    several = (summary["classifiers"] > 1).any()
    if several:
        columns.insert(6, "classifier_spread")
    shown = shown[columns]
    parts = [
        "# Rare-class study",
        "",
        f"{domain}: {', '.join(settings.classes)} cut to {', '.join(map(str, settings.levels))} "
        f"training images; seeds {', '.join(map(str, settings.seeds))}; synthetic images pad "
        f"each cut class to {target} training images. Test split only; "
        "per run the value and its stratified bootstrap 95 % interval; class `all` is "
        "the balanced accuracy."
        + (
            " A seed's value is the mean over its classifiers (trained on the same "
            "training set with other seeds; `classifier_spread`: their max - min, the "
            "classifier's own noise)."
            if several
            else ""
        ),
        "",
        markdown_table(shown),
        "",
        "## Against no synthesis (paired by seed)",
        "",
    ]
    if lift.empty:
        parts.append("No `none` arm: nothing to compare with.")
    else:
        columns = ["level", "class", "arm", "lift_mean", "lift_min", "lift_max", "spread"]
        parts.append(markdown_table(lift.assign(arm=lift["arm"].map(ARM_LABELS))[columns]))
        parts.append("")
        parts.append("Spread: max - min over seeds of either arm, the larger.")
    parts += ["", "## Verdict", "", *verdict(lift), ""]
    return "\n".join(parts)


def plot_study(runs: pd.DataFrame, settings: RareStudySettings, title: str, out_png) -> None:
    """Per level: bars of the mean over seeds per class and arm, min-max error bars,
    every seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [level for level in settings.levels if (runs["level"] == level).any()]
    names = [*settings.classes, ALL]
    width = 0.8 / len(settings.arms)
    fig, axes = plt.subplots(
        1, len(levels), figsize=(2.2 + 1.6 * len(names) * len(levels), 4.2), squeeze=False
    )
    for axis, level in zip(axes[0], levels):
        seeds = []
        for k, arm in enumerate(settings.arms):
            x0 = np.arange(len(names)) + (k - (len(settings.arms) - 1) / 2) * width
            means, lows, highs = [], [], []
            for x, name in zip(x0, names):
                values = _select(runs, level, name, arm)["value"].to_numpy(dtype=float)
                if len(values) == 0:
                    values = np.array([np.nan])
                means.append(np.nanmean(values))
                lows.append(np.nanmean(values) - np.nanmin(values))
                highs.append(np.nanmax(values) - np.nanmean(values))
                seeds.append(([x] * len(values), values))
            axis.bar(
                x0, means, width, yerr=[lows, highs], capsize=3, label=ARM_LABELS[arm], alpha=0.8
            )
        # the seeds' dots over the bars, not hidden behind them
        for xs, values in seeds:
            axis.plot(xs, values, "k.", markersize=4, zorder=3)
        axis.set_xticks(np.arange(len(names)), [*settings.classes, "balanced\naccuracy"])
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("test split: mean over seeds (bar),\nmin-max (whiskers), each seed (dot)")
        axis.set_title(f"{level} training images per cut class", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="best", framealpha=0.9)
    # the verdict, wrapped to the figure's width (one line of it was cut at both edges)
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 14)), fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def write_report(
    results: Sequence[Mapping[str, Any]], settings: RareStudySettings, out_dir: str | Path
) -> dict[str, pd.DataFrame]:
    """``REPORT_FILES`` in ``out_dir``; returns the tables (runs, summary, lift) and the
    verdict lines."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = runs_table(results)
    summary = summary_table(runs, settings)
    lift = lift_table(runs, settings)
    domain = results[0]["domain"] if results else ""
    targets = sorted({int(r["target"]) for r in results})
    target = f"{settings.target} ({', '.join(map(str, targets))})"
    runs.to_csv(out / "runs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    lift.to_csv(out / "lift.csv", index=False)
    (out / "summary.md").write_text(study_markdown(summary, lift, settings, domain, target))
    lines = verdict(lift)
    plot_study(runs, settings, lines[0], out / "chart.png")
    return {"runs": runs, "summary": summary, "lift": lift, "verdict": lines}
