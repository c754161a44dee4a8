"""The balanced training set: real training images plus the accepted synthetic ones.

Each synthetic row names its generator, the model file (and its sha256), the batch seed
and the offset within the batch, so that any synthetic image can be traced and
regenerated. A class whose generator missed its quality targets (``targets``) is
balanced by sampling instead: ``oversampled`` rows repeat its real training images (same
``record_id``), so the set is balanced for any sampler."""

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


def synthetic_cap(to_generate: int, target: int, share: float) -> int:
    """How many of a padded class's ``to_generate`` extra training rows may be synthetic
    when at most ``share`` of its ``target`` rows may be: min(to_generate, floor(share x
    target)). The rest of its padding repeats its real images, so that a class with 20
    real images is not learnt from the generator's look alone."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"synthetic share must be in [0, 1], got {share}")
    return max(0, min(int(to_generate), int(np.floor(share * int(target) + 1e-9))))


def oversampled_picks(n_real: int, n_extra: int, rng: np.random.Generator) -> np.ndarray:
    """Which of ``n_real`` training images to repeat for ``n_extra`` more rows: every
    image as often as it fits whole, then a random choice without replacement for the
    rest (no image repeated twice more than another)."""
    if n_extra <= 0:
        return np.zeros(0, dtype=np.int64)
    if n_real == 0:
        raise ValueError(f"cannot oversample {n_extra} rows of a class without training images")
    whole = np.tile(np.arange(n_real), n_extra // n_real)
    rest = np.sort(rng.choice(n_real, n_extra % n_real, replace=False))
    return np.concatenate([whole, rest]).astype(np.int64)


def build_balanced(
    pool_images: np.ndarray,
    pool: pd.DataFrame,
    synthetic: Mapping[str, tuple[np.ndarray, pd.DataFrame]],
    classes: Sequence[str] | None = None,
    oversample: Mapping[str, int] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Real training rows of the pool (of ``classes`` if given) followed by the synthetic
    images of each class (class -> (images, rows from ``synthetic_rows``)) and the
    repeated real rows of each class of ``oversample`` (class -> extra rows; seeded)."""
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
    for name in sorted(oversample or {}):
        own = real[real["canonical_class"] == name]
        rng = np.random.default_rng([seed, *name.encode()])
        try:
            picks = oversampled_picks(len(own), int(oversample[name]), rng)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if len(picks) == 0:
            continue
        chosen = own.iloc[picks]
        parts.append(np.asarray(pool_images)[chosen["pool_index"].to_numpy()])
        frames.append(
            pd.DataFrame(
                {
                    "record_id": chosen["record_id"].to_numpy(),
                    "canonical_class": name,
                    "origin": "oversampled",
                    "domain": chosen["domain"].to_numpy(),
                    "generator": "",
                    "checkpoint": "",
                    "checkpoint_sha256": "",
                    "seed": -1,
                    "offset": -1,
                }
            )
        )
    manifest = pd.concat(frames, ignore_index=True)
    manifest["seed"] = manifest["seed"].astype("int64")
    manifest["offset"] = manifest["offset"].astype("int64")
    manifest["balanced_index"] = np.arange(len(manifest), dtype=np.int64)
    return np.concatenate(parts), manifest[list(BALANCED_COLUMNS)]
