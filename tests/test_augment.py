"""Stain-and-colour and scale augmentation of the classifier: seeded, the identity at
strength 0, a real change of stain (or of a cell's size) at strength 1, and within the
image range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hemaflow.classify.augment import _hed_jitter, grayscale_augment, scale_augment, stain_augment
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


def test_scale_augment_is_seeded_and_the_identity_at_zero(batch):
    first = scale_augment(batch, np.random.default_rng(5), 0.4)
    assert torch.equal(first, scale_augment(batch, np.random.default_rng(5), 0.4))
    assert not torch.allclose(first, scale_augment(batch, np.random.default_rng(6), 0.4))
    rng_zero, rng_one = np.random.default_rng(3), np.random.default_rng(3)
    assert torch.equal(scale_augment(batch, rng_zero, 0.0), batch)
    scale_augment(batch, rng_one, 0.4)
    assert rng_zero.random() == rng_one.random()
    assert first.shape == batch.shape and first.dtype == batch.dtype
    assert first.min() >= -1.0 and first.max() <= 1.0


def _disc(radius: float, size: int = 64) -> torch.Tensor:
    """A dark disc of ``radius`` px centred on a light square, [-1, 1], one image."""
    yy, xx = np.mgrid[:size, :size] + 0.5 - size / 2
    inside = (yy**2 + xx**2) < radius**2
    image = np.where(inside, -0.8, 0.8).astype(np.float32)
    return torch.from_numpy(np.repeat(image[None, None], 3, axis=1))


def test_scale_augment_changes_a_cells_size_within_its_range():
    """A centred disc of radius 12 px: its dark area after the zoom gives the factor,
    which must lie in [1 / (1 + z), 1 + z] and take both signs over many draws."""
    strength = 0.5
    disc = _disc(12.0).repeat(64, 1, 1, 1)
    out = scale_augment(disc, np.random.default_rng(0), strength)
    area = (out[:, 0] < 0).float().sum(dim=(1, 2)).numpy()
    factor = np.sqrt(area / (disc[0, 0] < 0).float().sum().item())
    assert factor.min() >= 1 / (1 + strength) - 0.05 and factor.max() <= 1 + strength + 0.05
    assert factor.min() < 0.85 and factor.max() > 1.2
    # the disc stays near the centre (a shift of at most 0.05 z of the side)
    dark = (out[:, 0] < 0).float()
    centre_x = (dark.sum(dim=1) * torch.arange(64)).sum(dim=1) / dark.sum(dim=(1, 2))
    assert (centre_x - 31.5).abs().max() <= 0.05 * strength * 64 + 1


def test_scale_option_is_validated_and_off_by_default():
    assert ClassifierOptions.from_config({"preset": "small"}).scale_augment == 0.0
    with pytest.raises(ValueError, match="scale_augment"):
        ClassifierOptions.from_config({"preset": "small", "scale_augment": -0.1})


def test_grayscale_augment_turns_the_chosen_images_grey(batch):
    rng_zero, rng_half = np.random.default_rng(4), np.random.default_rng(4)
    assert torch.equal(grayscale_augment(batch, rng_zero, 0.0), batch)
    half = grayscale_augment(batch, rng_half, 0.5)
    assert rng_zero.random() == rng_half.random()  # one draw per image either way
    grey = grayscale_augment(batch, np.random.default_rng(0), 1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    # luma of the original: (0.299, 0.587, 0.114)
    expected = 0.299 * batch[:, 0] + 0.587 * batch[:, 1] + 0.114 * batch[:, 2]
    assert torch.allclose(grey[:, 0], expected, atol=1e-6)
    chosen = np.random.default_rng(4).random(batch.shape[0]) < 0.5
    for k, is_grey in enumerate(chosen):
        assert torch.equal(half[k], grey[k] if is_grey else batch[k])


def test_grayscale_option_is_a_fraction():
    assert ClassifierOptions.from_config({"preset": "small"}).grayscale_augment == 0.0
    with pytest.raises(ValueError, match="grayscale_augment"):
        ClassifierOptions.from_config({"preset": "small", "grayscale_augment": 1.5})
