"""Evaluation metrics of a white-blood-cell classifier: confusion matrix, per-class and macro
metrics, percentile-bootstrap confidence intervals, and the confusion-matrix figure.

Every metric here is a function of the confusion matrix alone, so one vectorised function
(:func:`_metrics_from_counts`) computes them for a stack of matrices; the point estimates
and all bootstrap resamples go through the same code.

Conventions (those of scikit-learn, so that results can be checked against it):

- Per class: sensitivity (recall) = TP / (TP + FN), specificity = TN / (TN + FP),
  precision = TP / (TP + FP), F1 = 2 TP / (2 TP + FP + FN). A 0/0 is NaN: sensitivity of a
  class absent from ``y_true``, precision of a class never predicted, specificity when every
  image belongs to the class, F1 of a class neither present nor predicted.
- Balanced accuracy: mean sensitivity over the classes present in ``y_true``
  (``sklearn.metrics.balanced_accuracy_score``).
- Macro F1, sensitivity, specificity and precision: mean over the classes that occur in
  ``y_true`` or ``y_pred`` (scikit-learn's default ``labels``), a NaN counted as 0
  (``zero_division=0``). A class that occurs in neither is left out rather than counted
  as 0; a class that is never predicted although present counts with precision 0, which
  is the penalty a model that ignores a class deserves.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where a table is built: training needs no pandas
    import pandas as pd

log = logging.getLogger(__name__)

SUMMARY_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "macro_sensitivity",
    "macro_specificity",
    "macro_precision",
)
PER_CLASS_METRICS = ("sensitivity", "specificity", "precision", "f1")
PER_CLASS_CI_METRICS = ("sensitivity", "specificity", "precision")


# --- validation ---------------------------------------------------------------------------


def _check_n_classes(n_classes: Any) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer):
        raise TypeError(f"n_classes must be an int, got {type(n_classes).__name__}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    return int(n_classes)


def _check_labels(labels: Any, name: str, n_classes: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    outside = array[(array < 0) | (array >= n_classes)]
    if outside.size:
        shown = ", ".join(str(v) for v in np.unique(outside)[:5])
        raise ValueError(
            f"{name} holds labels outside [0, {n_classes}) for n_classes={n_classes}: {shown}"
        )
    return array.astype(np.int64, copy=False)


def _check_pair(y_true: Any, y_pred: Any, n_classes: Any) -> tuple[np.ndarray, np.ndarray, int]:
    n_classes = _check_n_classes(n_classes)
    true = _check_labels(y_true, "y_true", n_classes)
    pred = _check_labels(y_pred, "y_pred", n_classes)
    if len(true) != len(pred):
        raise ValueError(
            f"y_true and y_pred differ in length: {len(true)} and {len(pred)} predictions"
        )
    return true, pred, n_classes


def _check_confusion_matrix(cm: Any) -> np.ndarray:
    array = np.asarray(cm)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ValueError(f"cm must be a non-empty square 2-D matrix, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"cm must hold integer counts, got dtype {array.dtype}")
    if (array < 0).any():
        raise ValueError("cm holds negative counts")
    if array.sum() == 0:
        raise ValueError("cm holds no predictions (all counts are 0)")
    return array.astype(np.int64, copy=False)


def _check_class_names(class_names: Sequence[str], n_classes: int | None = None) -> list[str]:
    names = [str(name) for name in class_names]
    if not names:
        raise ValueError("class_names is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names holds duplicates: {names}")
    if n_classes is not None and len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} names for a {n_classes}-class matrix")
    return names


# --- metrics from counts ------------------------------------------------------------------


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs: rows are true classes, columns predicted ones."""
    true, pred, n_classes = _check_pair(y_true, y_pred, n_classes)
    counts = np.bincount(true * n_classes + pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def _metrics_from_counts(cm: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics of a stack of confusion matrices ``(..., K, K)``: the summary metrics with
    shape ``(...)`` and the per-class ones with shape ``(..., K)`` (conventions in the module
    docstring)."""
    counts = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    support = counts.sum(axis=-1)
    predicted = counts.sum(axis=-2)
    total = counts.sum(axis=(-2, -1))
    negatives = total[..., None] - support
    tn = negatives - (predicted - tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = {
            "sensitivity": tp / support,
            "specificity": tn / negatives,
            "precision": tp / predicted,
            "f1": 2 * tp / (support + predicted),
        }
        present = support > 0
        occurring = (support + predicted) > 0
        n_occurring = occurring.sum(axis=-1)

        def macro(values: np.ndarray) -> np.ndarray:
            return np.where(occurring, np.nan_to_num(values, nan=0.0), 0.0).sum(-1) / n_occurring

        summary = {
            "accuracy": tp.sum(axis=-1) / total,
            "balanced_accuracy": np.where(present, per_class["sensitivity"], 0.0).sum(-1)
            / present.sum(axis=-1),
            "macro_f1": macro(per_class["f1"]),
            "macro_sensitivity": macro(per_class["sensitivity"]),
            "macro_specificity": macro(per_class["specificity"]),
            "macro_precision": macro(per_class["precision"]),
        }
    return {**summary, **per_class}


def per_class_metrics(cm: Any) -> pd.DataFrame:
    """One row per class (index ``class_index``): ``support`` (true images), ``predicted``
    (images predicted as the class), sensitivity, specificity, precision and F1.

    Precision of a class that is never predicted is 0/0 and reported as NaN (not 0, so that
    "never predicted" stays visible in the table); likewise sensitivity of a class absent from
    the test set. Macro averages count these NaNs as 0 (see :func:`summary_metrics`)."""
    import pandas as pd

    counts = _check_confusion_matrix(cm)
    metrics = _metrics_from_counts(counts)
    table = pd.DataFrame(
        {
            "support": counts.sum(axis=1),
            "predicted": counts.sum(axis=0),
            **{name: metrics[name] for name in PER_CLASS_METRICS},
        }
    )
    table.index.name = "class_index"
    return table


def summary_metrics(y_true: Any, y_pred: Any, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro F1/sensitivity/specificity/precision.

    Balanced accuracy averages sensitivity over the classes present in ``y_true``; the macro
    metrics average over the classes in ``y_true`` or ``y_pred`` with an undefined (0/0) value
    counted as 0, as scikit-learn with ``zero_division=0``. So ``macro_sensitivity`` differs
    from ``balanced_accuracy`` exactly when some class is predicted but absent from
    ``y_true``."""
    metrics = _metrics_from_counts(confusion_matrix(y_true, y_pred, n_classes))
    return {name: float(metrics[name]) for name in SUMMARY_METRICS}


# --- bootstrap ----------------------------------------------------------------------------


def _resampled_confusion_matrices(
    cm: np.ndarray, n_boot: int, rng: np.random.Generator, stratified: bool
) -> np.ndarray:
    """``n_boot`` confusion matrices of test sets resampled with replacement.

    Drawing ``n`` images with replacement and counting them per (true, predicted) cell gives
    a multinomial draw with the cell proportions as probabilities, so the resamples are drawn
    as multinomials of the confusion matrix: the same distribution as resampling image
    indices, in O(n_boot K^2) instead of O(n_boot n). Stratified: each true class (row) is
    resampled on its own, keeping its support."""
    k = cm.shape[0]
    if not stratified:
        total = int(cm.sum())
        draws = rng.multinomial(total, cm.ravel() / total, size=n_boot)
        return draws.reshape(n_boot, k, k)
    support = cm.sum(axis=1)
    # a class absent from y_true gets n=0 and any valid probabilities: its row stays 0
    probabilities = np.where(support[:, None] > 0, cm / np.maximum(support, 1)[:, None], 1.0 / k)
    return rng.multinomial(support, probabilities, size=(n_boot, k))


def _percentile_bounds(samples: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis, ignoring resamples where the metric is
    undefined (NaN); NaN where it is undefined in every resample."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        low, high = np.nanpercentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return low, high


def _bootstrap_bounds(
    y_true: Any,
    y_pred: Any,
    n_classes: int,
    n_boot: int,
    alpha: float,
    seed: int,
    stratified: bool,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    cm = confusion_matrix(y_true, y_pred, n_classes)
    rng = np.random.default_rng(seed)
    samples = _metrics_from_counts(_resampled_confusion_matrices(cm, int(n_boot), rng, stratified))
    names = SUMMARY_METRICS + PER_CLASS_CI_METRICS
    return {name: _percentile_bounds(samples[name], alpha) for name in names}


def bootstrap_ci(
    y_true: Any,
    y_pred: Any,
    n_classes: int,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap ``1 - alpha`` intervals: ``name -> (low, high)``.

    Names are the summary metrics (``accuracy``, ``balanced_accuracy``, ``macro_f1``, ...)
    and ``sensitivity/k``, ``specificity/k``, ``precision/k`` for class index ``k``. The test
    images are resampled with replacement ``n_boot`` times; ``stratified`` resamples within
    each true class, so every class keeps its support (the test set was drawn per class, and
    a rare class would otherwise vanish from some resamples). Resamples in which a per-class
    metric is undefined (a class never predicted, for precision) are left out of its
    interval; it is NaN if undefined in all. Deterministic for a given ``seed``."""
    bounds = _bootstrap_bounds(y_true, y_pred, n_classes, n_boot, alpha, seed, stratified)
    intervals: dict[str, tuple[float, float]] = {}
    for name in SUMMARY_METRICS:
        low, high = bounds[name]
        intervals[name] = (float(low), float(high))
    for name in PER_CLASS_CI_METRICS:
        low, high = bounds[name]
        for k in range(len(low)):
            intervals[f"{name}/{k}"] = (float(low[k]), float(high[k]))
    return intervals


# --- report -------------------------------------------------------------------------------


def evaluation_report(
    y_true: Any,
    y_pred: Any,
    class_names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    stratified: bool = True,
) -> tuple[dict[str, float], pd.DataFrame, np.ndarray]:
    """Point estimates with bootstrap intervals, per class and overall, and the confusion
    matrix.

    ``summary`` holds ``n_images``, ``n_boot``, ``alpha`` and, per summary metric ``m``,
    ``m``, ``m_low``, ``m_high``. ``per_class`` is indexed by ``canonical_class`` and holds
    ``support``, ``predicted``, ``sensitivity``/``specificity``/``precision`` each with
    ``_low``/``_high`` columns, and ``f1``. ``cm`` has rows true, columns predicted, in the
    order of ``class_names``."""
    import pandas as pd

    names = _check_class_names(class_names)
    cm = confusion_matrix(y_true, y_pred, len(names))
    point = _metrics_from_counts(cm)
    bounds = _bootstrap_bounds(y_true, y_pred, len(names), n_boot, alpha, seed, stratified)

    summary: dict[str, float] = {
        "n_images": float(cm.sum()),
        "n_boot": float(n_boot),
        "alpha": float(alpha),
    }
    for name in SUMMARY_METRICS:
        low, high = bounds[name]
        summary.update(
            {name: float(point[name]), f"{name}_low": float(low), f"{name}_high": float(high)}
        )

    per_class = per_class_metrics(cm)
    per_class.index = pd.Index(names, name="canonical_class")
    for name in PER_CLASS_CI_METRICS:
        position = per_class.columns.get_loc(name) + 1
        low, high = bounds[name]
        per_class.insert(position, f"{name}_low", low)
        per_class.insert(position + 1, f"{name}_high", high)
    return summary, per_class, cm


# --- confusion-matrix files ---------------------------------------------------------------


def write_confusion_matrix(
    cm: Any,
    class_names: Sequence[str],
    csv_path: str | Path,
    png_path: str | Path,
    title: str,
) -> None:
    """CSV of counts with class names as row (true) and column (predicted) labels, and a heat
    map whose colour is the row-normalised share (so that rare classes are as readable as
    common ones), each cell showing the count and the row percentage."""
    import pandas as pd

    counts = _check_confusion_matrix(cm)
    names = _check_class_names(class_names, counts.shape[0])
    table = pd.DataFrame(
        counts,
        index=pd.Index(names, name="true_class"),
        columns=pd.Index(names, name="predicted_class"),
    )
    table.to_csv(csv_path)
    _plot_confusion_matrix(counts, names, str(png_path), title)


def _plot_confusion_matrix(counts: np.ndarray, names: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(names)
    support = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(support > 0, counts / support, np.nan)
    size = max(4.0, 0.75 * k + 2.0)
    figure, axis = plt.subplots(figsize=(size + 1.0, size))
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fontsize = max(4.0, min(8.0, 60.0 / k))
    for row in range(k):
        for column in range(k):
            share = shares[row, column]
            percent = "–" if np.isnan(share) else f"{100 * share:.1f}%"
            axis.text(
                column,
                row,
                f"{counts[row, column]}\n{percent}",
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if share > 0.5 else "black",
            )
    axis.set_xticks(np.arange(k), names, rotation=45, ha="right")
    axis.set_yticks(np.arange(k), [f"{name} (n={n})" for name, n in zip(names, support[:, 0])])
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of true class")
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


# --- cross-lab evaluation -----------------------------------------------------------------


def restrict_to_shared_classes(
    y_true_names: Sequence[str],
    probabilities: Any,
    model_classes: Sequence[str],
    shared_classes: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Evaluate a model on a test domain that holds only some of its classes.

    A model trained on, say, 8 classes and tested on a lab that labels only 5 of them would
    otherwise be charged for predicting the 3 classes that lab has no images of: every such
    prediction is an error by construction, and the 8x8 confusion matrix holds empty rows
    whose sensitivity is undefined. The cross-lab question is whether the model tells the
    shared classes apart under the other lab's staining and optics, so the test rows whose
    true class is not in ``shared_classes`` are dropped, and the prediction is the argmax
    over the shared classes' probabilities renormalised to sum to 1 (the model's posterior
    given that the cell is of a shared class; renormalising does not move the argmax).

    ``probabilities`` has one row per entry of ``y_true_names`` and one column per entry of
    ``model_classes``. Returns ``(y_true, y_pred, classes)``: integer indices into
    ``classes``, which is ``shared_classes`` in the given order. A row whose shared
    probabilities are all 0 is predicted as the first shared class (as ``np.argmax``) and
    logged."""
    model = [str(name) for name in model_classes]
    shared = _check_class_names(shared_classes)
    if len(set(model)) != len(model):
        raise ValueError(f"model_classes holds duplicates: {model}")
    missing = [name for name in shared if name not in model]
    if missing:
        raise ValueError(f"shared_classes not among model_classes {model}: {missing}")
    true_names = np.asarray([str(name) for name in y_true_names], dtype=object)
    scores = np.asarray(probabilities, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != (len(true_names), len(model)):
        raise ValueError(
            f"probabilities must have shape (len(y_true_names), len(model_classes)) = "
            f"({len(true_names)}, {len(model)}), got {scores.shape}"
        )
    if not np.isfinite(scores).all() or (scores < 0).any():
        raise ValueError("probabilities must be finite and non-negative")

    shared_index = {name: k for k, name in enumerate(shared)}
    keep = np.array([name in shared_index for name in true_names], dtype=bool)
    if not keep.any():
        raise ValueError(f"no row of y_true_names has a class in shared_classes {shared}")
    log.info(
        "kept %d of %d test images whose true class is one of %d shared classes",
        int(keep.sum()),
        len(true_names),
        len(shared),
    )
    y_true = np.array([shared_index[name] for name in true_names[keep]], dtype=np.int64)
    columns = [model.index(name) for name in shared]
    restricted = scores[keep][:, columns]
    mass = restricted.sum(axis=1, keepdims=True)
    if (mass == 0).any():
        log.warning(
            "%d test images have probability 0 for every shared class; predicted as %r",
            int((mass == 0).sum()),
            shared[0],
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        renormalised = np.where(mass > 0, restricted / mass, 0.0)
    y_pred = renormalised.argmax(axis=1).astype(np.int64)
    return y_true, y_pred, shared
