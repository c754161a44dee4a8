"""The DCGAN-shaped C-WGAN-GP networks (``hemaflow.models.dcgan``): shapes, and that
they compute exactly what plain functional layers with their weights compute, gradients
of a gradient penalty (double backward) included: the pin for any change made to their
speed (in-place activations, fused operations), which must leave the numbers alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.models.dcgan import SLOPE, DCCritic, DCGenerator, generator_channels
from hemaflow.synth.cwgan import CWGANModel, CWGANOptions
from hemaflow.synth.real_classifier import RealClassifierOptions, build_classifier
from hemaflow.train.labelled import BalancedRows
from hemaflow.train.loop import ImageSampler


def plain_conditional_norm(norm: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = F.batch_norm(x, None, None, training=True, eps=norm.norm.eps)
    return h * norm.gain(y)[:, :, None, None] + norm.bias(y)[:, :, None, None]


def plain_generator(net: DCGenerator, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``DCGenerator.forward`` in functional layers, every activation out of place."""
    x = F.linear(z, net.fc.weight, net.fc.bias).view(-1, net.start_channels, 4, 4)
    for norm, up in zip(net.norms[:-1], net.ups, strict=True):
        x = F.relu(plain_conditional_norm(norm, x, y))
        x = F.conv_transpose2d(x, up.weight, up.bias, stride=2, padding=1)
    x = F.relu(plain_conditional_norm(net.norms[-1], x, y))
    return torch.tanh(F.conv2d(x, net.to_rgb.weight, net.to_rgb.bias, padding=1))


def plain_critic(net: DCCritic, x: torch.Tensor) -> torch.Tensor:
    """``DCCritic.forward`` (no projection) in functional layers, out of place."""
    for conv in (m for m in net.body if isinstance(m, nn.Conv2d)):
        x = F.leaky_relu(F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1), SLOPE)
    return F.linear(x.sum(dim=(2, 3)), net.out.weight, net.out.bias)


def r1_step(generator, critic, g_forward, d_forward, z, y, real):
    """Critic loss with an R1 penalty on ``real`` and the generator's loss through the
    critic: the scores, and every parameter's gradient."""
    real = real.clone().requires_grad_(True)
    fake = g_forward(generator, z, y)
    scores_real, scores_fake = d_forward(critic, real), d_forward(critic, fake)
    (grad,) = torch.autograd.grad(scores_real.sum(), real, create_graph=True)
    loss = F.relu(1 - scores_real).mean() + F.relu(1 + scores_fake).mean()
    loss = loss + grad.pow(2).flatten(1).sum(1).mean() - d_forward(critic, fake).mean()
    for net in (generator, critic):
        net.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad.clone() for net in (generator, critic) for p in net.parameters()]
    return [scores_real.detach(), scores_fake.detach(), fake.detach()], grads


def test_forward_and_gradients_are_those_of_plain_layers():
    torch.manual_seed(0)
    generator, critic = DCGenerator(3, z_dim=16, image_size=32, width=8), DCCritic(32, 8)
    with torch.no_grad():  # conditional gains and biases away from their 1 / 0 start
        for norm in generator.norms:
            norm.gain.weight.normal_(1.0, 0.3)
            norm.bias.weight.normal_(0.0, 0.3)
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 1])
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    ours = r1_step(generator, critic, DCGenerator.__call__, DCCritic.__call__, z, y, real)
    plain = r1_step(generator, critic, plain_generator, plain_critic, z, y, real)
    for a, b in zip(ours[0] + ours[1], plain[0] + plain[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_and_channels(size):
    generator = DCGenerator(2, z_dim=8, image_size=size, width=8)
    images = generator(torch.randn(3, 8), torch.tensor([0, 1, 1]))
    assert images.shape == (3, 3, size, size) and images.abs().max() <= 1
    assert generator_channels(64, 32) == [256, 128, 64, 32, 16]
    critic = DCCritic(size, 8, n_classes=2)
    assert critic(images, torch.tensor([0, 1, 1])).shape == (3, 1)
    with pytest.raises(ValueError, match="labels"):
        critic(images)


@pytest.mark.parametrize(
    "penalty, conditioning, loss",
    [("r1", "none", "hinge"), ("gp", "projection", "wgan"), ("gp", "none", "hinge")],
)
def test_a_cwgan_step_runs_with_every_penalty_and_critic(penalty, conditioning, loss):
    """The in-place activations under each penalty's double backward and the projection
    critic (random images: whether the step runs does not depend on what they show)."""
    options = CWGANOptions(
        architecture="dcgan",
        image_size=32,
        width=4,
        z_dim=8,
        batch_size=4,
        n_critic=2,
        loss=loss,
        penalty=penalty,
        critic_conditioning=conditioning,
        diffaugment="color,translation,cutout",
    )
    classifier = build_classifier(
        RealClassifierOptions(image_size=32, width=4, blocks_1=1, blocks_2=1, blocks_3=1), 2
    )
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = CWGANModel(options, 2, classifier, torch.arange(2), torch.device("cpu"), rng)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    model.sampler = ImageSampler(images, torch.device("cpu"))
    model.balanced = BalancedRows(np.arange(8) % 2, 2)
    for _ in range(2):
        losses = model.train_iteration()
    assert all(torch.isfinite(torch.as_tensor(v)) for v in losses.values())
    assert float(losses["gp"]) > 0


def test_minibatch_std_sees_a_collapsed_batch():
    from hemaflow.models.dcgan import _group_std

    torch.manual_seed(0)
    varied = torch.randn(8, 6, 4, 4)
    collapsed = varied[:1].expand(8, 6, 4, 4)
    assert _group_std(collapsed, 4).max() < 1e-3 < _group_std(varied, 4).min()
    # 6 rows in groups of at most 4: groups of 3
    assert _group_std(torch.randn(6, 2, 4, 4), 4).shape == (6, 1, 4, 4)
    critic = DCCritic(image_size=32, width=4, minibatch_std=4)
    assert critic(torch.randn(5, 3, 32, 32)).shape == (5, 1)
    with pytest.raises(ValueError, match="minibatch_std"):
        DCCritic(image_size=32, width=4, minibatch_std=1)
