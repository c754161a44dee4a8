"""Where the shared real datasets are, and the default config pointed at them."""

from pathlib import Path

import pytest

from hemaflow.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def require_shared_datasets() -> Path:
    if not (SHARED_DATASETS / "pbc").is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


def real_default_config() -> dict:
    """config/config.yaml, validated, with data_root made absolute (any cwd works)."""
    root = require_shared_datasets()
    config = load_config(REPO / "config" / "config.yaml", base_dir=REPO)
    config["data_root"] = str(root)
    return config
