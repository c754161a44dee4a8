"""Leave-one-lab-out: the headline test of a classifier that must work in a lab it has
never seen.

For each labelled lab L, a classifier is trained on the OTHER labelled labs pooled (their
training images; early stopping on their validation images) and tested on ALL kept
images of L, over the classes L and the training labs share. No image of L, and no label
of L, reaches the classifier. The stain normalization that maps L's images onto the
target lab may have been fitted on L's images (Reinhard's statistics, a CycleGAN): that
uses no label, and the report says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hemaflow.classify.stages import (  # noqa: E402
    lab_evaluation,
    labelled_rows,
    report_fields,
    train_on_rows,
)
from hemaflow.json_file import write_json  # noqa: E402
from hemaflow.train.state import fingerprint

log = logging.getLogger(__name__)

ALL_SPLITS = ("train", "val", "test")
DomainFiles = Mapping[str, tuple[str, str]]  # domain -> (images.npy, index.parquet)


def pooled_split(
    files: DomainFiles, domains: Sequence[str], split: str
) -> tuple[np.ndarray, pd.DataFrame]:
    """One split of several domains' caches, stacked; a ``domain`` column says which
    domain each row came from."""
    parts = [labelled_rows(*files[domain], (split,)) for domain in domains]
    images = np.concatenate([images for images, _ in parts])
    rows = pd.concat(
        [rows.assign(domain=domain) for domain, (_, rows) in zip(domains, parts)],
        ignore_index=True,
    )
    return images, rows


def balance_labs(images: np.ndarray, rows: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Pooled training rows with every lab weighted alike within each class: in each class,
    a lab with fewer rows than the class's largest lab has its rows repeated (cycling
    through them in order) up to that count. A lab without the class gets
    none (nothing to repeat). With class-balanced batches, a class's draws then come from
    its labs about equally, so a small lab's stain and framing are not drowned by a large
    lab's (the per-domain batches of DomainBed's ERM, Gulrajani and Lopez-Paz 2021).
    The original rows come first, in their order."""
    domain = rows["domain"].astype(str).to_numpy()
    label = rows["canonical_class"].astype(str).to_numpy()
    labs = sorted(set(domain.tolist()))
    picks = [np.arange(len(rows))]
    for name in sorted(set(label.tolist())):
        members = {lab: np.flatnonzero((domain == lab) & (label == name)) for lab in labs}
        wanted = max(len(m) for m in members.values())
        for lab_rows in members.values():
            if 0 < len(lab_rows) < wanted:
                picks.append(np.resize(lab_rows, wanted - len(lab_rows)))
    chosen = np.concatenate(picks)
    return images[chosen], rows.iloc[chosen].reset_index(drop=True)


def train_pooled_classifier(
    files: DomainFiles,
    train_domains: Sequence[str],
    options_section: Mapping[str, Any],
    state_root: str,
    out_model: str,
    out_losses: str | None = None,
    balance: bool = False,
) -> dict:
    """A classifier on the training images of ``train_domains`` pooled, early stopping on
    their validation images; classes: every class with training images. ``balance``: the
    labs weighted alike within each class (:func:`balance_labs`)."""

    train_images, train_rows = pooled_split(files, train_domains, "train")
    if balance:
        original = len(train_rows)
        train_images, train_rows = balance_labs(train_images, train_rows)
        log.info(
            "labs balanced within each class: %d training rows, %d of them repeats",
            len(train_rows),
            len(train_rows) - original,
        )
    val_images, val_rows = pooled_split(files, train_domains, "val")
    log.info(
        "classifier on %s pooled: %d training images",
        ", ".join(train_domains),
        len(train_rows),
    )
    summary = train_on_rows(
        train_images,
        train_rows,
        val_images,
        val_rows,
        options_section,
        state_root,
        # the images differ by normalization method: the state of one method's run must
        # never be offered to another's
        "pooled-" + "+".join(sorted(train_domains)) + "-" + fingerprint(train_images)[:12],
        out_model,
        out_losses,
    )
    summary["train_domains"] = list(train_domains)
    return summary


