"""64-bit DCT perceptual hash (the pHash of Zauner 2010, as in the imagehash package)."""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIZE = 8
HIGHFREQ_FACTOR = 4
_BIT_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the orthonormal DCT-II matrix of size n."""
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


_SIDE = HASH_SIZE * HIGHFREQ_FACTOR
_DCT = _dct_rows(_SIDE, HASH_SIZE)
_MID = HASH_SIZE * HASH_SIZE // 2


def phash(image: Image.Image | np.ndarray) -> np.uint64:
    """Hash of an RGB image: grayscale, 32x32 (box filter: an exact mean over blocks when
    the image is a multiple of 32), 2-D DCT, the 8x8 lowest frequencies thresholded at
    their median. Robust to resizing and recompression."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    gray = image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float64)
    low = _DCT @ pixels @ _DCT.T
    # the median of the coefficients as np.median computes it (an even count: the mean
    # of the two middle values), without its overhead
    middle = np.partition(low, (_MID - 1, _MID), axis=None)[_MID - 1 : _MID + 1]
    bits = (low > (middle[0] + middle[1]) / 2).ravel()
    return np.uint64(np.bitwise_or.reduce(_BIT_WEIGHTS[bits])) if bits.any() else np.uint64(0)


def hamming(a: int | np.uint64, b: int | np.uint64) -> int:
    return int(np.bitwise_count(np.uint64(a) ^ np.uint64(b)))
