"""Stain-and-colour augmentation for classifier training: what another lab's stain,
lamp, camera and focus do to an image, drawn at random per image.

At ``strength`` s (1 is the default level, 0 the identity):

- **stain** (Tellez et al. 2018, "HED" augmentation): the optical density of each pixel
  is unmixed into haematoxylin, eosin and a residual channel (Ruifrok & Johnston's
  matrix); each channel is scaled by U(1 - 0.3 s, 1 + 0.3 s) and shifted by
  U(-0.05 s, 0.05 s), and mixed back. Romanowsky stains (Giemsa, May-Grünwald, Wright)
  are not H&E, but their two dyes, one basic (azure / methylene blue, on nuclei) and one
  acidic (eosin, on red cells and granules), lie close to these axes, and a random
  rescaling of each is what differs between labs;
- **colour**: brightness x U(1 - 0.2 s, 1 + 0.2 s), contrast x U(1 - 0.3 s, 1 + 0.3 s),
  saturation x U(1 - 0.5 s, 1 + 0.5 s), hue rotated by up to 0.08 s of a turn;
- **focus**: a Gaussian blur of sigma U(0, 1.2 s) pixels (at 64 px), half the images.

``scale_augment`` (a separate option, strength z) zooms each image by a factor drawn
log-uniformly from [1 / (1 + z), 1 + z] about its centre and shifts it by up to 0.05 z of
its side, with reflected borders: what another lab's magnification, camera and cell crop
do to a cell's size in pixels.

Draws come from a numpy Generator, so a seeded run is reproducible (and resumes bit for
bit with the checkpointed generator).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB), as skimage's rgb2hed
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)

STAIN_SCALE = 0.3
STAIN_SHIFT = 0.05
BRIGHTNESS = 0.2
CONTRAST = 0.3
SATURATION = 0.5
HUE = 0.08
BLUR_SIGMA = 1.2
BLUR_PROBABILITY = 0.5
_LUMA = (0.299, 0.587, 0.114)
# the classifier's milder ``color_jitter``: brightness, contrast and saturation factors in
# [1 - s, 1 + s], hue rotated by up to this fraction of a turn (of the chroma plane of YIQ)
JITTER_BRIGHTNESS = 0.2
JITTER_CONTRAST = 0.2
JITTER_SATURATION = 0.2
JITTER_HUE = 0.02


def _hed_jitter(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x in [0, 1], NCHW; scale, shift (N, 3). Unmixing, rescaling and mixing back are
    one linear map of the optical density per image: ``od' = od A_n + b_n``."""
    n, _, h, w = x.shape
    rgb_from_hed = torch.as_tensor(_RGB_FROM_HED, dtype=x.dtype, device=x.device)
    hed_from_rgb = torch.as_tensor(_HED_FROM_RGB, dtype=x.dtype, device=x.device)
    # linear unmixing, no clipping in between, so that unit factors give the image back
    maps = hed_from_rgb.unsqueeze(0) * scale.unsqueeze(1)  # (N, 3, 3): H diag(s)
    maps = maps @ rgb_from_hed
    bias = (shift @ rgb_from_hed).unsqueeze(1)  # (N, 1, 3)
    density = torch.log(x.clamp_min(1e-6)) / _LOG_ADJUST  # 0 (white) .. 1 (opaque)
    density = density.permute(0, 2, 3, 1).reshape(n, h * w, 3)
    density = torch.baddbmm(bias, density, maps).clamp_min(0.0)
    out = torch.exp(density * _LOG_ADJUST).clamp(0.0, 1.0)
    return out.reshape(n, h, w, 3).permute(0, 3, 1, 2)


def _colour(
    x: torch.Tensor,
    factors: torch.Tensor,
    amounts: tuple[float, float, float, float] = (BRIGHTNESS, CONTRAST, SATURATION, HUE),
) -> torch.Tensor:
    """Brightness, contrast, saturation, hue of x in [0, 1], NCHW; factors (4, N) in
    [-1, 1] (times strength), scaled by ``amounts`` (the largest change of each)."""
    brightness, contrast, saturation, hue = amounts
    n = x.shape[0]
    f = factors.view(4, n, 1, 1, 1)
    luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x * (1.0 + brightness * f[0])).clamp(0.0, 1.0)
    mean = (x * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * (1.0 + contrast * f[1]) + mean).clamp(0.0, 1.0)
    gray = (x * luma).sum(dim=1, keepdim=True)
    x = ((x - gray) * (1.0 + saturation * f[2]) + gray).clamp(0.0, 1.0)
    angle = 2.0 * math.pi * hue * f[3]
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    i = 0.596 * r - 0.274 * g - 0.322 * b
    q = 0.211 * r - 0.523 * g + 0.312 * b
    cos, sin = torch.cos(angle), torch.sin(angle)
    i, q = i * cos - q * sin, i * sin + q * cos
    x = torch.cat(
        [y + 0.956 * i + 0.621 * q, y - 0.272 * i - 0.647 * q, y - 1.106 * i + 1.703 * q], dim=1
    )
    return x.clamp(0.0, 1.0)


