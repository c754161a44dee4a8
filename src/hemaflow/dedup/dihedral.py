"""Near duplicates up to a flip, a 90-degree rotation or a colour tint.

Augmented copies of one frame (``<CLASS>_original_<n>.jpg_<uuid>.jpg``: flips, rotations,
tints) defeat a hash of the image as it lies. Each image is hashed in its eight dihedral
orientations on a grey, contrast-normalised thumbnail (the tint then changes little);
the identity hashes are searched against every other orientation's hashes, and each
candidate is verified by correlating the thumbnails with one of them turned the same way.

Six searches cover the group: the identity needs none (the ordinary search), and a
rotation by 270 degrees finds the same pairs as one by 90 degrees, the other way round.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hemaflow.dedup.hamming_search import near_pairs
from hemaflow.dedup.phash import HASH_SIZE
from hemaflow.dedup.verify import shift_correlation

Transform = Callable[[np.ndarray], np.ndarray]

#: name -> the transform of (..., H, W) arrays; the identity first.
DIHEDRAL: dict[str, Transform] = {
    "identity": lambda x: x,
    "flip_lr": lambda x: x[..., :, ::-1],
    "flip_ud": lambda x: x[..., ::-1, :],
    "rot180": lambda x: x[..., ::-1, ::-1],
    "transpose": lambda x: np.swapaxes(x, -1, -2),
    "antitranspose": lambda x: np.swapaxes(x, -1, -2)[..., ::-1, ::-1],
    "rot90": lambda x: np.rot90(x, 1, axes=(-2, -1)),
    "rot270": lambda x: np.rot90(x, -1, axes=(-2, -1)),
}
#: the orientations searched against the identity (rot270 is rot90 read backwards)
SEARCHED = ("flip_lr", "flip_ud", "rot180", "transpose", "antitranspose", "rot90")

_BIT_WEIGHTS = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def _dct_matrix(n: int, keep: int) -> np.ndarray:
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


def contrast_normalised(thumbnails: np.ndarray) -> np.ndarray:
    """(N, S, S) grey -> zero mean, unit standard deviation per image (a tint or an
    exposure change becomes nearly nothing)."""
    centred = thumbnails - thumbnails.mean(axis=(1, 2), keepdims=True)
    spread = centred.std(axis=(1, 2), keepdims=True)
    return (centred / np.maximum(spread, 1e-6)).astype(np.float32)


def dihedral_hashes(thumbnails: np.ndarray) -> dict[str, np.ndarray]:
    """name -> (N,) uint64 DCT hash of each thumbnail turned that way (the 8x8 lowest
    frequencies thresholded at their median, as :func:`hemaflow.dedup.phash.phash`)."""
    normalised = contrast_normalised(np.asarray(thumbnails, dtype=np.float32))
    dct = _dct_matrix(normalised.shape[-1], HASH_SIZE)
    hashes = {}
    for name, turn in DIHEDRAL.items():
        low = dct @ np.ascontiguousarray(turn(normalised)).astype(np.float64) @ dct.T
        flat = low.reshape(len(low), -1)
        bits = flat > np.median(flat, axis=1, keepdims=True)
        hashes[name] = np.bitwise_or.reduce(np.where(bits, _BIT_WEIGHTS, np.uint64(0)), axis=1)
    return hashes


def dihedral_pairs(
    hashes: dict[str, np.ndarray], max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, distance, orientation name) with image i's identity hash within
    ``max_distance`` of image j's hash in that orientation, i != j; each pair of images
    and orientation once (orientation = how j is turned to look like i)."""
    identity = hashes["identity"]
    n = len(identity)
    lefts, rights, distances, names = [], [], [], []
    for name in SEARCHED:
        left, right, distance = near_pairs(np.concatenate([identity, hashes[name]]), max_distance)
        cross = (left < n) & (right >= n) & (right - n != left)
        lefts.append(left[cross])
        rights.append(right[cross] - n)
        distances.append(distance[cross])
        names.append(np.full(int(cross.sum()), name, dtype=object))
    if not lefts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=object)
    return (
        np.concatenate(lefts),
        np.concatenate(rights),
        np.concatenate(distances),
        np.concatenate(names),
    )


def oriented_correlation(
    thumbnails: np.ndarray, left: np.ndarray, right: np.ndarray, names: np.ndarray
) -> np.ndarray:
    """Shift-tolerant correlation of thumbnail ``left`` with ``right`` turned by its
    orientation name."""
    correlation = np.full(len(left), -1.0, dtype=np.float32)
    for name in np.unique(names) if len(names) else []:
        rows = np.flatnonzero(names == name)
        turned = np.ascontiguousarray(DIHEDRAL[name](thumbnails[right[rows]]))
        correlation[rows] = shift_correlation(thumbnails[left[rows]], turned)
    return correlation
