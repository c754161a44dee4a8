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


def hinge_critic_loss(scores_real: torch.Tensor, scores_fake: torch.Tensor) -> torch.Tensor:
    """E[relu(1 - D(real))] + E[relu(1 + D(fake))] (the generator's loss stays -E[D(fake)])."""
    return F.relu(1.0 - scores_real.float()).mean() + F.relu(1.0 + scores_fake.float()).mean()


def r1_penalty(scores_real: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mescheder et al. (2018): ``gamma / 2 * E[||grad_x D(x_real)||^2]``, the zero-centred
    penalty on real images only. ``real`` must require grad and ``scores_real`` be computed
    from it; the graph is kept so that the penalty trains the critic."""
    (gradients,) = torch.autograd.grad(
        outputs=scores_real.float().sum(), inputs=real, create_graph=True
    )
    return 0.5 * gamma * gradients.reshape(gradients.shape[0], -1).pow(2).sum(dim=1).mean()


_MS_EPS = 1e-5  # MSGAN's epsilon in 1 / (lz + eps)


def mode_seeking_loss(
    fake_1: torch.Tensor, fake_2: torch.Tensor, z_1: torch.Tensor, z_2: torch.Tensor
) -> torch.Tensor:
    """MSGAN (Mao et al. 2019): 1 / (lz + eps), lz = mean|G(c,z1) - G(c,z2)| /
    mean|z1 - z2|; minimising it maximises the images' distance per unit of noise, against
    a conditional generator that draws one image per condition whatever its noise."""
    lz = (fake_1.float() - fake_2.float()).abs().mean() / (z_1.float() - z_2.float()).abs().mean()
    return 1.0 / (lz + _MS_EPS)


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


# luma weights (ITU-R BT.601) of RGB in [-1, 1]
_LUMA = (0.299, 0.587, 0.114)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(1, 1, size, size).contiguous()


STRUCTURE_MODES = ("structure", "contrast_structure")
STRUCTURE_CHANNELS = ("luma", "rgb")


def structure_loss(
    source: torch.Tensor,
    translated: torch.Tensor,
    window: int = 7,
    sigma: float = 1.5,
    mode: str = "structure",
    channels: str = "luma",
) -> torch.Tensor:
    """1 - mean structure term of SSIM (the local correlation of luminance) between
    ``source`` and ``translated`` (NCHW, RGB in [-1, 1]). The term ignores local means and
    contrasts, so a change of stain colour, brightness or contrast costs nothing, while
    moving, adding or removing edges does: the structure-preserving constraint of
    stain-translation GANs, which keeps the source's cells in place. 0 for images whose
    luminance differs by a local affine map with positive slope; at most 2.

    The structure term is blind where the source is flat (its local variance near 0):
    any texture drawn into a flat nucleus or background costs nothing, which a CycleGAN
    uses to hide a code there. ``mode="contrast_structure"`` multiplies in SSIM's contrast
    term ``(2 sx sy + C2) / (sx^2 + sy^2 + C2)``, which charges for contrast added to (or
    removed from) a region, still ignoring the local mean: colour and brightness stay free.

    Luminance alone is blind to an isoluminant code (a red-green patch of the brightness
    around it), which is what the CycleGAN drew on the shared data. ``channels="rgb"``
    takes the term per colour channel and averages: a stain change, locally an affine map
    of each channel, still costs nothing, a chromatic code does."""
    if mode not in STRUCTURE_MODES:
        raise ValueError(f"structure_loss: mode must be one of {STRUCTURE_MODES}, got {mode!r}")
    if channels not in STRUCTURE_CHANNELS:
        raise ValueError(
            f"structure_loss: channels must be one of {STRUCTURE_CHANNELS}, got {channels!r}"
        )
    x = (source.float() + 1) * 0.5
    y = (translated.float() + 1) * 0.5
    if channels == "luma":
        weights = torch.tensor(_LUMA, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        x = (x * weights).sum(dim=1, keepdim=True)
        y = (y * weights).sum(dim=1, keepdim=True)
    groups = x.shape[1]
    w = _gaussian_window(window, sigma, x.device, x.dtype).repeat(groups, 1, 1, 1)
    pad = window // 2
    x = F.pad(x, (pad,) * 4, mode="reflect")
    y = F.pad(y, (pad,) * 4, mode="reflect")

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=groups)

    mu_x, mu_y = blur(x), blur(y)
    var_x = (blur(x * x) - mu_x**2).clamp_min(0)
    var_y = (blur(y * y) - mu_y**2).clamp_min(0)
    cov = blur(x * y) - mu_x * mu_y
    c2 = 0.03**2  # SSIM's C2, for luminance in [0, 1]
    c3 = c2 / 2
    sd_xy = torch.sqrt(var_x * var_y + 1e-12)
    s = (cov + c3) / (sd_xy + c3)
    if mode == "contrast_structure":
        s = s * (2 * sd_xy + c2) / (var_x + var_y + c2)
    return 1 - s.mean()
