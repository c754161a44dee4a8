"""Figures for the report."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_class_counts(counts: pd.DataFrame, path: str) -> None:
    """Grouped bars: kept images per canonical class, one bar per domain, train split
    shaded darker, log scale so that rare classes stay visible."""
    table = counts.pivot_table(
        index="canonical_class", columns="domain", values="total", fill_value=0
    )
    train = counts.pivot_table(
        index="canonical_class", columns="domain", values="train", fill_value=0
    )
    classes, domains = table.index.tolist(), table.columns.tolist()
    width = 0.8 / max(1, len(domains))
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(classes) + 2), 4.5))
    colours = plt.get_cmap("tab10")
    x = np.arange(len(classes))
    for k, domain in enumerate(domains):
        offset = (k - (len(domains) - 1) / 2) * width
        totals = table[domain].to_numpy()
        axis.bar(x + offset, totals, width, color=colours(k), alpha=0.45, label=f"{domain} (all)")
        axis.bar(
            x + offset, train[domain].to_numpy(), width, color=colours(k), label=f"{domain} (train)"
        )
        for xi, total in zip(x + offset, totals):
            if total:
                axis.text(
                    xi, total, str(int(total)), ha="center", va="bottom", fontsize=6, rotation=90
                )
    axis.set_yscale("log")
    axis.set_xticks(x, classes, rotation=30, ha="right")
    axis.set_ylabel("images kept (log scale)")
    axis.set_title("Images per canonical class and domain after dedup")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_training_curve(losses_csv: str, path: str, title: str) -> None:
    """Every logged loss column against the iteration (left), and the validation
    balanced accuracy where the log has one (right)."""
    log = pd.read_csv(losses_csv)
    skip = {"iteration", "lr", "seconds", "val_balanced_accuracy", "best_val_balanced_accuracy"}
    losses = [c for c in log.columns if c not in skip and log[c].notna().any()]
    has_val = "val_balanced_accuracy" in log and log["val_balanced_accuracy"].notna().any()
    figure, axes = plt.subplots(1, 2 if has_val else 1, figsize=(9 if has_val else 5, 3.4))
    axes = np.atleast_1d(axes)
    for column in losses:
        axes[0].plot(log["iteration"], log[column], label=column, linewidth=1)
    axes[0].set_xlabel("iteration")
    axes[0].legend(fontsize=7)
    axes[0].set_title("training log", fontsize=9)
    if has_val:
        val = log[log["val_balanced_accuracy"].notna()]
        axes[1].plot(val["iteration"], val["val_balanced_accuracy"], marker="o", markersize=3)
        axes[1].set_xlabel("iteration")
        axes[1].set_ylabel("validation balanced accuracy")
        axes[1].set_ylim(0, 1)
        axes[1].set_title("early stopping watches this", fontsize=9)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_quality_curve(table: pd.DataFrame, path: str, title: str) -> None:
    """What more training buys: KID (left; bars: its standard deviation over subsets,
    lower is better) and k-NN precision (middle; higher is better) of the generated images
    against real held-out ones, per class, against training minutes (a table of
    ``hemaflow.synth.curve.CURVE_COLUMNS``); and, when the table has any, the judge's
    acceptance (right: does the image show the class asked for?)."""
    panels = [("kid", "KID (lower is better)"), ("precision", "k-NN precision (higher is better)")]
    if "acceptance" in table and table["acceptance"].notna().any():
        panels.append(("acceptance", "judge's acceptance (class shown)"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    colours = plt.get_cmap("tab10")
    for k, (name, rows) in enumerate(table.groupby("canonical_class", sort=True)):
        rows = rows.sort_values("seconds")
        minutes = rows["seconds"].to_numpy(float) / 60
        style = {"color": colours(k % 10), "marker": "o", "markersize": 3, "linewidth": 1}
        axes[0].errorbar(minutes, rows["kid"], yerr=rows["kid_std"], capsize=2, label=name, **style)
        for axis, (column, _) in zip(axes[1:], panels[1:]):
            axis.plot(minutes, rows[column], label=name, **style)
    for axis, (_, label) in zip(axes, panels):
        axis.set_xlabel("training minutes")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    for axis in axes[1:]:
        axis.set_ylim(-0.02, 1.02)
    if len(table):
        axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        for axis in axes:
            axis.text(0.5, 0.5, "no snapshots", ha="center", va="center", transform=axis.transAxes)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
