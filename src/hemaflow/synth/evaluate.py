"""Per-class quality of synthetic images, against real images the generators never saw.

For each class: KID (and FID where both sets have at least ``fid_min_images``) of the
synthetic images against real held-out images of the class (val, test and the training
images that ``subsample`` removed); LPIPS diversity of the synthetic images next to the
real held-out images' own; k-NN precision and recall; the real-data classifier's accuracy
on the synthetic images; and a grid of real | synthetic samples."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.metrics import compute_metrics

log = logging.getLogger(__name__)

#: real images the synthesis metrics of the report are measured against
HELD_OUT_SPLITS = ("val", "test", "held_out")
#: real images that DECISIONS are measured on (the gate judge's fairness, whether a class
#: is padded with synthetic images): validation images and the training images that
#: ``subsample`` held out, never the test split, which stays for the final evaluation
VALIDATION_SPLITS = ("val", "held_out")


def seeded_subset(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` of ``images`` (a seeded choice, in their order); all if no more."""
    if len(images) <= n:
        return np.asarray(images)
    rows = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    return np.asarray(images)[rows]


PR_K = 3  # neighbours of the precision/recall manifolds (Kynkäänniemi et al.'s default)


def class_metrics(
    synthetic: np.ndarray,
    real_held_out: np.ndarray,
    classifier_accuracy: float | None,
    *,
    inception: Any = None,
    lpips_model: Any = None,
    max_images: int = 500,
    fid_min_images: int = 200,
    kid_subset_size: int = 100,
    lpips_pairs: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of one class's synthetic images against its real held-out images."""
    fake = seeded_subset(synthetic, max_images, seed)
    real = seeded_subset(real_held_out, max_images, seed + 1)
    result: dict[str, float] = {
        "synthetic_images": float(len(fake)),
        "real_images": float(len(real)),
        "classifier_accuracy": float("nan") if classifier_accuracy is None else classifier_accuracy,
    }
    if len(fake) < 2 or len(real) < 2:
        log.warning("too few images for metrics (%d synthetic, %d real)", len(fake), len(real))
        return result
    names = ["kid", "lpips_diversity"]
    if min(len(fake), len(real)) > PR_K:
        names[1:1] = ["precision", "recall"]
    else:
        # a k-NN manifold needs more than k points per set (seen: a class with 2 gated images)
        log.warning(
            "precision/recall left out: they need more than %d images per set "
            "(%d synthetic, %d real)",
            PR_K,
            len(fake),
            len(real),
        )
    if min(len(fake), len(real)) >= fid_min_images:
        names.insert(0, "fid")
    result.update(
        compute_metrics(
            names,
            real,
            fake,
            inception=inception,
            lpips_model=lpips_model,
            kid_subset_size=min(kid_subset_size, len(fake), len(real)),
            pr_k=PR_K,
            lpips_pairs=lpips_pairs,
            seed=seed,
        )
    )
    result.update(
        {
            "real_lpips_diversity": compute_metrics(
                "lpips_diversity",
                None,
                real,
                lpips_model=lpips_model,
                lpips_pairs=lpips_pairs,
                seed=seed,
            )["lpips_diversity"]
        }
    )
    for key in ("fid", "precision", "recall"):
        result.setdefault(key, float("nan"))
    return result


def plot_samples(
    real: Mapping[str, np.ndarray],
    synthetic: Mapping[str, np.ndarray],
    path: str,
    title: str,
    per_row: int = 8,
) -> None:
    """Per class two rows: real held-out images, then synthetic ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted(synthetic)
    rows = max(1, 2 * len(classes))
    figure, axes = plt.subplots(
        rows, per_row, figsize=(1.1 * per_row, 1.15 * rows + 0.5), squeeze=False
    )
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
        axis.axis("off")
    for k, name in enumerate(classes):
        for offset, (kind, images) in enumerate(
            (
                ("real", real.get(name, np.zeros((0, 1, 1, 3), np.uint8))),
                ("synthetic", synthetic[name]),
            )
        ):
            row = 2 * k + offset
            for c, image in enumerate(np.asarray(images)[:per_row]):
                axes[row, c].imshow(image)
            axes[row, 0].axis("on")
            axes[row, 0].set_ylabel(f"{name}\n{kind}", fontsize=6)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def metrics_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    columns = [
        "canonical_class",
        "route",
        "synthetic_images",
        "real_images",
        "fid",
        "kid",
        "kid_std",
        "precision",
        "recall",
        "lpips_diversity",
        "real_lpips_diversity",
        "classifier_accuracy",
    ]
    table = pd.DataFrame(list(rows))
    for column in columns:
        if column not in table:
            table[column] = np.nan
    return table[columns]