def _blur(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image (0: unchanged), reflect padding; one
    grouped convolution per direction for the whole batch."""
    n, c, h, w = x.shape
    largest = float(np.max(sigmas)) if len(sigmas) else 0.0
    if largest <= 1e-3:
        return x
    radius = min(max(1, int(math.ceil(3.0 * largest))), min(h, w) // 2 - 1)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sigma = torch.as_tensor(np.maximum(sigmas, 1e-3), dtype=x.dtype, device=x.device)
    kernels = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)  # sigma ~0: a unit impulse
    kernels = kernels.repeat_interleave(c, dim=0)  # (N * C, taps)
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="reflect"),
        kernels.view(n * c, 1, 1, -1),
        groups=n * c,
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="reflect"),
        kernels.view(n * c, 1, -1, 1),
        groups=n * c,
    )
    return flat.view(n, c, h, w)


def stain_augment(batch: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """Random stain, colour and focus changes per image of a [-1, 1] NCHW batch.

    ``strength`` 0 returns the batch itself; the draws always consume the same number of
    values from ``rng`` for a given batch size, whatever the strength."""
    n = batch.shape[0]
    draws = rng.uniform(-1.0, 1.0, size=(10, n))
    blur_on = rng.random(n) < BLUR_PROBABILITY
    blur_u = rng.random(n)
    if strength <= 0.0:
        return batch
    s = float(strength)
    dtype = batch.dtype
    x = (batch.float() + 1.0) * 0.5
    scale = torch.from_numpy(1.0 + STAIN_SCALE * s * draws[0:3].T).float().to(x.device)
    shift = torch.from_numpy(STAIN_SHIFT * s * draws[3:6].T).float().to(x.device)
    x = _hed_jitter(x, scale, shift)
    x = _colour(x, torch.from_numpy(s * draws[6:10]).float().to(x.device))
    sigmas = np.where(blur_on, BLUR_SIGMA * s * blur_u, 0.0)
    x = _blur(x, sigmas)
    return (x * 2.0 - 1.0).to(dtype)


SCALE_SHIFT = 0.05


def scale_augment(batch: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """Random zoom (log-uniform in [1 / (1 + strength), 1 + strength]) and a shift of up to
    ``SCALE_SHIFT * strength`` of the side per image of an NCHW batch, bilinear, reflected
    borders. ``strength`` 0 returns the batch itself; the draws always consume the same
    number of values from ``rng`` for a given batch size."""
    n = batch.shape[0]
    draws = rng.uniform(-1.0, 1.0, size=(3, n))
    if strength <= 0.0:
        return batch
    s = float(strength)
    zoom = np.exp(draws[0] * math.log1p(s))
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom
    # affine_grid's coordinates span [-1, 1]: a shift of f of the side is 2 f
    theta[:, :, 2] = 2.0 * SCALE_SHIFT * s * draws[1:3].T
    grid = F.affine_grid(
        torch.from_numpy(theta).to(batch.device), list(batch.shape), align_corners=False
    )
    out = F.grid_sample(
        batch.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    return out.to(batch.dtype)


def grayscale_augment(
    batch: torch.Tensor, rng: np.random.Generator, probability: float
) -> torch.Tensor:
    """Each image of an NCHW batch replaced by its luma (in all three channels) with
    ``probability``: the classifier must then tell the classes apart by shape and
    texture as well as by colour. Always draws one value per image."""
    chosen = rng.random(batch.shape[0]) < probability
    if not chosen.any():
        return batch
    weights = torch.tensor(_LUMA, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    luma = (batch * weights).sum(dim=1, keepdim=True).expand_as(batch)
    mask = torch.from_numpy(chosen).to(batch.device).view(-1, 1, 1, 1)
    return torch.where(mask, luma, batch)


def color_jitter(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue per image of a [-1, 1] NCHW batch
    (the ``JITTER_*`` amounts, factors from ``rng``); the result is clamped to [-1, 1]."""
    draws = rng.uniform(-1.0, 1.0, size=(4, batch.shape[0])).astype(np.float32)
    amounts = (JITTER_BRIGHTNESS, JITTER_CONTRAST, JITTER_SATURATION, JITTER_HUE)
    x = _colour((batch.float() + 1.0) * 0.5, torch.from_numpy(draws).to(batch.device), amounts)
    return (x * 2.0 - 1.0).to(batch.dtype)
