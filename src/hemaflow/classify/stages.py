"""The classifier stage's steps, from files to files (called by the workflow scripts).

Training data: the balanced training set (real training images + synthetic ones) or,
without synthesis, the real training images of the pool. Validation (early stopping):
the pool's real ``val`` images. Evaluation: the pool's real ``test`` images only, never
a synthetic image and never an image a model or generator was trained on."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.classify.metrics import evaluation_report, write_confusion_matrix
from hemaflow.json_file import write_json
from hemaflow.progress import Progress
from hemaflow.train.state import keyed_state_dir

log = logging.getLogger(__name__)


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
    write_json(summary, out_summary, default=float)
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
    from hemaflow.classify.predict import load_classifier, predict_proba

    net, classes, _ = load_classifier(model_path)
    images, labels, rows = split_images(pool_images, pool_index, "test", list(classes))
    probabilities = predict_proba(net, images, tta=tta)
    predicted = probabilities.argmax(axis=1)
    summary, per_class, cm = evaluation_report(labels, predicted, list(classes), n_boot, seed)
    summary["test_images_per_domain"] = rows["domain"].value_counts().to_dict()
    write_json(summary, out_summary, default=float)
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


# ------------------------------------------------------------------------------ cross-lab

CROSS_LAB_SPLITS = ("val", "test")


def labelled_rows(
    images_path: str, index_path: str, splits: tuple[str, ...]
) -> tuple[np.ndarray, pd.DataFrame]:
    index = pd.read_parquet(index_path)
    labelled = index["canonical_class"].fillna("").astype(str).str.len() > 0
    rows = index[labelled & index["split"].isin(list(splits))]
    images = np.load(images_path, mmap_mode="r")
    return np.asarray(images)[rows["domain_index"].to_numpy()], rows.reset_index(drop=True)


def train_on_rows(
    train_images: np.ndarray,
    train_rows: pd.DataFrame,
    val_images: np.ndarray,
    val_rows: pd.DataFrame,
    options_section: Mapping[str, Any],
    state_root: str,
    state_key: str,
    out_model: str,
    out_losses: str | None,
) -> dict:
    """A classifier on labelled rows (classes: every class with training images; the
    validation rows of other classes are left out), resumable under ``state_key``."""
    from hemaflow.classify.train import ClassifierOptions, train_classifier

    classes = sorted(train_rows["canonical_class"].unique())
    lookup = {name: k for k, name in enumerate(classes)}
    val_keep = val_rows["canonical_class"].isin(classes).to_numpy()
    options = ClassifierOptions.from_config(options_section)
    state = keyed_state_dir(
        state_root, "classifier", state_key, options_section, train_rows["record_id"]
    )
    log.info("classifier classes: %s", classes)
    return train_classifier(
        train_images,
        train_rows["canonical_class"].map(lookup).to_numpy(dtype=np.int64),
        val_images[val_keep],
        val_rows.loc[val_keep, "canonical_class"].map(lookup).to_numpy(dtype=np.int64),
        classes,
        options,
        state,
        out_model,
        log_csv=out_losses,
    )


def train_domain_stage(
    images_path: str,
    index_path: str,
    domain: str,
    options_section: Mapping[str, Any],
    state_root: str,
    out_model: str,
    out_losses: str,
    out_summary: str,
) -> dict:
    """A classifier trained on one domain's real training images only (early stopping on
    its validation images): the model of the cross-lab test."""
    train_images, train_rows = labelled_rows(images_path, index_path, ("train",))
    val_images, val_rows = labelled_rows(images_path, index_path, ("val",))
    log.info("cross-lab classifier on %s: %d training images", domain, len(train_rows))
    summary = train_on_rows(
        train_images,
        train_rows,
        val_images,
        val_rows,
        options_section,
        state_root,
        f"domain-{domain}",
        out_model,
        out_losses,
    )
    summary["train_domain"] = domain
    write_json(summary, out_summary, default=float)
    return summary


def lab_evaluation(
    net: Any,
    model_classes: list[str],
    images: np.ndarray,
    rows: pd.DataFrame,
    n_boot: int,
    seed: int,
    tta: bool = False,
) -> dict:
    """A model on a lab's images over the classes both have: accuracy, balanced accuracy
    and macro-F1 with their intervals, per-class sensitivity (``sensitivity``, with its
    interval in ``sensitivity_low`` / ``sensitivity_high``) and the confusion matrix.
    ``tta``: predict with the mean over the 8 symmetries of the square."""
    from hemaflow.classify.metrics import restrict_to_shared_classes
    from hemaflow.classify.predict import predict_proba

    shared = sorted(set(rows["canonical_class"]) & set(model_classes))
    keep = rows["canonical_class"].isin(shared).to_numpy()
    if not keep.any():
        return {"n_images": 0, "classes": [], "sensitivity": {}, "confusion": []}
    probabilities = predict_proba(net, images[keep], tta=tta)
    y_true, y_pred, classes = restrict_to_shared_classes(
        rows.loc[keep, "canonical_class"].tolist(), probabilities, list(model_classes), shared
    )
    report = evaluation_report(y_true, y_pred, classes, n_boot, seed)
    return {"n_images": int(keep.sum()), "classes": list(classes), **report_fields(*report)}


# the summary metrics with their bootstrap interval, as report fields and table columns
SUMMARY_FIELDS = tuple(
    name + suffix
    for name in ("accuracy", "balanced_accuracy", "macro_f1")
    for suffix in ("", "_low", "_high")
)


def report_fields(summary: Mapping, per_class: pd.DataFrame, confusion: Any) -> dict[str, Any]:
    """``evaluation_report``'s results as JSON-ready fields: accuracy, balanced accuracy
    and macro-F1 with their intervals, per-class sensitivity with its interval
    (``sensitivity_low`` / ``sensitivity_high``) and the confusion matrix."""
    out: dict[str, Any] = {name: float(summary[name]) for name in SUMMARY_FIELDS}
    out["sensitivity"] = {k: float(v) for k, v in per_class["sensitivity"].items()}
    for bound in ("low", "high"):
        column = per_class[f"sensitivity_{bound}"]
        out[f"sensitivity_{bound}"] = {k: float(v) for k, v in column.items()}
    out["confusion"] = np.asarray(confusion).tolist()
    return out


def cross_lab_row(
    net: Any,
    model_classes: list[str],
    images: np.ndarray,
    rows: pd.DataFrame,
    n_boot: int,
    seed: int,
    tta: bool = False,
) -> dict:
    """Metrics of a model on another lab's images over the classes both have (a row of
    the cross-lab table)."""
    metrics = lab_evaluation(net, model_classes, images, rows, n_boot, seed, tta)
    out = {"n_images": metrics["n_images"], "shared_classes": " ".join(metrics["classes"])}
    out |= {name: metrics[name] for name in SUMMARY_FIELDS if name in metrics}
    return out


def cross_lab_stage(
    model_path: str,
    train_domain: str,
    test_sets: Mapping[str, Mapping[str, tuple[str, str]]],
    n_boot: int,
    seed: int,
    out_csv: str,
    out_png: str,
    tta: bool = False,
) -> pd.DataFrame:
    """``test_sets``: method -> domain -> (images.npy, index.parquet) of the (normalized)
    caches. Each domain is tested on its validation and test images (never seen by the
    classifier, nor by a CycleGAN, which trains on train splits only). The training
    domain's own held-out images are the reference row. ``tta``: predictions averaged
    over the 8 symmetries of the square."""
    from hemaflow.classify.predict import load_classifier

    net, classes, _ = load_classifier(model_path)
    rows = []
    n_sets = sum(len(domains) for domains in test_sets.values())
    progress = Progress("cross-lab evaluation", n_sets, "test sets", logger=log)
    for method in sorted(test_sets):
        for domain in sorted(test_sets[method]):
            images, index = labelled_rows(*test_sets[method][domain], CROSS_LAB_SPLITS)
            metrics = cross_lab_row(net, list(classes), images, index, n_boot, seed, tta)
            rows.append(
                {"train_domain": train_domain, "test_domain": domain, "method": method, **metrics}
            )
            log.info("%s -> %s (%s): %s", train_domain, domain, method, metrics)
            progress.advance(extra=f"{domain} ({method}) done")
    table = pd.DataFrame(rows)
    table.to_csv(out_csv, index=False)
    plot_cross_lab(table, out_png)
    return table


def plot_cross_lab(table: pd.DataFrame, path: str) -> None:
    """Balanced accuracy with its 95 % CI per test domain, one bar per normalization."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted(table["test_domain"].unique())
    methods = sorted(table["method"].unique())
    width = 0.8 / max(len(methods), 1)
    figure, axis = plt.subplots(figsize=(1.8 + 1.6 * len(domains), 3.2))
    for k, method in enumerate(methods):
        part = table[table["method"] == method].set_index("test_domain").reindex(domains)
        x = np.arange(len(domains)) + (k - (len(methods) - 1) / 2) * width
        value = part["balanced_accuracy"].to_numpy(dtype=float)
        low = value - part["balanced_accuracy_low"].to_numpy(dtype=float)
        high = part["balanced_accuracy_high"].to_numpy(dtype=float) - value
        axis.bar(x, value, width, yerr=[low, high], capsize=3, label=method)
    axis.set_xticks(np.arange(len(domains)), domains)
    axis.set_ylim(0, 1)
    axis.set_ylabel("balanced accuracy (95 % CI)")
    train = ", ".join(sorted(table["train_domain"].unique()))
    axis.set_title(f"trained on {train}, tested on each lab (shared classes)", fontsize=9)
    axis.legend(title="normalization", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
