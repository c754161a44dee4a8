"""Where resumable training state lives and what is in it, without torch: the keyed state
folders and the checkpoint files in them (``hemaflow.train.loop`` writes and reads them).
Stage functions that only plan or list a model's state (routes, pools, tables) import this
module, so that their jobs start without loading torch."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# For a trainer whose steps do not depend on how many there will be (no schedule that
# decays towards the last step): raising ``iterations`` resumes the run where it stopped,
# so a finished run can be trained on (``run_training`` refuses a checkpoint past the end).
EXTENDABLE = frozenset({"iterations", "snapshots"})
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def keyed_state_dir(
    root: str | Path,
    kind: str,
    name: str,
    options: Mapping[str, Any],
    *key_groups: Iterable[str],
) -> Path:
    """Where a model's resumable checkpoints live: outside the workflow's outputs (a failed
    job's outputs are deleted), keyed by the library version, the options (canonical JSON)
    and the training record ids (each group sorted), so that a changed config, new data or
    another version's networks never resume a stale run."""
    from hemaflow import __version__
    from hemaflow.config import canonical_json

    digest = hashlib.sha256(f"hemaflow {__version__}\n".encode())
    digest.update(canonical_json(dict(options)).encode())
    for keys in key_groups:
        digest.update("\n".join(sorted(keys)).encode())
    return Path(root) / kind / f"{name}-{digest.hexdigest()[:16]}"


def list_checkpoints(state_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the checkpoints in ``state_dir``, oldest first."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return []
    found = []
    for path in state_dir.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 of the arrays' shapes and bytes: which data a checkpoint belongs to."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        digest.update(repr(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()
