"""The synthesis stage's measuring steps, from files to files (called by the workflow scripts).

Where :mod:`hemaflow.synth.stages` trains, generates and balances, this module measures:
each class's accepted synthetic images against its real validation images (the measures
its route's quality targets are checked on), the per-class metrics of the used synthetic
images against held-out images for the report, and the quality curves (KID and precision
against training time) of the C-WGAN-GP and the adapted few-shot GAN."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.json_file import write_json
from hemaflow.progress import Progress
from hemaflow.synth.evaluate import (
    HELD_OUT_SPLITS,
    VALIDATION_SPLITS,
    class_metrics,
    metrics_table,
    plot_samples,
)
from hemaflow.synth.pool import class_images
from hemaflow.synth.stages import read_pool, read_routes
from hemaflow.synth.targets import quality_measures

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------- validation, held-out


def _json_value(value: Any) -> Any:
    """NaN (not measured) as null, numpy scalars as Python numbers."""
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def validation_metrics_stage(
    class_name: str,
    generator: str,
    pool_images: str,
    pool_index: str,
    samples_images: str,
    candidates_path: str,
    max_images: int,
    out_json: str,
    seed: int = 0,
) -> dict:
    """The measures of one class's quality targets: its accepted synthetic images against
    its real VALIDATION images (val and held_out; the test split is never used for a
    decision), and the gate's acceptance of its candidates."""
    from hemaflow.metrics import InceptionFeatures, get_lpips

    images, pool = read_pool(pool_images, pool_index)
    synthetic = np.load(samples_images)
    candidates = pd.read_parquet(candidates_path)
    real = class_images(images, pool, class_name, VALIDATION_SPLITS)
    accepted = candidates["accepted"] if len(candidates) else pd.Series(dtype=bool)
    acceptance = float(accepted.mean()) if len(candidates) else None
    accuracy = (
        float((candidates["predicted_class"] == class_name).mean()) if len(candidates) else None
    )
    if len(real) == 0:
        log.warning(
            "%s has no real validation images (%s): its quality targets cannot be measured",
            class_name,
            " or ".join(VALIDATION_SPLITS),
        )
    metrics = class_metrics(
        synthetic,
        real,
        accuracy,
        inception=InceptionFeatures(),
        lpips_model=get_lpips(),
        max_images=max_images,
        fid_min_images=max_images + 1,  # FID is no target: not computed
        seed=seed,
    )
    measures = quality_measures(metrics, acceptance)
    result = {
        "canonical_class": class_name,
        "generator": generator,
        "splits": list(VALIDATION_SPLITS),
        "validation_images": int(len(real)),
        "synthetic_images": int(len(synthetic)),
        "candidates": int(len(candidates)),
        "measures": {k: _json_value(v) for k, v in measures.items()},
        "metrics": {k: _json_value(v) for k, v in metrics.items()},
    }
    write_json(result, out_json)
    log.info("%s (%s) on validation images: %s", class_name, generator, result["measures"])
    return result


