"""The projected critic: a frozen pretrained AlexNet under small trainable heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hemaflow.metrics.lpips import LPIPS
from hemaflow.models.projected import ProjectedCritic, _tap_sides


def test_taps_shapes_and_the_frozen_backbone_is_lpips_alexnet():
    critic = ProjectedCritic(image_size=32, width=8, n_classes=3, taps=3, input_side=64)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 2])
    features = critic.features(x)
    assert [tuple(f.shape[2:]) for f in features] == [(s, s) for s in _tap_sides(64, 3)]
    assert [f.shape[1] for f in features] == [8, 8, 8]
    scores = critic(x, y)
    assert scores.shape[0] == 2 and scores.dim() == 2
    # only the heads (and the class embeddings) train; the backbone holds LPIPS's AlexNet
    trainable = {n for n, p in critic.named_parameters()}
    assert trainable and all(n.startswith(("heads.", "outs.", "embeds.")) for n in trainable)
    # a trainer that re-enables the whole critic after a generator step cannot unfreeze it
    critic.requires_grad_(True)
    assert all(n.startswith(("heads.", "outs.", "embeds.")) for n, _ in critic.named_parameters())
    assert "backbone.0.weight" in critic.state_dict() and "ccm.0.weight" in critic.state_dict()
    reference = LPIPS(device="cpu").net.convs[0].weight
    assert torch.equal(critic.backbone[0].weight, reference)
    with pytest.raises(ValueError, match="needs labels"):
        critic(x)


def test_gradients_reach_the_image_and_the_class_changes_the_score():
    torch.manual_seed(0)
    critic = ProjectedCritic(image_size=32, width=8, n_classes=2, taps=2, input_side=64)
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    score = critic(x, torch.tensor([0])).mean()
    score.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        a = critic(x, torch.tensor([0]))
        b = critic(x, torch.tensor([1]))
    assert not torch.allclose(a, b)


def test_the_random_mixing_is_fixed_by_the_seed_and_train_mode_keeps_the_backbone_eval():
    a = ProjectedCritic(width=8, taps=1, input_side=64, seed=1)
    torch.manual_seed(123)  # the global RNG does not change the frozen mixing
    b = ProjectedCritic(width=8, taps=1, input_side=64, seed=1)
    c = ProjectedCritic(width=8, taps=1, input_side=64, seed=2)
    assert torch.equal(a.ccm[0].weight, b.ccm[0].weight)
    assert not torch.equal(a.ccm[0].weight, c.ccm[0].weight)
    a.train()
    assert a.training and not a.backbone.training


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(taps=4), "taps"), (dict(width=1), "width"), (dict(input_side=32), "input_side")],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProjectedCritic(**kwargs)


def test_scores_depend_on_the_image_not_only_on_the_heads():
    critic = ProjectedCritic(image_size=32, width=8, taps=3, input_side=64)
    flat = torch.zeros(1, 3, 32, 32)
    rng = np.random.default_rng(0)
    noisy = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        assert not torch.allclose(critic(flat), critic(noisy))
