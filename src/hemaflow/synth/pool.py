"""The labelled image pool that synthesis works on: every labelled domain's (normalized)
cache in one array, with its split, and the optional subsampling of the train split.

Generators only ever read rows whose split is ``train``; ``val``, ``test`` and
``held_out`` (train rows removed by ``subsample``) stay for evaluation."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from hemaflow.synth.routing import subsample_train

log = logging.getLogger(__name__)

POOL_COLUMNS = ("record_id", "dataset", "domain", "canonical_class", "split", "pool_index")


def build_pool(
    caches: Mapping[str, tuple[np.ndarray, pd.DataFrame]],
    subsample: Mapping[str, int] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """``caches``: domain -> (uint8 images, index with record_id, dataset,
    canonical_class, split). Unlabelled rows (no canonical class) are left out."""
    parts, frames = [], []
    offset = 0
    for domain in sorted(caches):
        images, index = caches[domain]
        if len(images) != len(index):
            raise ValueError(f"domain {domain}: {len(images)} images but {len(index)} index rows")
        labelled = index["canonical_class"].fillna("").astype(str).str.len().to_numpy() > 0
        rows = np.flatnonzero(labelled)
        if len(rows) == 0:
            log.info("domain %s has no labelled images: not in the synthesis pool", domain)
            continue
        parts.append(np.asarray(images)[rows])
        # provenance: which normalization produced the images, where the cache says so
        columns = ["record_id", "dataset", "canonical_class", "split"]
        columns += [c for c in ("normalization", "normalized_to") if c in index]
        frame = index.iloc[rows][columns].copy()
        frame.insert(2, "domain", domain)
        frame["pool_index"] = np.arange(offset, offset + len(rows))
        offset += len(rows)
        frames.append(frame)
    if not parts:
        raise ValueError("no labelled images in any domain: nothing to synthesize from")
    images = np.concatenate(parts)
    pool = pd.concat(frames, ignore_index=True)
    if subsample:
        pool = subsample_train(pool, subsample, seed)
    return images, pool.reset_index(drop=True)


def train_counts(pool: pd.DataFrame, classes: Sequence[str] | None = None) -> dict[str, int]:
    """Training images per canonical class (every class of ``classes`` listed, 0 if
    absent)."""
    counts = pool.loc[pool["split"] == "train", "canonical_class"].value_counts()
    names = sorted(set(classes or []) | set(counts.index))
    return {name: int(counts.get(name, 0)) for name in names}


def class_images(
    images: np.ndarray, pool: pd.DataFrame, name: str, splits: Sequence[str]
) -> np.ndarray:
    rows = pool.loc[
        (pool["canonical_class"] == name) & pool["split"].isin(list(splits)), "pool_index"
    ]
    return np.asarray(images)[rows.to_numpy()]


def labelled_train(
    images: np.ndarray, pool: pd.DataFrame, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Training images of ``classes`` and their labels (indexes into ``classes``)."""
    chosen = pool[(pool["split"] == "train") & pool["canonical_class"].isin(list(classes))]
    lookup = {name: k for k, name in enumerate(classes)}
    labels = chosen["canonical_class"].map(lookup).to_numpy(dtype=np.int64)
    return np.asarray(images)[chosen["pool_index"].to_numpy()], labels
