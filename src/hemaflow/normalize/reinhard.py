"""Reinhard et al. (2001) colour transfer in CIELAB: the classic stain-normalization
baseline. Each source image's per-channel LAB mean and standard deviation are matched to
those of the target domain (over all its pixels).

The colour conversions are plain numpy (sRGB with the D65 white point, IEC 61966-2-1
transfer curve), exact inverses of each other up to float64 rounding."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

# linear sRGB -> CIE XYZ, D65 (IEC 61966-2-1); the inverse is computed, not rounded
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0
_CHUNK = 256  # images per block: bounds the float64 working memory


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, None)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


def _f(t: np.ndarray) -> np.ndarray:
    return np.where(t > _DELTA**3, np.cbrt(t), t / (3.0 * _DELTA**2) + 4.0 / 29.0)


def _f_inverse(t: np.ndarray) -> np.ndarray:
    return np.where(t > _DELTA, t**3, 3.0 * _DELTA**2 * (t - 4.0 / 29.0))


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 (or float in [0, 1]) sRGB, channels last -> float64 CIELAB (L in [0, 100])."""
    rgb = np.asarray(rgb)
    values = rgb / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    xyz = _srgb_to_linear(values) @ _RGB_TO_XYZ.T / D65_WHITE
    fx, fy, fz = (_f(xyz[..., k]) for k in range(3))
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB, channels last -> float64 sRGB in [0, 1] (out-of-gamut colours clipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    xyz = np.stack([_f_inverse(fx), _f_inverse(fy), _f_inverse(fz)], axis=-1) * D65_WHITE
    return np.clip(_linear_to_srgb(xyz @ _XYZ_TO_RGB.T), 0.0, 1.0)


def lab_to_uint8(lab: np.ndarray) -> np.ndarray:
    return np.rint(lab_to_rgb(lab) * 255.0).astype(np.uint8)


def _chunks(images: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(images), _CHUNK):
        yield start, np.asarray(images[start : start + _CHUNK])


def _check_images(images: np.ndarray, name: str) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{name}: expected uint8 images of shape (N, H, W, 3), "
            f"got {images.dtype} {images.shape}"
        )
    return images


class ReinhardNormalizer:
    """``fit`` learns the target's LAB mean and standard deviation per channel over all
    pixels of all target images; ``transform`` shifts and scales each source image's LAB
    channels so that its own mean and standard deviation become the target's."""

    name = "reinhard"

    def __init__(self, target_mean: np.ndarray | None = None, target_std: np.ndarray | None = None):
        self.target_mean = None if target_mean is None else np.asarray(target_mean, np.float64)
        self.target_std = None if target_std is None else np.asarray(target_std, np.float64)

    def fit(self, target_images: np.ndarray) -> ReinhardNormalizer:
        target_images = _check_images(target_images, "ReinhardNormalizer.fit")
        if len(target_images) == 0:
            raise ValueError("ReinhardNormalizer.fit: no target images")
        total = np.zeros(3)
        total_sq = np.zeros(3)
        count = 0
        for _, chunk in _chunks(target_images):
            lab = rgb_to_lab(chunk).reshape(-1, 3)
            total += lab.sum(axis=0)
            total_sq += np.square(lab).sum(axis=0)
            count += len(lab)
        self.target_mean = total / count
        self.target_std = np.sqrt(np.maximum(total_sq / count - self.target_mean**2, 0.0))
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        if self.target_mean is None or self.target_std is None:
            raise ValueError("ReinhardNormalizer.transform: call fit() or from_dict() first")
        images = _check_images(np.asarray(images), "ReinhardNormalizer.transform")
        out = np.empty_like(images)
        for start, chunk in _chunks(images):
            lab = rgb_to_lab(chunk)
            mean = lab.mean(axis=(1, 2), keepdims=True)
            std = lab.std(axis=(1, 2), keepdims=True)
            # a flat channel (a blank image) is only shifted, never divided by ~0
            scale = np.where(std > 1e-6, self.target_std / np.maximum(std, 1e-6), 1.0)
            lab = (lab - mean) * scale + self.target_mean
            lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
            out[start : start + len(chunk)] = lab_to_uint8(lab)
        return out

    def to_dict(self) -> dict[str, Any]:
        if self.target_mean is None or self.target_std is None:
            raise ValueError("ReinhardNormalizer.to_dict: not fitted")
        return {
            "method": self.name,
            "colour_space": "CIELAB (sRGB, D65)",
            "target_mean": [float(v) for v in self.target_mean],
            "target_std": [float(v) for v in self.target_std],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ReinhardNormalizer:
        if values.get("method") != cls.name:
            raise ValueError(f"not Reinhard statistics: method {values.get('method')!r}")
        stats = {}
        for key in ("target_mean", "target_std"):
            stat = values.get(key)
            if (
                not isinstance(stat, list | tuple)
                or len(stat) != 3
                or not all(isinstance(v, int | float) and math.isfinite(v) for v in stat)
            ):
                raise ValueError(
                    f"Reinhard statistics '{key}': expected 3 finite numbers, got {stat!r}"
                )
            stats[key] = np.asarray(stat, np.float64)
        if np.any(stats["target_std"] < 0):
            raise ValueError(
                f"Reinhard statistics 'target_std': negative value in {values['target_std']}"
            )
        return cls(stats["target_mean"], stats["target_std"])
