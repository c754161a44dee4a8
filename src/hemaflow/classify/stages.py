"""The classifier stage's steps, from files to files (called by the workflow scripts).

Training data: the balanced training set (real training images + synthetic ones) or,
without synthesis, the real training images of the pool. Validation (early stopping):
the pool's real ``val`` images. Evaluation: the pool's real ``test`` images only, never
a synthetic image and never an image a model or generator was trained on."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.classify.metrics import evaluation_report, write_confusion_matrix
from hemaflow.train.loop import keyed_state_dir

log = logging.getLogger(__name__)


def _write_json(data: Any, path: str) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, default=float)


def training_set(
    pool_images: str, pool_index: str, balanced_images: str | None, balanced_manifest: str | None
) -> tuple[np.ndarray, pd.DataFrame]:
    """(images, rows with record_id, canonical_class, origin) to train on."""
    if balanced_images and balanced_manifest:
        return np.load(balanced_images, mmap_mode="r"), pd.read_parquet(balanced_manifest)
    images = np.load(pool_images, mmap_mode="r")
    pool = pd.read_parquet(pool_index)
    train = pool[pool["split"] == "train"]
    rows = train[["record_id", "canonical_class"]].assign(origin="real")
    return np.asarray(images)[train["pool_index"].to_numpy()], rows.reset_index(drop=True)


def split_images(
    pool_images: str, pool_index: str, split: str, classes: list[str]
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Real images of one split of the pool, their labels (indexes into ``classes``) and
    rows; rows of classes the model does not know are left out (and logged)."""
    images = np.load(pool_images, mmap_mode="r")
    pool = pd.read_parquet(pool_index)
    rows = pool[pool["split"] == split]
    unknown = sorted(set(rows["canonical_class"]) - set(classes))
    if unknown:
        log.warning("%s split: classes without training images left out: %s", split, unknown)
        rows = rows[rows["canonical_class"].isin(classes)]
    lookup = {name: k for k, name in enumerate(classes)}
    labels = rows["canonical_class"].map(lookup).to_numpy(dtype=np.int64)
    return np.asarray(images)[rows["pool_index"].to_numpy()], labels, rows.reset_index(drop=True)


def train_stage(
    pool_images: str,
    pool_index: str,
    balanced_images: str | None,
    balanced_manifest: str | None,
    options_section: Mapping[str, Any],
    state_root: str,
    out_model: str,
    out_losses: str,
    out_summary: str,
) -> dict:
    from hemaflow.classify.train import ClassifierOptions, train_classifier

    images, rows = training_set(pool_images, pool_index, balanced_images, balanced_manifest)
    classes = sorted(rows["canonical_class"].unique())
    lookup = {name: k for k, name in enumerate(classes)}
    labels = rows["canonical_class"].map(lookup).to_numpy(dtype=np.int64)
    val_images, val_labels, _ = split_images(pool_images, pool_index, "val", classes)
    options = ClassifierOptions.from_config(options_section)
    state = keyed_state_dir(
        state_root, "classifier", options.architecture, options_section, rows["record_id"]
    )
    origin = rows["origin"].value_counts().to_dict()
    log.info(
        "classifier %s on %d images (%s), %d validation images, classes %s",
        options.architecture,
        len(rows),
        origin,
        len(val_images),
        classes,
    )
    summary = train_classifier(
        np.asarray(images),
        labels,
        val_images,
        val_labels,
        classes,
        options,
        state,
        out_model,
        log_csv=out_losses,
    )
    summary["training_images"] = {str(k): int(v) for k, v in origin.items()}
    _write_json(summary, out_summary)
    return summary


def evaluate_stage(
    model_path: str,
    pool_images: str,
    pool_index: str,
    n_boot: int,
    seed: int,
    tta: bool,
    out_summary: str,
    out_per_class: str,
    out_confusion_csv: str,
    out_confusion_png: str,
    out_predictions: str,
) -> dict:
    """Metrics with bootstrap CIs on the real test split."""
    from hemaflow.classify.train import load_classifier, predict_proba

    net, classes, _ = load_classifier(model_path)
    images, labels, rows = split_images(pool_images, pool_index, "test", list(classes))
    probabilities = predict_proba(net, images, tta=tta)
    predicted = probabilities.argmax(axis=1)
    summary, per_class, cm = evaluation_report(labels, predicted, list(classes), n_boot, seed)
    summary["test_images_per_domain"] = rows["domain"].value_counts().to_dict()
    _write_json(summary, out_summary)
    per_class.to_csv(out_per_class)
    write_confusion_matrix(
        cm,
        list(classes),
        out_confusion_csv,
        out_confusion_png,
        f"test split, {len(labels)} real images: balanced accuracy "
        f"{summary['balanced_accuracy']:.3f}",
    )
    predictions = rows[["record_id", "domain", "canonical_class"]].assign(
        predicted_class=np.asarray(classes, dtype=object)[predicted],
        confidence=probabilities.max(axis=1),
    )
    predictions.to_parquet(out_predictions, index=False)
    log.info(
        "test: accuracy %.4f, balanced accuracy %.4f [%.4f, %.4f], macro-F1 %.4f",
        summary["accuracy"],
        summary["balanced_accuracy"],
        summary["balanced_accuracy_low"],
        summary["balanced_accuracy_high"],
        summary["macro_f1"],
    )
    return summary
