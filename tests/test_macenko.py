"""Macenko stain normalization on real images of two labs."""

from __future__ import annotations

import numpy as np
import pytest

from hemaflow.normalize.apply import classical_normalizer
from hemaflow.normalize.macenko import MacenkoNormalizer, optical_density, stain_vectors

from .realdata import load_square_cells, pbc_cells, require_shared_datasets


@pytest.fixture(scope="module")
def labs():
    pbc, _ = pbc_cells(6, 64)
    root = require_shared_datasets() / "bccd" / "Original_Images"
    bccd = load_square_cells(sorted(root.glob("*.jpg"))[:24], 64)
    return pbc, bccd


def _mean_stains(images: np.ndarray) -> np.ndarray:
    return stain_vectors(optical_density(images.reshape(-1, 3)))


def test_bccd_takes_pbcs_stain_vectors(labs):
    pbc, bccd = labs
    normalizer = MacenkoNormalizer().fit(pbc)
    out = normalizer.transform(bccd)
    assert out.shape == bccd.shape and out.dtype == np.uint8
    before = np.abs(_mean_stains(bccd) - normalizer.vectors).sum()
    after = np.abs(_mean_stains(out) - normalizer.vectors).sum()
    assert after < 0.8 * before
    # every image is re-coloured, none left as it was
    changed = np.abs(out.astype(int) - bccd.astype(int)).mean(axis=(1, 2, 3))
    assert (changed > 2).all()


def test_the_targets_own_images_change_little(labs):
    pbc, _ = labs
    normalizer = MacenkoNormalizer().fit(pbc)
    out = normalizer.transform(pbc)
    assert np.abs(out.astype(int) - pbc.astype(int)).mean() < 16  # per-image vectors: some change


def test_an_unstained_image_passes_unchanged_and_stats_round_trip(labs):
    pbc, _ = labs
    normalizer = MacenkoNormalizer().fit(pbc)
    blank = np.full((1, 16, 16, 3), 250, np.uint8)
    assert np.array_equal(normalizer.transform_image(blank[0]), blank[0])
    again = classical_normalizer("macenko").from_dict(normalizer.to_dict())
    assert np.array_equal(again.transform(pbc[:4]), normalizer.transform(pbc[:4]))
    with pytest.raises(ValueError, match="no stained pixels"):
        MacenkoNormalizer().fit(blank)
