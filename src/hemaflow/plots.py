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
