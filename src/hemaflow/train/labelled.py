"""Labelled training images: the checks every trainer of a classifier or a conditional
generator makes on (images, labels, class_names), and class-balanced draws of rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hemaflow.train.loop import check_images


def check_labelled(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], where: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 NHWC images, 1-D integer labels of the same length indexing ``class_names``
    (unique non-empty strings), every class with at least one image."""
    images = check_images(images, f"{where}: images")
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError(f"{where}: class_names must be a sequence of names, got {class_names!r}")
    names = list(class_names)
    if not names:
        raise ValueError(f"{where}: class_names is empty")
    bad = [name for name in names if not isinstance(name, str) or not name]
    if bad:
        raise ValueError(f"{where}: class_names must be non-empty strings, got {bad!r}")
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"{where}: class_names has duplicates: {twice}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(f"{where}: {len(labels)} labels for {len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(
            f"{where}: labels out of range: they index class_names (0..{len(names) - 1}), "
            f"got values from {labels.min()} to {labels.max()}"
        )
    counts = np.bincount(labels.astype(np.int64), minlength=len(names))
    empty = [names[index] for index in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"{where}: empty class: no images labelled {', '.join(empty)}")
    return images, labels.astype(np.int64), names


class BalancedRows:
    """Class-balanced draws of row indices: classes uniformly, then rows within each
    class uniformly (with replacement), from the caller's numpy Generator."""

    def __init__(self, labels: np.ndarray, n_classes: int):
        labels = np.asarray(labels, dtype=np.int64)
        self.n_classes = n_classes
        self.order = np.argsort(labels, kind="stable")
        self.counts = np.bincount(labels, minlength=n_classes).astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, classes) of ``n`` draws."""
        classes = rng.integers(0, self.n_classes, size=n)
        within = rng.integers(0, self.counts[classes])
        return self.order[self.offsets[classes] + within], classes
