"""Shared fixtures: the real shared datasets, the default config, synthetic images."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hemaflow.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


# the longest test files (the workflow runs), collected first: `make test` hands whole
# files to its two workers in collection order, so these two start at once, one on each,
# instead of last, when the other worker would have nothing left to run beside them
FIRST_FILES = ("test_workflow.py", "test_operations.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(FIRST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST_FILES)))  # stable


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The read-only real datasets next to the repository (never copied, never written)."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS} (tests on real data skipped)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def _session_config(shared_datasets: Path) -> dict[str, Any]:
    config = load_config(REPO_ROOT / "config" / "config.yaml", base_dir=REPO_ROOT)
    # data_root in the file is relative (../shared/datasets); make it absolute so tests
    # do not depend on the working directory.
    config["data_root"] = str(shared_datasets)
    return config


@pytest.fixture
def default_config(_session_config: dict[str, Any]) -> dict[str, Any]:
    """config/config.yaml, validated with defaults filled in, data_root absolute.
    A fresh copy per test, so a test may change it."""
    return copy.deepcopy(_session_config)


def image_bytes(image: Image.Image, fmt: str, **save_kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_kwargs)
    return buffer.getvalue()


def gradient_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, non-symmetric RGB test pattern (survives JPEG well)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    red = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    green = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    blue = np.full((height, width), int(rng.integers(0, 256)), np.uint8)
    return np.stack([red, green, blue], axis=-1)


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a small synthetic image file under tmp_path.

    ``make_image(name, mode="RGB", size=(32, 24), fmt=None, array=None, **save_kwargs)``:
    ``name`` may contain folders; ``fmt`` defaults to the extension's format; ``array``
    (numpy) overrides the default gradient pattern."""

    def make(
        name: str,
        mode: str = "RGB",
        size: tuple[int, int] = (32, 24),
        fmt: str | None = None,
        array: np.ndarray | None = None,
        **save_kwargs: Any,
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if array is not None:
            image = Image.fromarray(array)
            if image.mode != mode:
                image = image.convert(mode)
        else:
            image = Image.fromarray(gradient_rgb(*size))
            if mode != "RGB":
                image = image.convert(mode)
        fmt = fmt or Image.registered_extensions()[path.suffix.lower()]
        path.write_bytes(image_bytes(image, fmt, **save_kwargs))
        return path

    return make
