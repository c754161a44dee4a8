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

import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import sparse
from scipy.sparse import csgraph

# The finder works on a copy whose longer side is this many pixels (~0.15 ms an image
# in stacks of find_cells, ~0.5 ms alone).
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


def _twice_stain(rgb: np.ndarray, out: np.ndarray | None = None, work=None) -> np.ndarray:
    """``2 * stain_map(rgb)`` as exact integers (-510..510), int16: the finder's working
    form (integer arithmetic and one histogram instead of float maps and sorts). ``out``
    receives it; ``work`` (int16, of its shape) is scratch."""
    twice = np.add(rgb[..., 0], rgb[..., 2], dtype=np.int16, out=out)
    twice -= np.left_shift(rgb[..., 1], 1, dtype=np.int16, out=work)
    return twice


def _otsu_of_counts(counts: np.ndarray) -> np.ndarray:
    """Otsu's threshold from the 511 whole-unit bins of stain -255..255 along the last
    axis: one threshold per histogram (a 0-d array for one histogram)."""
    centres = np.arange(511, dtype=np.float64) - 255.0 + 0.5
    below = np.cumsum(counts, axis=-1)
    above = below[..., -1:] - below
    # the cumulative sums of counts x centres (half-integers) are exact in float64, and
    # so equal the exact integer sums of counts x (2 x centres), halved
    sum_below = np.cumsum(counts * np.arange(-509, 513, 2), axis=-1) / 2.0
    mean_below = sum_below / np.maximum(below, 1)
    mean_above = (sum_below[..., -1:] - sum_below) / np.maximum(above, 1)
    return centres[np.argmax(below * above * (mean_below - mean_above) ** 2, axis=-1)]


def _order_statistic(cumulative: np.ndarray, rank: int) -> np.ndarray:
    """The stain value at sorted position ``rank`` from cumulative half-unit histograms
    along the last axis (bin j holds the stain (j - 510) / 2): the number of bins whose
    cumulative count is at most ``rank`` is the bin of that position."""
    return (np.count_nonzero(cumulative <= rank, axis=-1) - 510) / 2.0


def _analysed(image: Image.Image | np.ndarray) -> tuple[np.ndarray, float]:
    """The (h, w, 3) uint8 array the finder analyses, and its size over the input's."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            if max(image.shape[:2]) <= 1.5 * ANALYSIS_SIDE:
                return image, 1.0
        image = Image.fromarray(image)
    width, height = image.size
    # up to 1.5 x the analysis side the image is analysed as it is (no resize to pay for)
    scale = 1.0 if max(width, height) <= 1.5 * ANALYSIS_SIDE else ANALYSIS_SIDE / max(width, height)
    small = image if image.mode == "RGB" else image.convert("RGB")
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = small.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(small), scale


def find_cell(image: Image.Image | np.ndarray) -> CellLocation:
    """The white cell's nucleus in an RGB image; raises :class:`NoCellFound`."""
    (found,) = find_cells([image])
    if isinstance(found, NoCellFound):
        raise found
    return found


