"""How well a domain pair is normalized: FID/KID before and after, cycle SSIM, grids.

Everything is measured on the test split: the CycleGAN never saw it (it trains on the
train split), and the per-pair fallback decision (``hemaflow.normalize.decide``) never
read it (it uses the validation split), so the numbers reported are not those a choice
was made on. KID is the number to trust for the small domains (tens to hundreds of
images); FID is biased upwards on small sets and is reported next to it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

REPORTED_SPLITS = ("test",)


def sample_split(
    images_path: str, index_path: str, splits: tuple[str, ...], max_images: int, seed: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """The cached images of a domain in ``splits`` (at most ``max_images``, a seeded
    sample) and their index rows; no other row of the cache is read."""
    index = pd.read_parquet(index_path)
    rows = index.loc[index["split"].isin(splits)].sort_values("domain_index")
    if len(rows) > max_images:
        pick = np.random.default_rng(seed).choice(len(rows), max_images, replace=False)
        rows = rows.iloc[np.sort(pick)]
    images = np.asarray(np.load(images_path, mmap_mode="r")[rows["domain_index"].to_numpy()])
    return images, rows.reset_index(drop=True)


def evaluate_pair(
    source_images: str,
    source_index: str,
    target_images: str,
    target_index: str,
    model_path: str | None,
    reinhard_stats: str,
    max_images: int = 500,
    seed: int = 0,
) -> tuple[dict, dict[str, np.ndarray], pd.DataFrame]:
    """Metrics of one source -> target pair on the test split; also returns the image
    sets for the grid."""
    from hemaflow.metrics.fid import fid_from_features, kid_from_features
    from hemaflow.metrics.image import psnr, ssim
    from hemaflow.metrics.inception import InceptionFeatures
    from hemaflow.normalize.reinhard import ReinhardNormalizer

    source, source_rows = sample_split(
        source_images, source_index, REPORTED_SPLITS, max_images, seed
    )
    target, _ = sample_split(target_images, target_index, REPORTED_SPLITS, max_images, seed + 1)
    with open(reinhard_stats) as handle:
        reinhard = ReinhardNormalizer.from_dict(json.load(handle)).transform(source)
    sets = {"source": source, "reinhard": reinhard}
    if model_path:
        from hemaflow.normalize.cyclegan import load_cyclegan, translate

        g_ab, g_ba, _ = load_cyclegan(model_path)
        sets["cyclegan"] = translate(g_ab, source)
        sets["reconstructed"] = translate(g_ba, sets["cyclegan"])
    inception = InceptionFeatures()
    target_features = inception.features(target)
    metrics: dict = {
        "split": "+".join(REPORTED_SPLITS),
        "source_images": len(source),
        "target_images": len(target),
    }
    for name, label in (("source", "raw"), ("reinhard", "reinhard"), ("cyclegan", "cyclegan")):
        if name not in sets:
            continue
        features = inception.features(sets[name])
        metrics[f"fid_{label}"] = fid_from_features(features, target_features)
        kid, kid_std = kid_from_features(features, target_features)
        metrics[f"kid_{label}"], metrics[f"kid_std_{label}"] = kid, kid_std
    if "cyclegan" in sets:
        metrics["ssim_reconstruction"] = float(np.mean(ssim(source, sets["reconstructed"])))
        metrics["psnr_reconstruction"] = float(np.mean(psnr(source, sets["reconstructed"])))
        metrics["ssim_translation"] = float(np.mean(ssim(source, sets["cyclegan"])))
    metrics["ssim_reinhard"] = float(np.mean(ssim(source, reinhard)))
    return metrics, sets, source_rows


def plot_grid(
    sets: dict[str, np.ndarray], rows: pd.DataFrame, path: str, title: str, per_class: int = 3
) -> None:
    """Per class, a few test source images: real | Reinhard | CycleGAN | reconstructed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in ("source", "reinhard", "cyclegan", "reconstructed") if c in sets]
    classes = rows["canonical_class"].fillna("unlabelled").astype(str)
    chosen = []
    for cls in sorted(classes.unique()):
        chosen += [(cls, k) for k in np.flatnonzero(classes.to_numpy() == cls)[:per_class]]
    figure, axes = plt.subplots(
        len(chosen),
        len(columns),
        figsize=(1.6 * len(columns), 1.6 * len(chosen) + 0.6),
        squeeze=False,
    )
    for r, (cls, k) in enumerate(chosen):
        for c, column in enumerate(columns):
            axis = axes[r, c]
            axis.imshow(sets[column][k])
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(column, fontsize=8)
            if c == 0:
                axis.set_ylabel(cls, fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def evaluate_pair_files(
    pair: str,
    source_images: str,
    source_index: str,
    target_images: str,
    target_index: str,
    model_path: str | None,
    reinhard_stats: str,
    out_json: str,
    out_grid: str,
    max_images: int = 500,
) -> dict:
    metrics, sets, rows = evaluate_pair(
        source_images,
        source_index,
        target_images,
        target_index,
        model_path,
        reinhard_stats,
        max_images,
    )
    metrics["pair"] = pair
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    with open(out_json, "w") as handle:
        json.dump(metrics, handle, indent=2)
    plot_grid(sets, rows, out_grid, f"{pair}: test images")
    log.info("%s: %s", pair, metrics)
    return metrics


def collect_metrics(
    paths: list[str], out_csv: str, decision_paths: list[str] | None = None
) -> pd.DataFrame:
    """One row per pair: its test-split metrics, ``cyclegan_worse_than_reinhard`` (the
    CycleGAN's test KID above Reinhard's) and, from the decision files, the method its
    images get (``decision``) with the validation KIDs it was decided on."""
    rows = []
    for path in paths:
        with open(path) as handle:
            rows.append(json.load(handle))
    table = pd.DataFrame(rows)
    if not table.empty and "kid_cyclegan" in table:
        worse = table["kid_cyclegan"] > table["kid_reinhard"]
        # a pair without a CycleGAN (an unlabelled source lab) has nothing to compare
        table["cyclegan_worse_than_reinhard"] = worse.where(table["kid_cyclegan"].notna())
    decisions = []
    for path in decision_paths or []:
        with open(path) as handle:
            decision = json.load(handle)
        decisions.append(
            {
                "pair": decision["pair"],
                "decision": decision["method"],
                "decision_fallback": decision["fallback"],
                "decision_kid_cyclegan_val": decision["kid_cyclegan"],
                "decision_kid_fallback_val": decision["kid_fallback"],
                "decision_val_images": decision["source_images"],
            }
        )
    if decisions and not table.empty:
        table = table.merge(pd.DataFrame(decisions), on="pair", how="left")
    if not table.empty:
        table = table[["pair"] + [c for c in table.columns if c != "pair"]]
    table.to_csv(out_csv, index=False)
    return table