def leave_one_lab_out(
    files: DomainFiles,
    held_out: str,
    labelled_domains: Sequence[str],
    options_section: Mapping[str, Any],
    state_root: str,
    out_model: str,
    out_json: str,
    n_boot: int = 1000,
    seed: int = 0,
    method: str = "",
    tta: bool = False,
    balance: bool = False,
) -> dict:
    """Train on every labelled domain but ``held_out``, test on all of ``held_out``
    (``tta``: predictions averaged over the 8 symmetries of the square; ``balance``: the
    training labs weighted alike within each class, :func:`balance_labs`)."""
    from hemaflow.classify.predict import load_classifier

    train_domains = [d for d in labelled_domains if d != held_out]
    if not train_domains:
        raise ValueError(f"leave-one-lab-out needs a second labelled lab besides {held_out!r}")
    summary = train_pooled_classifier(
        files, train_domains, options_section, state_root, out_model, balance=balance
    )
    net, classes, _ = load_classifier(out_model)
    images, rows = labelled_rows(*files[held_out], ALL_SPLITS)
    result = {
        "held_out": held_out,
        "method": method,
        "train_domains": train_domains,
        "iterations": summary.get("iterations"),
        "val_balanced_accuracy": summary.get("best_val_balanced_accuracy"),
        "tta": tta,
        "balance_labs": balance,
        **lab_evaluation(net, list(classes), images, rows, n_boot, seed, tta),
    }
    write_json(result, out_json, default=float)
    log.info(
        "leave %s out (%s): balanced accuracy %.3f on %d images",
        held_out,
        method,
        result.get("balanced_accuracy", float("nan")),
        result["n_images"],
    )
    return result


