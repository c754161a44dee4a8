"""Stain-and-colour augmentation of the classifier: seeded, the identity at strength 0,
a real change of stain at strength 1, and within the image range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hemaflow.classify.augment import _hed_jitter, stain_augment
from hemaflow.classify.train import ClassifierOptions

from .realdata import pbc_cells


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    images, _ = pbc_cells(2, 64, classes=["basophil", "neutrophil", "platelet", "monocyte"])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_same_seed_same_images(batch):
    first = stain_augment(batch, np.random.default_rng(7), 1.0)
    second = stain_augment(batch, np.random.default_rng(7), 1.0)
    other = stain_augment(batch, np.random.default_rng(8), 1.0)
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


def test_strength_zero_is_the_identity_and_draws_alike(batch):
    rng_zero, rng_one = np.random.default_rng(3), np.random.default_rng(3)
    assert torch.equal(stain_augment(batch, rng_zero, 0.0), batch)
    stain_augment(batch, rng_one, 1.0)
    # the same draws are consumed, so a run's later random numbers do not depend on it
    assert rng_zero.random() == rng_one.random()


def test_unit_stain_factors_give_back_the_image(batch):
    x = (batch + 1.0) * 0.5
    n = x.shape[0]
    out = _hed_jitter(x, torch.ones(n, 3), torch.zeros(n, 3))
    assert torch.allclose(out, x.clamp_min(1e-6), atol=2e-3)


def test_strength_changes_the_stain_and_stays_in_range(batch):
    out = stain_augment(batch, np.random.default_rng(0), 1.0)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= -1.0 and out.max() <= 1.0
    # every image's mean colour moves, by more at a higher strength
    weak = stain_augment(batch, np.random.default_rng(0), 0.25)
    change = (out - batch).abs().mean(dim=(1, 2, 3))
    change_weak = (weak - batch).abs().mean(dim=(1, 2, 3))
    assert (change > 0.01).all()
    assert change.mean() > change_weak.mean()


def test_option_is_validated_and_off_by_default():
    assert ClassifierOptions.from_config({"preset": "small"}).stain_augment == 0.0
    assert ClassifierOptions.from_config({"preset": "small", "stain_augment": 1}).stain_augment == 1
    with pytest.raises(ValueError, match="stain_augment"):
        ClassifierOptions.from_config({"preset": "small", "stain_augment": -0.5})
