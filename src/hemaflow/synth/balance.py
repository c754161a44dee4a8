"""The balanced training set: real training images plus the accepted synthetic ones.

Each synthetic row names its generator, the model file (and its sha256), the batch seed
and the offset within the batch, so that any synthetic image can be traced and
regenerated."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

BALANCED_COLUMNS = (
    "record_id",
    "canonical_class",
    "origin",
    "domain",
    "generator",
    "checkpoint",
    "checkpoint_sha256",
    "seed",
    "offset",
    "balanced_index",
)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def synthetic_rows(
    class_name: str, route: str, model_path: str, candidates: pd.DataFrame
) -> pd.DataFrame:
    """Rows of the synthetic images used for ``class_name`` (candidates marked used)."""
    used = candidates[candidates["used"]] if len(candidates) else candidates
    sha = file_sha256(model_path) if len(used) else ""
    return pd.DataFrame(
        {
            "record_id": used["synthetic_id"].to_numpy() if len(used) else [],
            "canonical_class": class_name,
            "origin": "synthetic",
            "domain": "",
            "generator": route,
            "checkpoint": str(model_path),
            "checkpoint_sha256": sha,
            "seed": used["seed"].to_numpy(dtype=np.int64) if len(used) else [],
            "offset": used["offset"].to_numpy(dtype=np.int64) if len(used) else [],
        }
    )


def build_balanced(
    pool_images: np.ndarray,
    pool: pd.DataFrame,
    synthetic: Mapping[str, tuple[np.ndarray, pd.DataFrame]],
    classes: Sequence[str] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Real training rows of the pool (of ``classes`` if given) followed by the synthetic
    images of each class (class -> (images, rows from ``synthetic_rows``))."""
    real = pool[pool["split"] == "train"]
    if classes is not None:
        real = real[real["canonical_class"].isin(list(classes))]
    real_rows = pd.DataFrame(
        {
            "record_id": real["record_id"].to_numpy(),
            "canonical_class": real["canonical_class"].to_numpy(),
            "origin": "real",
            "domain": real["domain"].to_numpy(),
            "generator": "",
            "checkpoint": "",
            "checkpoint_sha256": "",
            "seed": -1,
            "offset": -1,
        }
    )
    parts = [np.asarray(pool_images)[real["pool_index"].to_numpy()]]
    frames = [real_rows]
    for name in sorted(synthetic):
        images, rows = synthetic[name]
        if len(images) != len(rows):
            raise ValueError(f"{name}: {len(images)} synthetic images but {len(rows)} rows")
        if len(rows):
            parts.append(np.asarray(images))
            frames.append(rows)
    manifest = pd.concat(frames, ignore_index=True)
    manifest["seed"] = manifest["seed"].astype("int64")
    manifest["offset"] = manifest["offset"].astype("int64")
    manifest["balanced_index"] = np.arange(len(manifest), dtype=np.int64)
    return np.concatenate(parts), manifest[list(BALANCED_COLUMNS)]
