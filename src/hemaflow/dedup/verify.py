"""Second look at perceptual-hash candidates: shift-tolerant correlation of thumbnails.

On centred single-cell crops the 64-bit DCT hash is dominated by the dark nucleus in the
middle, so different cells of similar shape land a few bits apart. The same cell imaged
twice also shares its surroundings (the red cells around it), which a pixel correlation
sees and the hash does not. The best Pearson correlation over small shifts (the same cell
re-centred by a few pixels) separates the two cleanly on the shared data
(bench/near_dup_threshold.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

THUMB_SIZE = 32
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def gray_thumbnails(images: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, size, size) float32 luma, box-filtered."""
    out = np.empty((len(images), size, size), dtype=np.float32)
    for k, image in enumerate(images):
        small = Image.fromarray(np.ascontiguousarray(image)).resize(
            (size, size), Image.Resampling.BOX
        )
        out[k] = np.asarray(small, dtype=np.float32) @ _LUMA
    return out


def shift_correlation(
    first: np.ndarray, second: np.ndarray, max_shift: int = 2, batch: int = 4096
) -> np.ndarray:
    """Best Pearson correlation of thumbnail pairs over shifts of up to ``max_shift``
    pixels in x and y, over the overlapping region. Shapes (P, n, n) -> (P,)."""
    if len(first) != len(second):
        raise ValueError("first and second must hold the same number of thumbnails")
    best = np.full(len(first), -1.0, dtype=np.float32)
    n = first.shape[-1]
    for start in range(0, len(first), batch):
        a_all = first[start : start + batch]
        b_all = second[start : start + batch]
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                a = a_all[:, max(0, dy) : n + min(0, dy), max(0, dx) : n + min(0, dx)]
                b = b_all[:, max(0, -dy) : n + min(0, -dy), max(0, -dx) : n + min(0, -dx)]
                a = a - a.mean(axis=(1, 2), keepdims=True)
                b = b - b.mean(axis=(1, 2), keepdims=True)
                numerator = (a * b).sum(axis=(1, 2))
                denominator = np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))
                with np.errstate(invalid="ignore", divide="ignore"):
                    corr = np.where(denominator > 1e-6, numerator / denominator, 0.0)
                np.maximum(best[start : start + batch], corr, out=best[start : start + batch])
    return best
