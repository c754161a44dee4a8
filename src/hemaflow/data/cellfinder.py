"""Find the white cell in a stained blood-smear image, so that every lab's cells can be
cropped centred and at one scale.

White-cell nuclei take up the basic dye (haematoxylin, methylene blue, azure): they absorb
green far more than red or blue, whatever the lab's stain, while red cells and the
background absorb all three about alike. So ``stain = (R + B) / 2 - G`` is high on nuclei
(and on dense granules) and low elsewhere, in pbc's May-Grünwald-Giemsa, bccd's
Giemsa-like and Tecom's rapid stain alike. The finder thresholds it per image (Otsu, but
never below a fraction of the image's own nucleus level, so that red cells are not taken
when the nucleus is small), groups the stained pixels that lie within a few pixels of each
other (the lobes of a segmented nucleus), and keeps the group with the most stain above
the threshold. Its bounding box is
the cell's nucleus; the crop is centred on it.

A frame whose strongest component is faint (a blank field, a smear without a white cell)
has no cell: :func:`find_cell` returns None with the reason, and ingest quarantines it
instead of cropping at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

# The finder works on a copy whose longer side is this many pixels (~0.5 ms an image).
ANALYSIS_SIDE = 96
# The threshold is at least this fraction of the image's 99.5th stain percentile.
PEAK_FRACTION = 0.6
# Grouping radius, as a fraction of the longer side: joins the lobes of a nucleus.
CLOSING_FRACTION = 0.025
# A nucleus stands out by at least this much stain (0..255 scale) from the image's
# median, and covers at least this fraction of the analysed image.
MIN_CONTRAST = 20.0
MIN_AREA_FRACTION = 0.002


@dataclass(frozen=True)
class CellLocation:
    """The nucleus found, in the input image's pixels."""

    cx: float
    cy: float
    extent: float  # the longer side of the nucleus's bounding box
    contrast: float  # mean stain of the nucleus minus the image's median stain

    def square_box(self, side: float) -> tuple[int, int, int, int]:
        """A square of ``side`` pixels centred on the nucleus (may leave the frame)."""
        side = max(1, int(round(side)))
        x0 = int(round(self.cx - side / 2))
        y0 = int(round(self.cy - side / 2))
        return (x0, y0, x0 + side, y0 + side)


class NoCellFound(Exception):
    """No white cell in the image; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def stain_map(rgb: np.ndarray) -> np.ndarray:
    """Basic-dye uptake per pixel of an (H, W, 3) uint8 image, as float32."""
    pixels = rgb.astype(np.float32)
    return (pixels[..., 0] + pixels[..., 2]) * 0.5 - pixels[..., 1]


def _twice_stain(rgb: np.ndarray) -> np.ndarray:
    """``2 * stain_map(rgb)`` as exact integers (-510..510), int16: the finder's working
    form (integer arithmetic and one histogram instead of float maps and sorts)."""
    pixels = rgb.astype(np.int16)
    return pixels[..., 0] + pixels[..., 2] - 2 * pixels[..., 1]


def _otsu_of_counts(counts: np.ndarray) -> float:
    """Otsu's threshold from the 511 whole-unit bins of stain -255..255."""
    centres = np.arange(511, dtype=np.float64) - 255.0 + 0.5
    below = np.cumsum(counts)
    above = below[-1] - below
    sum_below = np.cumsum(counts * centres)
    mean_below = sum_below / np.maximum(below, 1)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(above, 1)
    return float(centres[np.argmax(below * above * (mean_below - mean_above) ** 2)])