def stratified_folds(labels: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """A fold number per row: each class's rows shuffled (seeded) and dealt round-robin,
    so every fold holds about 1 / ``folds`` of every class. Each class's deal starts at the
    fold after the one where the previous class's stopped, so the classes' remainders go
    to different folds and the folds' sizes differ by at most one row."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), dtype=np.int64)
    start = 0
    for name in sorted(set(labels.tolist())):
        rows = rng.permutation(np.flatnonzero(labels == name))
        fold[rows] = (start + np.arange(len(rows))) % folds
        start = (start + len(rows)) % folds
    return fold


def in_lab_cross_validation(
    files: DomainFiles,
    domain: str,
    options_section: Mapping[str, Any],
    state_root: str,
    out_dir: str,
    folds: int = 5,
    val_fraction: float = 0.15,
    n_boot: int = 1000,
    seed: int = 0,
    tta: bool = False,
) -> dict:
    """What a lab's own labels support: a classifier trained on ``folds - 1`` folds of all
    the lab's kept labelled images (early stopping on ``val_fraction`` of them, drawn at
    random) predicts the remaining fold; the out-of-fold predictions of every image,
    pooled, give balanced accuracy, per-class sensitivity and the confusion matrix with
    their intervals. The yardstick for a cross-lab goal on that lab: a classifier that
    never saw one of its labels is not expected to beat one trained on them."""
    from hemaflow.classify.metrics import evaluation_report
    from hemaflow.classify.predict import load_classifier, predict_proba

    if folds < 2:
        raise ValueError(f"in-lab cross-validation needs at least 2 folds, got {folds}")
    images, rows = labelled_rows(*files[domain], ALL_SPLITS)
    labels = rows["canonical_class"].to_numpy()
    classes = sorted(set(labels.tolist()))
    fold = stratified_folds(labels, folds, seed)
    rng = np.random.default_rng(seed + 1)
    predicted = np.full(len(rows), -1, dtype=np.int64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(folds):
        train = np.flatnonzero(fold != k)
        val_mask = rng.random(len(train)) < val_fraction
        if not val_mask.any():  # a tiny lab: early stopping still needs one image
            val_mask[rng.integers(len(train))] = True
        fit, val = train[~val_mask], train[val_mask]
        train_on_rows(
            images[fit],
            rows.iloc[fit].reset_index(drop=True),
            images[val],
            rows.iloc[val].reset_index(drop=True),
            options_section,
            state_root,
            f"in-lab-{domain}-fold{k}of{folds}-seed{seed}",
            str(out / f"model-fold{k}.pt"),
            None,
        )
        net, model_classes, _ = load_classifier(out / f"model-fold{k}.pt")
        test = np.flatnonzero(fold == k)
        best = predict_proba(net, images[test], tta=tta).argmax(axis=1)
        predicted[test] = [classes.index(model_classes[j]) for j in best]
        log.info("in-lab %s: fold %d of %d done", domain, k + 1, folds)
    y_true = np.array([classes.index(name) for name in labels])
    report = evaluation_report(y_true, predicted, classes, n_boot, seed)
    result: dict[str, Any] = {
        "domain": domain,
        "folds": folds,
        "tta": tta,
        "n_images": len(rows),
        "classes": classes,
        **report_fields(*report),
        "fold": fold.tolist(),
        "predicted": [classes[j] for j in predicted],
    }
    write_json(result, str(out / "result.json"), default=float)
    return result


def lolo_table(results: Sequence[Mapping[str, Any]], out_csv: str, out_png: str) -> pd.DataFrame:
    """One row per (method, held-out lab): balanced accuracy with its CI and per-class
    sensitivity; a grouped bar chart; and one confusion matrix per row in the chart."""
    rows = []
    for result in results:
        row = {
            "method": result["method"],
            "held_out": result["held_out"],
            "train_domains": " ".join(result["train_domains"]),
            "n_images": result["n_images"],
        }
        for name in ("balanced_accuracy", "accuracy", "macro_f1"):
            for suffix in ("", "_low", "_high"):
                row[name + suffix] = result.get(name + suffix, float("nan"))
        for cls, value in result.get("sensitivity", {}).items():
            row[f"sensitivity_{cls}"] = value
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["held_out", "method"]).reset_index(drop=True)
    table.to_csv(out_csv, index=False)
    _plot(table, list(results), out_png)
    return table


def _plot(table: pd.DataFrame, results: list[Mapping[str, Any]], path: str) -> None:
    methods = sorted(table["method"].unique())
    labs = sorted(table["held_out"].unique())
    n = len(results)
    fig = plt.figure(figsize=(max(6.0, 2.6 * n), 7.0))
    bars = fig.add_subplot(2, 1, 1)
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        part = table[table["method"] == method].set_index("held_out").reindex(labs)
        x = np.arange(len(labs)) + k * width
        value = part["balanced_accuracy"].to_numpy(dtype=float)
        low = value - part["balanced_accuracy_low"].to_numpy(dtype=float)
        high = part["balanced_accuracy_high"].to_numpy(dtype=float) - value
        bars.bar(x, value, width, yerr=[low, high], capsize=3, label=method)
    bars.set_xticks(np.arange(len(labs)) + 0.4 - width / 2)
    bars.set_xticklabels([f"{lab} held out" for lab in labs])
    bars.set_ylim(0, 1)
    bars.set_ylabel("balanced accuracy (95 % CI)")
    bars.legend(fontsize=8)
    ordered = sorted(results, key=lambda r: (r["held_out"], r["method"]))
    for k, result in enumerate(ordered):
        ax = fig.add_subplot(2, n, n + k + 1)
        matrix = np.asarray(result.get("confusion") or [[0]], dtype=float)
        ax.imshow(matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1), vmin=0, vmax=1)
        names = [c[:4] for c in result.get("classes", [])]
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=6)
        ax.set_title(f"{result['held_out']} / {result['method']}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
