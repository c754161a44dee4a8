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

A store remembers the keys of every shard it has read, by the shard's path and its size,
modification time and inode (a file replaced under the same name is read again), so a
lookup opens only the shards that hold a wanted key and the ones it has not seen yet. A
shard that cannot be read is skipped with a warning, and its features are computed again.

Shards accumulate, one per job that computed something, run after run.
:meth:`FeatureStore.compact` (or :func:`compact_all` for every namespace, on the command
line ``hemaflow features compact``) merges a namespace's readable shards into one, keys
deduplicated, written atomically like any shard, then removes the merged ones; unreadable
shards are left where they are and reported, and temporary files more than an hour old (a
killed job's, which would never become a shard) are removed. Run it when no workflow job
is running: it is safe beside one (a lookup that finds a shard gone looks for the merged one, and at
worst computes those features again), but never useful while jobs still add shards.

Workflow jobs use the store under the state folder (``$HEMAFLOW_STATE_DIR/features``,
set by :func:`hemaflow.jobs.start_job`); the library alone uses none unless told
(``HEMAFLOW_FEATURE_STORE`` = a folder, or ``off``)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STORE_ENV = "HEMAFLOW_FEATURE_STORE"
KEY_BYTES = 16
_DISABLED = ("", "off", "none", "0")
# what reading a damaged shard raises (FileNotFoundError, an OSError, is handled first)
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
# a shard is written in seconds: a temporary file this old was left by a writer that died
# (a killed job) and will never be renamed into a shard
STALE_TEMPORARY_SECONDS = 3600.0


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


def _signature(status: os.stat_result) -> tuple[int, int, int]:
    return (status.st_size, status.st_mtime_ns, status.st_ino)


@dataclass(frozen=True)
class _ShardKeys:
    """What a store remembers of one shard: the file's signature and each key's first row
    (empty for a shard that could not be read)."""

    signature: tuple[int, int, int]
    rows: dict[bytes, int]
    readable: bool = True


@dataclass(frozen=True)
class CompactSummary:
    """What :meth:`FeatureStore.compact` did to one namespace."""

    namespace: str
    shards_before: int
    shards_after: int
    features: int  # distinct keys in the readable shards, all kept
    bytes_before: int
    bytes_after: int
    unreadable: tuple[str, ...] = ()  # shard names left as they were
    stale_removed: tuple[str, ...] = ()  # temporary files of dead writers, removed
    stale_bytes: int = 0

    def __str__(self) -> str:
        text = (
            f"{self.namespace}: {self.shards_before} shards -> {self.shards_after}, "
            f"{self.features} features, "
            f"{format_bytes(self.bytes_before)} -> {format_bytes(self.bytes_after)}"
        )
        if self.unreadable:
            text += f"; left unreadable: {', '.join(self.unreadable)}"
        if self.stale_removed:
            text += (
                f"; removed {len(self.stale_removed)} temporary files left by killed jobs "
                f"({format_bytes(self.stale_bytes)})"
            )
        return text


@dataclass(frozen=True)
class StoreSize:
    """What one namespace holds (:meth:`FeatureStore.size`)."""

    namespace: str
    shards: int
    features: int  # distinct keys in the readable shards
    bytes: int
    unreadable: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = (
            f"{self.namespace}: {self.shards} shards, {self.features} features, "
            f"{format_bytes(self.bytes)}"
        )
        if self.unreadable:
            text += f"; unreadable: {', '.join(self.unreadable)}"
        return text


def format_bytes(count: int) -> str:
    """``1234567`` -> ``'1.2 MB'`` (powers of 1000)."""
    if count < 1000:
        return f"{count} B"
    for power, unit in enumerate(("kB", "MB", "GB"), start=1):
        value = round(count / 1000**power, 1)
        if value < 1000 or unit == "GB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


class FeatureStore:
    """Per-image features of one network (``namespace``) under ``root``."""

    def __init__(self, root: str | Path, namespace: str, dtype: type = np.float32):
        if not namespace or "/" in namespace or namespace.startswith("."):
            raise ValueError(f"FeatureStore: bad namespace {namespace!r}")
        self.folder = Path(root) / namespace
        self.dtype = np.dtype(dtype)
        self._keys: dict[Path, _ShardKeys] = {}
        self._lock = threading.Lock()

    def shards(self) -> list[Path]:
        """The namespace's shard files, by name; temporary files (``.*``) are not shards."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.npz") if not p.name.startswith("."))

    def _read(self, shard: Path, features: bool = True) -> tuple[_ShardKeys, np.ndarray | None]:
        """A shard's keys (remembered) and, if asked, its feature rows, read from one open
        file. Raises FileNotFoundError for a shard gone, one of ``_READ_ERRORS`` for a
        damaged one."""
        with open(shard, "rb") as handle:
            signature = _signature(os.fstat(handle.fileno()))
            with np.load(handle) as data:
                keys = np.asarray(data["keys"])
                if keys.ndim != 2 or keys.shape[1] != KEY_BYTES or keys.dtype != np.uint8:
                    raise ValueError(f"keys of shape {keys.shape} and type {keys.dtype}")
                rows_of = np.asarray(data["features"]) if features else None
        if rows_of is not None and (rows_of.ndim != 2 or len(rows_of) != len(keys)):
            raise ValueError(f"{len(keys)} keys, features of shape {rows_of.shape}")
        rows: dict[bytes, int] = {}
        for row, key in enumerate(keys):
            rows.setdefault(key.tobytes(), row)
        entry = _ShardKeys(signature, rows)
        with self._lock:
            self._keys[shard] = entry
        return entry, rows_of

    def _remember_unreadable(self, shard: Path, error: Exception) -> None:
        """Warn, and remember the file so that lookups skip it until it changes."""
        log.warning("feature store: %s unreadable (%s); ignored", shard, error)
        try:
            signature = _signature(shard.stat())
        except OSError:
            return
        with self._lock:
            self._keys[shard] = _ShardKeys(signature, {}, readable=False)

    def _known(self, shard: Path) -> _ShardKeys | None:
        """The remembered keys of a shard if the file is still the one read; None when it
        has to be read (new, or replaced). Raises FileNotFoundError for a shard gone."""
        with self._lock:
            entry = self._keys.get(shard)
        if entry is None:
            return None
        return entry if entry.signature == _signature(shard.stat()) else None

    def _forget_others(self, listed: set[Path]) -> None:
        with self._lock:
            for shard in [s for s in self._keys if s not in listed]:
                del self._keys[shard]

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The stored features of those ``keys`` that are in the store. A shard that
        cannot be read is skipped with a warning (its features are computed again); only
        shards that are new or hold a wanted key are opened."""
        wanted = set(keys)
        found: dict[bytes, np.ndarray] = {}
        if not wanted:
            return found
        listed: set[Path] = set()
        while wanted:
            # a shard gone was merged by a compaction: its features are in a newer shard,
            # so list again (new shards only) instead of computing them
            fresh = [shard for shard in self.shards() if shard not in listed]
            if not fresh:
                break
            listed.update(fresh)
            gone = False
            for shard in fresh:
                if not wanted:
                    break
                try:
                    entry = self._known(shard)
                    if entry is not None and not any(key in entry.rows for key in wanted):
                        continue
                    entry, features = self._read(shard)
                except FileNotFoundError:
                    log.warning("feature store: %s is gone (compacted?); looking again", shard)
                    gone = True
                    continue
                except _READ_ERRORS as error:
                    self._remember_unreadable(shard, error)
                    continue
                hits = [key for key in wanted if key in entry.rows]
                if hits:
                    block = features[[entry.rows[key] for key in hits]]
                    found.update(zip(hits, block, strict=True))
                    wanted.difference_update(hits)
            if not gone:
                break
        self._forget_others(listed)
        return found

    def _write(self, keys: Sequence[bytes], features: np.ndarray, prefix: str = "") -> Path:
        """``features`` (one row per key, as they are) as a new shard, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{prefix}{os.getpid()}-{uuid.uuid4().hex}"
        temporary = self.folder / f".{name}.tmp.npz"
        final = self.folder / f"{name}.npz"
        key_array = np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), KEY_BYTES)
        try:
            np.savez(temporary, keys=key_array, features=features)
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        rows: dict[bytes, int] = {}
        for row, key in enumerate(keys):
            rows.setdefault(bytes(key), row)
        entry = _ShardKeys(_signature(final.stat()), rows)
        with self._lock:
            self._keys[final] = entry
        return final

    def add(self, keys: Sequence[bytes], features: np.ndarray) -> Path | None:
        """Write ``features`` (one row per key) as a new shard; returns its path."""
        if len(keys) == 0:
            return None
        if len(keys) != len(features):
            raise ValueError(f"FeatureStore.add: {len(keys)} keys, {len(features)} rows")
        return self._write(keys, np.asarray(features, self.dtype))

    def size(self) -> StoreSize:
        """Shards, distinct features and bytes of this namespace (keys read, not rows)."""
        shards = self.shards()
        distinct: set[bytes] = set()
        unreadable: list[str] = []
        total = 0
        for shard in shards:
            try:
                total += shard.stat().st_size
                entry = self._known(shard)
                if entry is None:
                    entry, _ = self._read(shard, features=False)
            except FileNotFoundError:
                continue
            except _READ_ERRORS as error:
                self._remember_unreadable(shard, error)
                unreadable.append(shard.name)
                continue
            if not entry.readable:
                unreadable.append(shard.name)
            distinct.update(entry.rows)
        return StoreSize(self.folder.name, len(shards), len(distinct), total, tuple(unreadable))

    def stale_temporaries(self, older_than: float = STALE_TEMPORARY_SECONDS) -> list[Path]:
        """Temporary shard files (``.*.tmp.npz``) not modified for ``older_than`` seconds:
        left by a writer that was killed between writing and renaming. A live writer's
        file is seconds old and is not listed."""
        if not self.folder.is_dir():
            return []
        now = time.time()
        stale = []
        for path in sorted(self.folder.glob(".*.tmp.npz")):
            try:
                if now - path.stat().st_mtime > older_than:
                    stale.append(path)
            except FileNotFoundError:  # renamed or removed meanwhile
                continue
        return stale

    def compact(self, stale_after: float = STALE_TEMPORARY_SECONDS) -> CompactSummary:
        """Merge every readable shard into one new shard (keys deduplicated, the first
        shard by name wins; values are copied bit for bit), then remove the merged ones.
        Unreadable shards, and shards of another row width or type than the first, are
        left and reported; nothing is rewritten when fewer than two shards can be merged.
        Temporary files older than ``stale_after`` seconds (a killed writer's, never to
        become a shard) are removed and reported. Safe beside running jobs, but meant for
        when none runs (see the module's text)."""
        stale_removed: list[str] = []
        stale_bytes = 0
        for path in self.stale_temporaries(stale_after):
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as error:
                log.warning("feature store: could not remove %s (%s)", path, error)
                continue
            stale_removed.append(path.name)
            stale_bytes += size
        before = self.shards()
        bytes_before = 0
        merged: list[Path] = []
        unreadable: list[str] = []
        keys: list[bytes] = []
        blocks: list[np.ndarray] = []
        taken: set[bytes] = set()
        for shard in before:
            try:
                bytes_before += shard.stat().st_size
                entry, features = self._read(shard)
            except FileNotFoundError:  # merged by another compaction meanwhile
                continue
            except _READ_ERRORS as error:
                self._remember_unreadable(shard, error)
                unreadable.append(shard.name)
                continue
            if blocks and (features.shape[1:], features.dtype) != (
                blocks[0].shape[1:],
                blocks[0].dtype,
            ):
                log.warning(
                    "feature store: %s holds %s rows of %d, not %s rows of %d; left as is",
                    shard,
                    features.dtype,
                    features.shape[1],
                    blocks[0].dtype,
                    blocks[0].shape[1],
                )
                unreadable.append(shard.name)
                continue
            new = [(key, row) for key, row in entry.rows.items() if key not in taken]
            taken.update(key for key, _ in new)
            keys.extend(key for key, _ in new)
            blocks.append(features[[row for _, row in new]])
            merged.append(shard)
        if len(merged) >= 2:
            self._write(keys, np.concatenate(blocks), prefix="compact-")
            for shard in merged:
                try:
                    shard.unlink()
                except FileNotFoundError:
                    pass
                except OSError as error:  # its features are in the new shard as well
                    log.warning("feature store: could not remove %s (%s)", shard, error)
        after = self.shards()
        bytes_after = 0
        for shard in after:
            try:
                bytes_after += shard.stat().st_size
            except FileNotFoundError:
                pass
        self._forget_others(set(after))
        return CompactSummary(
            self.folder.name,
            len(before),
            len(after),
            len(keys),
            bytes_before,
            bytes_after,
            tuple(unreadable),
            tuple(stale_removed),
            stale_bytes,
        )

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


def namespaces(root: str | Path) -> list[str]:
    """The namespaces (sub-folders) of a store root. Raises FileNotFoundError when
    ``root`` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no feature store at {root}: not a folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def compact_all(root: str | Path) -> list[CompactSummary]:
    """:meth:`FeatureStore.compact` for every namespace under ``root``."""
    return [FeatureStore(root, name).compact() for name in namespaces(root)]


def store_sizes(root: str | Path) -> list[StoreSize]:
    """:meth:`FeatureStore.size` of every namespace under ``root``."""
    return [FeatureStore(root, name).size() for name in namespaces(root)]
