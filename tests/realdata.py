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


def load_square_cells(paths, size: int):
    """Real cell images: centre square crop, resized to size x size, uint8 NHWC."""
    import numpy as np
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            side = min(image.size)
            x0, y0 = (image.width - side) // 2, (image.height - side) // 2
            square = image.crop((x0, y0, x0 + side, y0 + side))
            images.append(np.asarray(square.resize((size, size), Image.Resampling.LANCZOS)))
    return np.stack(images)


def pbc_cells(per_class: int, size: int, classes=None, offset: int = 0):
    """``per_class`` real pbc images of each class folder (or of ``classes``): images,
    class names of the rows. Hidden '.DS_*' files (known broken entries) are skipped."""
    import numpy as np

    root = require_shared_datasets() / "pbc"
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if classes is not None:
        folders = [f for f in folders if f.name in classes]
    paths, names = [], []
    for folder in folders:
        chosen = [p for p in sorted(folder.glob("*.jpg")) if not p.name.startswith(".")]
        chosen = chosen[offset : offset + per_class]
        paths += chosen
        names += [folder.name] * len(chosen)
    return load_square_cells(paths, size), np.array(names, dtype=object)
