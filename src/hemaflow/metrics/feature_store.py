"""Image features kept on disk by content, so that jobs of one run never extract the same
image's features twice.

A run measures the same images many times: the target lab's validation images in every
pair's fallback decision, its test images in every pair's metrics, a class's synthetic
images in its validation metrics and again in the synthesis metrics. Inception-v3 costs
about 0.2 core-seconds an image on a CPU, so the repeats were minutes of the main job.

A :class:`FeatureStore` keys each image by a hash of its pixels and shape (BLAKE2b,
16 bytes) within a *namespace* that names the network and how it was run (the weights
file's hash, memory layout, device type); a feature is valid for exactly that image and
that network, so nothing can go stale. New features are written as one shard file per
call, atomically (a temporary file renamed into place), so jobs running side by side
never read half a file; two jobs that miss the same image both compute it, and both
shards hold the same values. Features are stored as float32, the precision Inception-v3
computes them in, so a stored feature is the one the network gave, bit for bit.

Workflow jobs use the store under the state folder (``$HEMAFLOW_STATE_DIR/features``,
set by :func:`hemaflow.jobs.start_job`); the library alone uses none unless told
(``HEMAFLOW_FEATURE_STORE`` = a folder, or ``off``)."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STORE_ENV = "HEMAFLOW_FEATURE_STORE"
KEY_BYTES = 16
_DISABLED = ("", "off", "none", "0")


def image_key(image: np.ndarray) -> bytes:
    """The key of one uint8 image: a hash of its shape and pixels."""
    image = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=KEY_BYTES)
    digest.update(str(image.shape).encode())
    digest.update(image.data)
    return digest.digest()


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file, for naming a network by its weights."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class FeatureStore:
    """Per-image features of one network (``namespace``) under ``root``."""

    def __init__(self, root: str | Path, namespace: str, dtype: type = np.float32):
        if not namespace or "/" in namespace or namespace.startswith("."):
            raise ValueError(f"FeatureStore: bad namespace {namespace!r}")
        self.folder = Path(root) / namespace
        self.dtype = np.dtype(dtype)

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The stored features of those ``keys`` that are in the store. A shard that
        cannot be read is skipped with a warning (its features are computed again)."""
        wanted = set(keys)
        found: dict[bytes, np.ndarray] = {}
        if not wanted or not self.folder.is_dir():
            return found
        for shard in sorted(self.folder.glob("*.npz")):
            try:
                with np.load(shard) as data:
                    shard_keys = [bytes(row) for row in data["keys"]]
                    rows = [k for k, key in enumerate(shard_keys) if key in wanted]
                    if rows:
                        features = data["features"][rows]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                log.warning("feature store: %s unreadable (%s); ignored", shard, error)
                continue
            for row, k in enumerate(rows):
                found.setdefault(shard_keys[k], features[row])
            wanted.difference_update(found)
            if not wanted:
                break
        return found

    def add(self, keys: Sequence[bytes], features: np.ndarray) -> Path | None:
        """Write ``features`` (one row per key) as a new shard; returns its path."""
        if len(keys) == 0:
            return None
        if len(keys) != len(features):
            raise ValueError(f"FeatureStore.add: {len(keys)} keys, {len(features)} rows")
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        temporary = self.folder / f".{name}.tmp.npz"
        key_array = np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), KEY_BYTES)
        np.savez(temporary, keys=key_array, features=np.asarray(features, self.dtype))
        final = self.folder / f"{name}.npz"
        os.replace(temporary, final)
        return final

    def features(
        self, images: np.ndarray | Sequence[np.ndarray], compute: Callable[[list[int]], np.ndarray]
    ) -> np.ndarray:
        """The features of every image: stored ones read, the others computed by
        ``compute(positions)`` (the rows of those images, in order) and stored."""
        keys = [image_key(image) for image in images]
        found = self.lookup(keys)
        missing = [k for k, key in enumerate(keys) if key not in found]
        if missing:
            computed = compute(missing)
            fresh: dict[bytes, np.ndarray] = {}
            for k, row in zip(missing, np.asarray(computed, self.dtype)):
                fresh.setdefault(keys[k], row)
            self.add(list(fresh), np.stack(list(fresh.values())))
            found.update(fresh)
        log.info(
            "feature store %s: %d of %d images read, %d computed",
            self.folder.name,
            len(keys) - len(missing),
            len(keys),
            len(missing),
        )
        if not keys:
            return np.zeros((0, 0), self.dtype)
        return np.stack([found[key] for key in keys])


def store_root() -> Path | None:
    """The folder named by ``HEMAFLOW_FEATURE_STORE``; None when unset or ``off``."""
    value = os.environ.get(STORE_ENV)
    if value is None or value.strip().lower() in _DISABLED:
        return None
    return Path(value)
