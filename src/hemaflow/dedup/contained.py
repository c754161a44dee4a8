"""Crops found inside frames: a cell crop that one lab cut from a frame that another
dataset holds whole.

The perceptual hash and the shift-tolerant correlation compare images at one scale, so a
crop never matches its frame. Here each crop's grey, contrast-normalised thumbnail is
matched as a template over each candidate frame at a few scales (normalised cross
correlation, computed with FFTs over every position at once); a best score of at least
``min_correlation`` makes the pair a ``contained_in`` relation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: frames are matched at this short side (pixels); templates are fractions of it
FRAME_SIDE = 64
#: crop side as a fraction of the frame's short side, geometric from 0.2 to 0.9
DEFAULT_SCALES = tuple(float(round(0.2 * 1.2**k, 4)) for k in range(9))
#: smallest template side (pixels): smaller ones match any blob
MIN_SIDE = 10
#: coarse scores this far below the threshold are still refined
COARSE_MARGIN = 0.12


@dataclass(frozen=True)
class Containment:
    crop: int  # index into the crops
    frame: int  # index into the frames
    correlation: float
    scale: float  # crop side / frame short side
    x: int  # top-left corner in the frame thumbnail
    y: int


def grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or (H, W) -> float32 luma."""
    array = np.asarray(image, dtype=np.float32)
    return array @ np.array([0.299, 0.587, 0.114], np.float32) if array.ndim == 3 else array


def frame_thumbnail(image: Image.Image | np.ndarray, side: int = FRAME_SIDE) -> np.ndarray:
    """A frame as grey float32 with its short side = ``side`` (aspect kept)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    width, height = image.size
    scale = side / min(width, height)
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    return grey(np.asarray(image.convert("RGB").resize(size, Image.Resampling.BOX)))


def _templates(crops: np.ndarray, side: int) -> np.ndarray:
    """(N, side, side) zero-mean, unit-norm grey templates of square crops."""
    out = np.empty((len(crops), side, side), np.float32)
    for k, crop in enumerate(crops):
        small = Image.fromarray(np.ascontiguousarray(crop)).resize(
            (side, side), Image.Resampling.BOX
        )
        out[k] = grey(np.asarray(small))
    out -= out.mean(axis=(1, 2), keepdims=True)
    norm = np.sqrt((out * out).sum(axis=(1, 2), keepdims=True))
    return out / np.maximum(norm, 1e-6)


def _window_energy(frame: np.ndarray, side: int) -> np.ndarray:
    """sqrt(sum f^2 - (sum f)^2 / n) over every side x side window (valid positions)."""
    padded = np.pad(frame.astype(np.float64), ((1, 0), (1, 0)))
    total = padded.cumsum(0).cumsum(1)
    squares = (padded**2).cumsum(0).cumsum(1)

    def box(table: np.ndarray) -> np.ndarray:
        return (
            table[side:, side:]
            - table[:-side, side:]
            - table[side:, :-side]
            + table[:-side, :-side]
        )

    n = side * side
    variance = box(squares) - box(total) ** 2 / n
    return np.sqrt(np.maximum(variance, 0.0)).astype(np.float32)


class _TemplateBank:
    """Template spectra per (scale, frame shape), computed once for all frames."""

    def __init__(self, crops: np.ndarray):
        self.crops = crops
        self.cache: dict[tuple[int, tuple[int, int]], np.ndarray] = {}

    def spectra(self, side: int, shape: tuple[int, int]) -> np.ndarray:
        key = (side, shape)
        if key not in self.cache:
            templates = _templates(self.crops, side)
            self.cache[key] = np.fft.rfft2(templates[:, ::-1, ::-1], s=shape)
        return self.cache[key]


def best_matches(
    crops: np.ndarray | _TemplateBank,
    frame: np.ndarray,
    scales: tuple[float, ...] = DEFAULT_SCALES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best normalised cross-correlation of every crop over one frame thumbnail, over
    positions and scales: (correlation, scale, x, y), each (N,)."""
    bank = crops if isinstance(crops, _TemplateBank) else _TemplateBank(crops)
    n = len(bank.crops)
    best = np.full(n, -1.0, np.float32)
    best_scale = np.zeros(n, np.float32)
    best_x = np.zeros(n, np.int64)
    best_y = np.zeros(n, np.int64)
    height, width = frame.shape
    spectrum = np.fft.rfft2(frame, s=frame.shape)
    for scale in scales:
        side = int(round(scale * min(height, width)))
        if side < MIN_SIDE or side > min(height, width):
            continue
        # correlation = convolution with the flipped template; valid part only
        full = np.fft.irfft2(bank.spectra(side, frame.shape) * spectrum[None], s=frame.shape)
        valid = full[:, side - 1 :, side - 1 :]
        energy = _window_energy(frame, side)
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.where(energy > 1e-3, valid / energy, 0.0)
        flat = score.reshape(n, -1)
        where = flat.argmax(axis=1)
        value = flat[np.arange(n), where]
        better = value > best
        best[better] = value[better]
        best_scale[better] = scale
        best_y[better] = where[better] // score.shape[2]
        best_x[better] = where[better] % score.shape[2]
    return best, best_scale, best_x, best_y


def contained_pairs(
    crops: np.ndarray,
    frames: list[Image.Image | np.ndarray],
    min_correlation: float,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    candidates: int = 2,
) -> list[Containment]:
    """Every crop whose best frame reaches ``min_correlation``: a coarse search of all
    frames at ``FRAME_SIDE``, then the ``candidates`` best frames per crop again at twice
    the resolution around the coarse scale. ``crops`` (N, S, S, 3) uint8."""
    if not len(crops) or not frames:
        return []
    bank = _TemplateBank(crops)
    coarse = np.full((len(frames), len(crops)), -1.0, np.float32)
    coarse_scale = np.zeros((len(frames), len(crops)), np.float32)
    for index, frame in enumerate(frames):
        coarse[index], coarse_scale[index], _, _ = best_matches(
            bank, frame_thumbnail(frame), scales
        )
    fine_frames: dict[int, np.ndarray] = {}
    found = []
    for crop in range(len(crops)):
        order = np.argsort(-coarse[:, crop])[:candidates]
        best: Containment | None = None
        for index in order:
            if coarse[index, crop] < min_correlation - COARSE_MARGIN:
                break
            if index not in fine_frames:
                fine_frames[index] = frame_thumbnail(frames[index], 2 * FRAME_SIDE)
            around = tuple(coarse_scale[index, crop] * f for f in (0.9, 0.95, 1.0, 1.05, 1.1))
            value, scale, x, y = best_matches(crops[crop : crop + 1], fine_frames[index], around)
            if value[0] >= min_correlation and (best is None or value[0] > best.correlation):
                best = Containment(
                    crop, int(index), float(value[0]), float(scale[0]), int(x[0]), int(y[0])
                )
        if best is not None:
            found.append(best)
    return found