def _order_statistic(cumulative: np.ndarray, rank: int) -> float:
    """The stain value at sorted position ``rank`` from the cumulative half-unit histogram
    (bin j holds the stain (j - 510) / 2)."""
    return (int(np.searchsorted(cumulative, rank, side="right")) - 510) / 2.0


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """A boolean mask dilated by a (2 radius + 1) square: ``ndimage.maximum_filter`` of
    it (whose reflected border adds nothing to a maximum), as shifted maxima along each
    axis, which costs a fraction of the filter's on images this small."""
    rows = mask.copy()
    for shift in range(1, radius + 1):
        rows[shift:] |= mask[:-shift]
        rows[:-shift] |= mask[shift:]
    grown = rows.copy()
    for shift in range(1, radius + 1):
        grown[:, shift:] |= rows[:, :-shift]
        grown[:, :-shift] |= rows[:, shift:]
    return grown


def find_cell(image: Image.Image | np.ndarray) -> CellLocation:
    """The white cell's nucleus in an RGB image; raises :class:`NoCellFound`."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    width, height = image.size
    # up to 1.5 x the analysis side the image is analysed as it is (no resize to pay for)
    scale = 1.0 if max(width, height) <= 1.5 * ANALYSIS_SIDE else ANALYSIS_SIDE / max(width, height)
    small = image.convert("RGB")
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = small.resize(size, Image.Resampling.BILINEAR)
    twice = _twice_stain(np.asarray(small))
    # one histogram of the exact half-unit stains gives the median, the 99.5th
    # percentile and Otsu's whole-unit histogram (a whole unit is two half units)
    half_counts = np.bincount((twice.ravel() + 510).astype(np.intp), minlength=1022)[:1022]
    cumulative = np.cumsum(half_counts)
    n = twice.size
    median = _order_statistic(cumulative, (n - 1) // 2)
    peak = _order_statistic(cumulative, int(round(0.995 * (n - 1))))
    threshold = max(_otsu_of_counts(half_counts.reshape(511, 2).sum(axis=1)), PEAK_FRACTION * peak)
    stain = twice.astype(np.float32) * 0.5
    mask = stain > threshold
    if not mask.any():
        raise NoCellFound("no stained object (flat image)")
    # grow the mask by a square (separable: cheap) so that the lobes of one nucleus fall
    # into one component; the component itself is the stained pixels it gathers
    radius = max(1, round(CLOSING_FRACTION * max(stain.shape)))
    grown = _grow(mask, radius)
    labels, count = ndimage.label(grown)
    # each group's stain above the threshold (the excess is zero off the mask)
    weight = np.bincount(labels[mask], weights=stain[mask] - threshold, minlength=count + 1)[1:]
    best = int(np.argmax(weight)) + 1
    # the component's pixels lie inside its group's bounding box: work on that window
    window = ndimage.find_objects(labels, max_label=best)[best - 1]
    component = (labels[window] == best) & mask[window]
    area_fraction = float(np.count_nonzero(component)) / mask.size
    contrast = float(stain[window][component].mean()) - median
    if contrast < MIN_CONTRAST:
        raise NoCellFound(
            f"strongest stained object is faint (contrast {contrast:.1f} < {MIN_CONTRAST:g})"
        )
    if area_fraction < MIN_AREA_FRACTION:
        raise NoCellFound(
            f"strongest stained object is a speck ({area_fraction:.4f} of the image "
            f"< {MIN_AREA_FRACTION:g})"
        )
    ys, xs = np.nonzero(component)
    ys, xs = ys + window[0].start, xs + window[1].start
    # back to input pixels: each analysed pixel covers 1/scale input pixels
    x0, x1 = xs.min() / scale, (xs.max() + 1) / scale
    y0, y1 = ys.min() / scale, (ys.max() + 1) / scale
    return CellLocation(
        cx=(x0 + x1) / 2,
        cy=(y0 + y1) / 2,
        extent=max(x1 - x0, y1 - y0),
        contrast=contrast,
    )


def reference_extent(extents: list[float] | np.ndarray) -> float:
    """A dataset's reference nucleus size: the median of its nuclei's extents. Crops of
    ``factor x reference`` pixels give every lab's median cell the same size in the
    crop, while cells keep their sizes relative to each other within a lab."""
    values = np.asarray(extents, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no nucleus found in the sample: cannot set the cell scale")
    return float(np.median(values))
