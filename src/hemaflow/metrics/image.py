"""Paired full-reference metrics for uint8 NHWC batches: SSIM and PSNR (per image)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

#: PSNR of identical images (MSE 0): +inf, as ``skimage.metrics.peak_signal_noise_ratio``.
PSNR_IDENTICAL = np.inf


def _pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 3:  # (N, H, W) grayscale
        a, b = a[..., None], b[..., None]
    if a.ndim != 4:
        raise ValueError(f"{what}: expected (N, H, W, C) batches, got shape {a.shape}")
    return a, b


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    *,
    data_range: float = 255.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    truncate: float = 3.5,
    batch_size: int = 64,
) -> np.ndarray:
    """Per-image SSIM of two (N, H, W, C) batches -> (N,) float64.

    Same as ``skimage.metrics.structural_similarity(x, y, channel_axis=-1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``:
    Gaussian-weighted local statistics (``scipy.ndimage.gaussian_filter``, ``truncate=3.5``
    -> 11x11 window, 'reflect' borders), ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``, the SSIM map
    cropped by the window radius (5 px) on each side, averaged, then averaged over channels."""
    a, b = _pair(a, b, "ssim")
    radius = int(truncate * sigma + 0.5)
    if min(a.shape[1:3]) < 2 * radius + 1:
        raise ValueError(f"ssim: images must be at least {2 * radius + 1} px on each side")
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    out = np.empty(len(a), np.float64)

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=(0, sigma, sigma, 0), truncate=truncate, mode="reflect")

    for start in range(0, len(a), batch_size):
        x = a[start : start + batch_size].astype(np.float64)
        y = b[start : start + batch_size].astype(np.float64)
        ux, uy = blur(x), blur(y)
        vx = blur(x * x) - ux * ux
        vy = blur(y * y) - uy * uy
        vxy = blur(x * y) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        s = s[:, radius:-radius, radius:-radius, :]
        out[start : start + batch_size] = s.mean(axis=(1, 2, 3))
    return out


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0) -> np.ndarray:
    """Per-image PSNR ``10 log10(L^2 / MSE)`` in dB -> (N,) float64; ``+inf`` where the two
    images are identical (MSE 0), as skimage."""
    a, b = _pair(a, b, "psnr")
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff * diff).reshape(len(a), -1).mean(axis=1)
    out = np.full(len(a), PSNR_IDENTICAL, np.float64)
    positive = mse > 0
    out[positive] = 10 * np.log10(data_range**2 / mse[positive])
    return out