def find_cells(images: list[Image.Image | np.ndarray]) -> list[CellLocation | NoCellFound]:
    """:func:`find_cell` of each image, the :class:`NoCellFound` of an image without a
    cell returned in its place, exactly. Images analysed at one size are searched
    together, in stacks: on images this small the per-call overhead of numpy and scipy,
    not the pixels, is most of the cost of one image."""
    analysed = [_analysed(image) for image in images]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (rgb, _) in enumerate(analysed):
        groups.setdefault(rgb.shape, []).append(index)
    results: list[CellLocation | NoCellFound | None] = [None] * len(images)
    for shape, indices in groups.items():
        # as few stacks as the budget allows, of sizes as even as can be
        stacks = -(-len(indices) * shape[0] * shape[1] // _STACK_PIXELS)
        per_stack = -(-len(indices) // stacks)
        for start in range(0, len(indices), per_stack):
            chunk = indices[start : start + per_stack]
            stack = _buffers.get("rgb", (len(chunk), *shape), np.uint8)
            for slot, index in enumerate(chunk):
                stack[slot] = analysed[index][0]
            found = _find_in_stack(stack, [analysed[index][1] for index in chunk])
            for index, result in zip(chunk, found):
                results[index] = result
    return results  # type: ignore[return-value]


# A stack holds up to this many pixels (about 20 images of 112 x 112): enough to share
# each call's overhead, while its working arrays (about 25 bytes a pixel) stay small.
_STACK_PIXELS = 1 << 18


class _Buffers(threading.local):
    """Working arrays kept from call to call (per thread): fresh arrays of a stack's size
    cost more in page faults than the arithmetic on them."""

    def __init__(self) -> None:
        self.store: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buffer = self.store.get(name)
        if buffer is None or buffer.size < size:
            buffer = self.store[name] = np.empty(size, np.uint8)
        return buffer[:size].view(dtype).reshape(shape)


_buffers = _Buffers()


class _Layout:
    """A stack of B images of H x W pixels laid out with ``pad`` zero columns after every
    row and ``pad`` zero rows after every image, as one flat array: shifting it by up to
    ``pad`` places (a column) or ``pad`` rows moves no pixel into another row or image,
    and every row of stained pixels ends where the next begins."""

    def __init__(self, count: int, height: int, width: int, pad: int):
        self.shape = (count, height, width)
        self.pad = pad
        self.stride = width + pad  # flat distance between rows
        self.block = (height + pad) * self.stride  # flat distance between images

    def array(self, name: str, dtype) -> tuple[np.ndarray, np.ndarray]:
        """A working array in this layout, flat, with one extra leading element (so
        that a run starting at the first pixel has a transition before it), and the view
        of its images' pixels, (B, H, W)."""
        count, height, width = self.shape
        flat = _buffers.get(name, (1 + count * self.block,), dtype)
        images = flat[1:].reshape(count, height + self.pad, self.stride)[:, :height, :width]
        return flat, images


def _grow(flat: np.ndarray, layout: _Layout, out: np.ndarray, work: np.ndarray) -> None:
    """``out``: the boolean mask ``flat`` (laid out as ``layout``, its padding False)
    dilated by a (2 pad + 1) square within each image, that is each image's
    ``ndimage.maximum_filter`` (whose reflected border adds nothing to a maximum), its
    padding False. Shifts of the flat array along rows, then columns: the padding takes
    what crosses a row's or an image's edge, and is cleared at the end."""
    work[:] = flat
    for shift in range(layout.stride, layout.pad * layout.stride + 1, layout.stride):
        work[shift:] |= flat[:-shift]
        work[:-shift] |= flat[shift:]
    out[:] = work
    for shift in range(1, layout.pad + 1):
        out[shift:] |= work[:-shift]
        out[:-shift] |= work[shift:]
    count, height, width = layout.shape
    blocks = out[1:].reshape(count, height + layout.pad, layout.stride)
    blocks[:, height:] = False
    blocks[:, :, width:] = False
    out[0] = False


def _runs(flat: np.ndarray, work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs of True in a boolean ``flat`` array whose first and last elements are
    False: their starts and (exclusive) ends, as indices into ``flat``."""
    np.not_equal(flat[1:], flat[:-1], out=work)
    edges = np.flatnonzero(work) + 1
    return edges[0::2], edges[1::2]


def _components(starts: np.ndarray, ends: np.ndarray, stride: int) -> np.ndarray:
    """The connected component of each run of a layout (4-connectivity: runs touch
    when they share a column in neighbouring rows), numbered 0, 1, ... in the order of
    the runs' first appearance, which is the scan order of ``ndimage.label``."""
    if len(starts) == 0:
        return np.zeros(0, np.intp)
    # the runs one row up overlapping run j: those ending after its start and starting
    # before its end, one row up (a contiguous range of the sorted runs)
    low = np.searchsorted(ends, starts - stride, side="right")
    high = np.searchsorted(starts, ends - stride, side="left")
    degree = np.maximum(high - low, 0)
    total = int(degree.sum())
    target = np.repeat(low - np.cumsum(degree) + degree, degree) + np.arange(total)
    # the edges, grouped by run: the graph's compressed rows as they are
    graph = sparse.csr_matrix(
        (np.ones(total, np.int8), target, np.concatenate([[0], np.cumsum(degree)])),
        shape=(len(starts), len(starts)),
    )
    _, component = csgraph.connected_components(graph, directed=False)
    # csgraph numbers components as it first reaches them, run after run; renumber in
    # the order of first appearance should it not
    if component[0] != 0 or np.any(np.diff(np.maximum.accumulate(component)) > 1):
        _, first, component = np.unique(component, return_index=True, return_inverse=True)
        rank = np.empty(len(first), np.intp)
        rank[np.argsort(first)] = np.arange(len(first))
        component = rank[component]
    return component


def _find_in_stack(rgb: np.ndarray, scales: list[float]) -> list[CellLocation | NoCellFound]:
    """The nucleus (or why there is none) of each image of a (B, H, W, 3) uint8 stack,
    analysed at ``scales`` of its input's size."""
    count, height, width = rgb.shape[:3]
    n = height * width
    plane = (count, height, width)
    # grow the mask by a square so that the lobes of one nucleus fall into one component
    radius = max(1, round(CLOSING_FRACTION * max(height, width)))
    layout = _Layout(count, height, width, radius)
    twice_flat, twice = layout.array("twice", np.int16)
    twice_flat.fill(-1024)  # the padding: below every threshold
    _twice_stain(rgb, out=twice, work=_buffers.get("green", plane, np.int16))
    # one histogram per image of the exact half-unit stains gives the median, the 99.5th
    # percentile and Otsu's whole-unit histogram (a whole unit is two half units)
    codes = _buffers.get("codes", plane, np.intp)
    np.add(twice, np.arange(510, 510 + 1022 * count, 1022)[:, None, None], out=codes)
    half_counts = np.bincount(codes.ravel(), minlength=1022 * count).reshape(count, 1022)
    cumulative = np.cumsum(half_counts, axis=1)
    medians = _order_statistic(cumulative, (n - 1) // 2)
    peaks = _order_statistic(cumulative, int(round(0.995 * (n - 1))))
    otsu = _otsu_of_counts(half_counts[:, 0::2] + half_counts[:, 1::2])
    # the stain (twice / 2, a float32) is compared with and reduced by the threshold in
    # float32, as numpy does with a float32 map and a Python float: stain > threshold
    # exactly where the integer twice exceeds floor(2 x threshold)
    thresholds = np.maximum(otsu, PEAK_FRACTION * peaks).astype(np.float32)
    limits = np.floor(2.0 * thresholds.astype(np.float64)).astype(np.int16)
    mask_flat, _ = layout.array("mask", bool)
    np.greater(
        twice_flat[1:].reshape(count, -1), limits[:, None], out=mask_flat[1:].reshape(count, -1)
    )
    mask_flat[0] = False
    grown_flat, _ = layout.array("grown", bool)
    work, _ = layout.array("work", bool)
    _grow(mask_flat, layout, grown_flat, work)
    # the grown mask's connected components, from its runs along rows; the stained
    # pixels' runs lie each in one run of the grown mask, and give each stained pixel its
    # component (in scan order, as np.flatnonzero would list them)
    starts, ends = _runs(grown_flat, work[1:])
    component = _components(starts, ends, layout.stride)
    stained_starts, stained_ends = _runs(mask_flat, work[1:])
    lengths = stained_ends - stained_starts
    group = np.repeat(component[np.searchsorted(starts, stained_starts, side="right") - 1], lengths)
    stained = np.repeat(stained_starts - np.cumsum(lengths) + lengths, lengths) + np.arange(
        len(group)
    )
    # each component's stain above the threshold (the excess is zero off the mask) and
    # number of stained pixels; components are numbered image after image
    owner = (stained - 1) // layout.block
    stain = twice_flat[stained].astype(np.float32) * 0.5
    total = int(component.max()) + 1 if len(component) else 0
    weight = np.bincount(group, weights=stain - thresholds[owner], minlength=total)
    areas = np.bincount(group, minlength=total)
    first_runs = np.flatnonzero(np.diff(np.maximum.accumulate(component), prepend=-1) > 0)
    per_image = np.bincount((starts[first_runs] - 1) // layout.block, minlength=count)
    last = np.cumsum(per_image)
    first = last - per_image
    found = per_image > 0
    best = np.zeros(count, np.intp)
    for b in np.flatnonzero(found):
        best[b] = first[b] + np.argmax(weight[first[b] : last[b]])
    # the best component's stained pixels, image after image in scan order
    chosen = np.zeros(total, bool)
    chosen[best[found]] = True
    picked = chosen[group]
    stain, within = stain[picked], (stained[picked] - 1) % layout.block
    sizes = np.zeros(count, np.intp)
    sizes[found] = areas[best[found]]
    stops = np.cumsum(sizes)
    rows, columns = within // layout.stride, within % layout.stride
    # each component's bounding box (its pixels are a non-empty run of the picked ones),
    # and its stain sum (exact in float64, whatever the order: half units, few pixels)
    box = np.zeros((4, count), np.intp)
    sums = np.zeros(count)
    if found.any():
        parts = (stops - sizes)[found]
        box[0, found] = np.minimum.reduceat(columns, parts)
        box[1, found] = np.maximum.reduceat(columns, parts) + 1
        box[2, found] = np.minimum.reduceat(rows, parts)
        box[3, found] = np.maximum.reduceat(rows, parts) + 1
        sums[found] = np.add.reduceat(stain.astype(np.float64), parts)
    # the mean stain as float32's ndarray.mean gives it (the exact sum divided in float64,
    # rounded to float32), less the image's median
    contrasts = (sums / np.maximum(sizes, 1)).astype(np.float32) - medians
    return _locations(box, np.asarray(scales), contrasts, sizes / n, found)


def _locations(
    box: np.ndarray,
    scales: np.ndarray,
    contrasts: np.ndarray,
    area_fractions: np.ndarray,
    found: np.ndarray,
) -> list[CellLocation | NoCellFound]:
    """The cell of each image whose nucleus spans columns box[0]..box[1] and rows
    box[2]..box[3] (exclusive ends) of the image analysed at ``scales``, or why it has
    none."""
    # back to input pixels: each analysed pixel covers 1/scale input pixels (numpy
    # floats, as the pixel indices of np.nonzero made them)
    x0, x1, y0, y1 = box / scales
    centres_x, centres_y = (x0 + x1) / 2, (y0 + y1) / 2
    extents = np.maximum(x1 - x0, y1 - y0)
    results: list[CellLocation | NoCellFound] = []
    for b in range(len(scales)):
        contrast, area_fraction = float(contrasts[b]), float(area_fractions[b])
        if not found[b]:
            results.append(NoCellFound("no stained object (flat image)"))
        elif contrast < MIN_CONTRAST:
            results.append(
                NoCellFound(
                    f"strongest stained object is faint (contrast {contrast:.1f} "
                    f"< {MIN_CONTRAST:g})"
                )
            )
        elif area_fraction < MIN_AREA_FRACTION:
            results.append(
                NoCellFound(
                    f"strongest stained object is a speck ({area_fraction:.4f} of the image "
                    f"< {MIN_AREA_FRACTION:g})"
                )
            )
        else:
            results.append(
                CellLocation(cx=centres_x[b], cy=centres_y[b], extent=extents[b], contrast=contrast)
            )
    return results


def reference_extent(extents: list[float] | np.ndarray) -> float:
    """A dataset's reference nucleus size: the median of its nuclei's extents. Crops of
    ``factor x reference`` pixels give every lab's median cell the same size in the
    crop, while cells keep their sizes relative to each other within a lab."""
    values = np.asarray(extents, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no nucleus found in the sample: cannot set the cell scale")
    return float(np.median(values))