def metrics_stage(
    pool_images: str,
    pool_index: str,
    routes_csv: str,
    samples: Mapping[str, tuple[str, str]],
    max_images: int,
    fid_min_images: int,
    out_csv: str,
    out_grid: str,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-class metrics of the used synthetic images against real held-out images.
    ``samples``: class -> (images.npy, candidates.parquet)."""
    from hemaflow.metrics import InceptionFeatures, get_lpips

    images, pool = read_pool(pool_images, pool_index)
    routes = read_routes(routes_csv).set_index("canonical_class")
    inception, lpips_model = InceptionFeatures(), get_lpips()
    rows, real_grid, fake_grid = [], {}, {}
    progress = Progress("synthesis metrics", len(samples), "classes", logger=log)
    for name in sorted(samples):
        images_path, candidates_path = samples[name]
        synthetic = np.load(images_path)
        candidates = pd.read_parquet(candidates_path)
        accuracy = (
            float((candidates["predicted_class"] == name).mean()) if len(candidates) else None
        )
        real = class_images(images, pool, name, HELD_OUT_SPLITS)
        metrics = class_metrics(
            synthetic,
            real,
            accuracy,
            inception=inception,
            lpips_model=lpips_model,
            max_images=max_images,
            fid_min_images=fid_min_images,
            seed=seed,
        )
        rows.append({"canonical_class": name, "route": routes.loc[name, "route"], **metrics})
        real_grid[name], fake_grid[name] = real[:8], synthetic[:8]
        progress.advance(extra=f"{name} done")
    table = metrics_table(rows)
    table.to_csv(out_csv, index=False)
    plot_samples(real_grid, fake_grid, out_grid, "real held-out | synthetic, per class")
    return table


# ----------------------------------------------------------------------- quality curves


def quality_curve_stage(
    pool_images: str,
    pool_index: str,
    generator: str,
    model_path: str,
    losses_csv: str,
    curve_section: Mapping[str, Any],
    seed: int,
    out_csv: str,
    out_plot: str,
    class_name: str | None = None,
    meta_losses_csv: str | None = None,
    judge_model: str | None = None,
    min_confidence: float = 0.5,
    thresholds_csv: str | None = None,
) -> pd.DataFrame:
    """KID and precision against training time of the C-WGAN-GP (``generator`` "cwgan":
    every class of the model) or of the few-shot GAN adapted to ``class_name``
    ("fewshot", its time counting the meta-training of ``meta_losses_csv``), on the
    pool's validation and held-out rows (``hemaflow.synth.curve``); table and plot.
    ``judge_model``: a real-data classifier (the gate's) whose acceptance at
    ``min_confidence`` of each point's images goes in the table's ``acceptance``;
    ``thresholds_csv``: the gate's fairness table (``real_acceptance.csv``), whose
    ``min_confidence`` per class (lowered with ``fair_confidence``) the judge then uses,
    so that the curve judges as the gate does."""
    from hemaflow.plots import plot_quality_curve
    from hemaflow.synth.curve import (
        CURVE_SPLITS,
        CurveSettings,
        classifier_judge,
        cwgan_curve,
        fewshot_curve,
    )

    images, pool = read_pool(pool_images, pool_index)
    settings = CurveSettings.from_config(curve_section, seed)
    per_class = None
    if thresholds_csv is not None:
        table = pd.read_csv(thresholds_csv)
        missing = {"canonical_class", "min_confidence"} - set(table.columns)
        if missing:
            raise ValueError(f"{thresholds_csv}: no column {', '.join(sorted(missing))}")
        per_class = dict(zip(table["canonical_class"], table["min_confidence"].astype(float)))
    judge = (
        classifier_judge(judge_model, min_confidence, per_class=per_class) if judge_model else None
    )
    if generator == "cwgan":
        names = sorted(pool["canonical_class"].unique())
        held_out = {name: class_images(images, pool, name, CURVE_SPLITS) for name in names}
        table = cwgan_curve(model_path, losses_csv, held_out, settings, judge=judge)
        title = "C-WGAN-GP"
    elif generator == "fewshot":
        if class_name is None:
            raise ValueError("quality_curve_stage: the few-shot curve needs class_name")
        held_out = class_images(images, pool, class_name, CURVE_SPLITS)
        table = fewshot_curve(
            model_path, losses_csv, class_name, held_out, settings, meta_losses_csv, judge=judge
        )
        title = f"few-shot GAN adapted to {class_name} (time includes meta-training)"
    else:
        raise ValueError(
            f"quality_curve_stage: generator must be cwgan or fewshot, got {generator!r}"
        )
    table.to_csv(out_csv, index=False)
    plot_quality_curve(
        table,
        out_plot,
        f"{title}: {settings.images_per_class} generated vs at most "
        f"{settings.real_per_class} real validation images per class",
    )
    for row in table.itertuples():
        log.info(
            "%s %s iteration %d (%.0f s): KID %.4f, precision %.3f, recall %.3f, acceptance %.3f",
            row.generator,
            row.canonical_class,
            row.iteration,
            row.seconds,
            row.kid,
            row.precision,
            row.recall,
            row.acceptance,
        )
    return table
