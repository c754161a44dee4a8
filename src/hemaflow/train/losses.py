"""Adversarial losses: Wasserstein with gradient penalty (WGAN-GP) and least squares.

A patch critic returns a map of scores; a sample's critic value is the mean of its map,
so the Wasserstein estimate and the Lipschitz constraint of the gradient penalty both
apply to that per-sample mean."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

GAN_MODES = ("wgangp", "lsgan")


def sample_scores(scores: torch.Tensor) -> torch.Tensor:
    """One critic value per sample: the mean over every non-batch dimension."""
    return scores.reshape(scores.shape[0], -1).mean(dim=1)


def wgan_gp_critic_loss(scores_real: torch.Tensor, scores_fake: torch.Tensor) -> torch.Tensor:
    """E[D(fake)] - E[D(real)] (the negative Wasserstein estimate); add the gradient
    penalty separately."""
    return scores_fake.float().mean() - scores_real.float().mean()


def wgan_generator_loss(scores_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(fake)]."""
    return -scores_fake.float().mean()


def lsgan_critic_loss(scores_real: torch.Tensor, scores_fake: torch.Tensor) -> torch.Tensor:
    """CycleGAN's least-squares discriminator loss: 0.5 (MSE(D(real), 1) + MSE(D(fake), 0))."""
    scores_real, scores_fake = scores_real.float(), scores_fake.float()
    real = F.mse_loss(scores_real, torch.ones_like(scores_real))
    fake = F.mse_loss(scores_fake, torch.zeros_like(scores_fake))
    return 0.5 * (real + fake)


def lsgan_generator_loss(scores_fake: torch.Tensor) -> torch.Tensor:
    """MSE(D(fake), 1)."""
    scores_fake = scores_fake.float()
    return F.mse_loss(scores_fake, torch.ones_like(scores_fake))


def critic_loss(
    gan_mode: str, scores_real: torch.Tensor, scores_fake: torch.Tensor
) -> torch.Tensor:
    if gan_mode == "wgangp":
        return wgan_gp_critic_loss(scores_real, scores_fake)
    if gan_mode == "lsgan":
        return lsgan_critic_loss(scores_real, scores_fake)
    raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {gan_mode!r}")


def generator_adversarial_loss(gan_mode: str, scores_fake: torch.Tensor) -> torch.Tensor:
    if gan_mode == "wgangp":
        return wgan_generator_loss(scores_fake)
    if gan_mode == "lsgan":
        return lsgan_generator_loss(scores_fake)
    raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {gan_mode!r}")


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    lambda_gp: float = 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gulrajani et al. (2017): ``lambda_gp * E[(||grad_x D(x)||_2 - 1)^2]`` at random
    points ``x`` on the lines between real and fake samples, with the norm taken over each
    sample's flattened gradient. The graph is kept (``create_graph=True``) so that the
    penalty trains the critic. Computed in float32; call it outside autocast."""
    real = real.detach().float()
    fake = fake.detach().float()
    if real.shape != fake.shape:
        raise ValueError(
            f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ"
        )
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    alpha = torch.rand(shape, device=real.device, generator=generator)
    interpolates = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)
    scores = sample_scores(critic(interpolates).float())
    (gradients,) = torch.autograd.grad(outputs=scores.sum(), inputs=interpolates, create_graph=True)
    # the small constant keeps the norm differentiable where a gradient vanishes
    norms = torch.sqrt(gradients.reshape(gradients.shape[0], -1).pow(2).sum(dim=1) + 1e-12)
    return lambda_gp * (norms - 1.0).pow(2).mean()
