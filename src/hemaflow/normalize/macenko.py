"""Macenko et al. (2009) stain normalization: the classic stain-vector method, the second
classical baseline beside Reinhard's colour transfer.

Each image's optical density (OD) is decomposed into two stain vectors and their
concentrations: the stain plane is the plane of the two largest principal axes of the
OD of the stained pixels; the two stains are the directions at the 1st and 99th
percentiles of the angle in that plane. Normalization keeps each pixel's concentrations,
rescaled so that their 99th percentile matches the target's, and re-colours them with
the target's stain vectors. For Romanowsky stains the two vectors are the basic dye
(azure / methylene blue: nuclei) and the acidic one (eosin: red cells, granules).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

BACKGROUND = 255.0
OD_THRESHOLD = 0.15  # pixels with less OD in any channel are background
ANGLE_PERCENTILE = 1.0
CONCENTRATION_PERCENTILE = 99.0
_MIN_STAINED = 16  # fewer stained pixels than this: the image is left as it is


def optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log((np.asarray(rgb, np.float64) + 1.0) / BACKGROUND)


def stain_vectors(od: np.ndarray) -> np.ndarray | None:
    """The two stain vectors (rows, unit length; the bluer, nuclear stain first) of the
    stained pixels of ``od`` (N, 3); None when too few pixels are stained."""
    stained = od[(od > OD_THRESHOLD).all(axis=1)]
    if len(stained) < _MIN_STAINED:
        return None
    _, vectors = np.linalg.eigh(np.cov(stained.T))
    plane = vectors[:, 1:3]  # the two largest axes
    projected = stained @ plane
    angle = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angle, [ANGLE_PERCENTILE, 100.0 - ANGLE_PERCENTILE])
    first = plane @ np.array([np.cos(low), np.sin(low)])
    second = plane @ np.array([np.cos(high), np.sin(high)])
    pair = np.stack([first, second])
    pair *= np.sign(pair.sum(axis=1, keepdims=True) + 1e-12)  # OD vectors are positive
    pair /= np.linalg.norm(pair, axis=1, keepdims=True)
    # the nuclear (basic) dye first: the one that dominates the densest pixels, nuclei.
    # (H&E's "more red OD" rule fails on Tecom's rapid stain, whose nuclei are maroon.)
    densest = stained[stained.sum(axis=1) >= np.percentile(stained.sum(axis=1), 98.0)]
    amounts = concentrations(densest, pair).mean(axis=0)
    if amounts[1] > amounts[0]:
        pair = pair[::-1]
    return np.ascontiguousarray(pair)


def concentrations(od: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations (N, 2) of OD pixels (N, 3)."""
    solution, *_ = np.linalg.lstsq(vectors.T, od.T, rcond=None)
    return solution.T


class MacenkoNormalizer:
    """``fit`` learns the target's stain vectors and 99th-percentile concentrations
    from a sample of its pixels; ``transform`` normalizes each image on its own."""

    name = "macenko"

    def __init__(self, vectors: np.ndarray | None = None, max_concentration: Any = None):
        self.vectors = None if vectors is None else np.asarray(vectors, np.float64)
        self.max_concentration = (
            None if max_concentration is None else np.asarray(max_concentration, np.float64)
        )

    def fit(self, target_images: np.ndarray, max_pixels: int = 2_000_000) -> MacenkoNormalizer:
        images = np.asarray(target_images)
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise ValueError(
                f"MacenkoNormalizer.fit: expected (N, H, W, 3) images, got {images.shape}"
            )
        pixels = images.reshape(-1, 3)
        if len(pixels) > max_pixels:
            picks = np.random.default_rng(0).choice(len(pixels), max_pixels, replace=False)
            pixels = pixels[picks]
        od = optical_density(pixels)
        vectors = stain_vectors(od)
        if vectors is None:
            raise ValueError("MacenkoNormalizer.fit: the target images have no stained pixels")
        self.vectors = vectors
        self.max_concentration = np.percentile(
            concentrations(od, vectors), CONCENTRATION_PERCENTILE, axis=0
        )
        return self

    def transform_image(
        self, image: np.ndarray, source_vectors: np.ndarray | None = None
    ) -> np.ndarray:
        """One image, on its own stain vectors. ``source_vectors``: its lab's stain
        vectors in order (nuclear first), which tell which of the image's two vectors is
        which; without them the image's own densest pixels decide."""
        if self.vectors is None:
            raise RuntimeError("MacenkoNormalizer: fit or load the target first")
        od = optical_density(image.reshape(-1, 3))
        vectors = stain_vectors(od)
        if vectors is None:
            return np.asarray(image, np.uint8).copy()
        if source_vectors is not None:
            kept = (vectors * source_vectors).sum()
            swapped = (vectors[::-1] * source_vectors).sum()
            if swapped > kept:
                vectors = np.ascontiguousarray(vectors[::-1])
        amounts = concentrations(od, vectors)
        source_max = np.percentile(amounts, CONCENTRATION_PERCENTILE, axis=0)
        amounts *= self.max_concentration / np.maximum(source_max, 1e-6)
        rgb = BACKGROUND * np.exp(-amounts @ self.vectors) - 1.0
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(image.shape)

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Images of ONE lab: the lab's stain vectors (from all its pixels, where the
        nuclei are reliably the densest) order each image's own two vectors, which a
        single image's densest pixels (overlapping red cells, granules) can get wrong."""
        images = np.asarray(images)
        if not len(images):
            return images
        source = MacenkoNormalizer()
        try:
            source.fit(images)
            source_vectors = source.vectors
        except ValueError:
            source_vectors = None
        return np.stack([self.transform_image(image, source_vectors) for image in images])

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "vectors": np.asarray(self.vectors).tolist(),
            "max_concentration": np.asarray(self.max_concentration).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MacenkoNormalizer:
        return cls(data["vectors"], data["max_concentration"])
