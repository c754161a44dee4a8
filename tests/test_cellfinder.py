"""The white-cell finder on real images of every shared lab, and the cell crop at ingest."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemaflow.data.cellfinder import NoCellFound, find_cell, reference_extent
from hemaflow.data.ingest import IngestOptions, ingest_dataset, run_ingest
from hemaflow.data.layouts import list_dataset, parse_yolo_labels
from hemaflow.data.listing import SourceItem

from .realdata import require_shared_datasets


def _every(paths: list[Path], count: int) -> list[Path]:
    picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
    return [paths[k] for k in picks]


def test_finds_the_centred_cell_of_pbc_and_zheng_tecom():
    """pbc and Tecom frame one white cell in the middle: the nucleus found is there, of a
    size between a platelet's and the whole frame's, for every class folder."""
    root = require_shared_datasets()
    paths = []
    for folder in sorted((root / "pbc").iterdir()):
        if folder.is_dir():
            paths += _every(sorted(folder.glob("[A-Z]*.jpg")), 4)
    paths += _every(sorted((root / "zheng_tecom" / "Dataset 1").glob("*.bmp")), 12)
    misses = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
        cell = find_cell(image)
        side = min(image.size)
        off_centre = max(abs(cell.cx - image.width / 2), abs(cell.cy - image.height / 2))
        if off_centre > 0.25 * side or not 0.05 * side < cell.extent < 1.0 * side:
            misses.append((path.name, round(cell.cx), round(cell.cy), round(cell.extent)))
    # the odd frame holds two cells; at most one in twenty may pick the other one
    assert len(misses) <= len(paths) // 20, misses


def test_finds_the_white_cell_inside_raabins_boxes():
    """raabin's frames carry the white cell's box (YOLO class 0): the finder, which never
    sees the box, puts the nucleus inside it."""
    root = require_shared_datasets() / "raabin_frames"
    frames = _every(sorted((root / "images").glob("*.jpg")), 30)
    inside = 0
    for frame in frames:
        boxes = parse_yolo_labels((root / "labels" / f"{frame.stem}.txt").read_text(), frame.name)
        wbc = [box for cls, box in boxes if cls == 0]
        if len(wbc) != 1:
            continue
        with Image.open(frame) as image:
            cell = find_cell(image.convert("RGB"))
            width, height = image.size
        cx, cy, w, h = wbc[0]
        inside += abs(cell.cx / width - cx) <= w / 2 and abs(cell.cy / height - cy) <= h / 2
    assert inside >= 0.9 * len(frames)


def test_finds_the_white_cell_in_bccd_frames():
    """bccd's 640x480 frames hold the cell anywhere among red cells: the nucleus found
    has a white cell's size there (red cells, taken by mistake, are pale and smaller)."""
    root = require_shared_datasets() / "bccd" / "Original_Images"
    frames = _every(sorted(root.glob("*.jpg")), 20)
    extents = []
    for frame in frames:
        with Image.open(frame) as image:
            cell = find_cell(image.convert("RGB"))
        extents.append(cell.extent)
        assert cell.contrast > 30.0, frame.name
    assert 60 < np.median(extents) < 250


def test_a_blank_or_flat_image_has_no_cell():
    blank = np.full((120, 120, 3), 230, np.uint8)
    with pytest.raises(NoCellFound, match="flat|faint"):
        find_cell(blank)
    noise = np.random.default_rng(0).integers(200, 215, size=(120, 120, 3), dtype=np.uint8)
    with pytest.raises(NoCellFound):
        find_cell(noise)


def test_reference_extent_is_the_median():
    assert reference_extent([10.0, 30.0, 20.0]) == 20.0
    with pytest.raises(ValueError, match="no nucleus"):
        reference_extent([])


def _cell_options(root: Path, reference: float | None) -> IngestOptions:
    return IngestOptions(
        dataset="lab",
        domain="lab",
        root=str(root),
        data_prefix="lab",
        image_size=64,
        max_pixels=40_000_000,
        formats=("JPEG", "PNG", "BMP"),
        crop="cell",
        cell_crop_factor=2.0,
        cell_reference=reference,
    )


def test_cell_crop_at_ingest_centres_the_cell_and_quarantines_a_blank(tmp_path: Path):
    """A bccd frame is cropped around its white cell, at factor x reference pixels; a
    blank frame in the same folder is quarantined as no_cell_found, not cropped."""
    source = require_shared_datasets() / "bccd" / "Original_Images" / "BloodImage_00001.jpg"
    folder = tmp_path / "lab" / "neutrophil"
    folder.mkdir(parents=True)
    shutil.copy(source, folder / "frame.jpg")
    Image.fromarray(np.full((480, 640, 3), 225, np.uint8)).save(folder / "blank.png")
    items = list_dataset(tmp_path / "lab", {"layout": "imagefolder"}, (".jpg", ".png"))
    manifest, cache = ingest_dataset(items, _cell_options(tmp_path / "lab", 100.0))
    by_name = {Path(p).name: row for p, row in zip(manifest["source_path"], manifest.itertuples())}
    blank = by_name["blank.png"]
    assert blank.status == "quarantined" and blank.reason_code == "no_cell_found"
    frame = by_name["frame.jpg"]
    assert frame.status == "ok"
    assert frame.box_x1 - frame.box_x0 == 200 and frame.box_y1 - frame.box_y0 == 200
    with Image.open(source) as image:
        cell = find_cell(image.convert("RGB"))
    assert abs((frame.box_x0 + frame.box_x1) / 2 - cell.cx) <= 2
    assert abs((frame.box_y0 + frame.box_y1) / 2 - cell.cy) <= 2
    # the centre of the cached crop is nucleus-stained (darker in green than the rim)
    crop = cache[frame.cache_index].astype(float)
    assert crop[24:40, 24:40, 1].mean() < crop[:8, :, 1].mean() - 20


def test_auto_reference_gives_labs_one_cell_scale(default_config, tmp_path: Path):
    """With crop: cell and cell_reference auto, pbc (224 px, small cells) and Tecom
    (120 px, the cell filling the frame) are cropped so that their median nucleus takes
    the same share of the crop: the cell scale no longer depends on the lab."""
    shares = {}
    for dataset in ("pbc", "zheng_tecom"):
        config = copy.deepcopy(default_config)
        spec = config["datasets"][dataset]
        spec.update(crop="cell", cell_crop_factor=2.0, cell_reference="auto")
        if dataset == "pbc":  # a small real subset: one class folder
            spec["path"] = "pbc/monocyte"
            spec.pop("fine_label_regex", None)
            config["data_root"] = str(tmp_path)
            (tmp_path / "pbc").mkdir(exist_ok=True)
            target = tmp_path / "pbc" / "monocyte" / "monocyte"
            target.mkdir(parents=True)
            sources = sorted((require_shared_datasets() / "pbc" / "monocyte").glob("MO_*.jpg"))
            for path in sources[:40]:
                shutil.copy(path, target / path.name)
        manifest, cache = run_ingest(config, dataset, Path(config["data_root"]))
        ok = manifest[manifest["status"] == "ok"]
        assert len(ok) > 30
        extents = [find_cell(image).extent for image in cache[ok["cache_index"].to_numpy()]]
        shares[dataset] = np.median(extents) / 64
    assert 0.3 < shares["pbc"] < 0.7
    assert abs(shares["pbc"] - shares["zheng_tecom"]) < 0.15, shares


def test_center_crop_is_unchanged_by_default(tmp_path: Path, make_image):
    make_image("lab/a/x.png", size=(40, 30))
    item = SourceItem(rel_path="a/x.png", source_label="a")
    options = _cell_options(tmp_path / "lab", None)
    options = IngestOptions(**{**options.__dict__, "crop": "center", "cell_reference": None})
    manifest, _ = ingest_dataset([item], options)
    row = manifest.iloc[0]
    assert (row.box_x0, row.box_y0, row.box_x1, row.box_y1) == (5, 0, 35, 30)


def test_the_histogram_order_statistics_equal_a_sort_of_the_stain_map():
    """The finder reads the median and the 99.5th percentile off one histogram of exact
    half-unit stains; they must be the sorted stain map's values at those ranks."""
    from hemaflow.data.cellfinder import _order_statistic, _twice_stain, stain_map

    rng = np.random.default_rng(4)
    for _ in range(5):
        rgb = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
        twice = _twice_stain(rgb)
        assert np.array_equal(twice.astype(np.float32) * 0.5, stain_map(rgb))
        cumulative = np.cumsum(np.bincount(twice.ravel() + 510, minlength=1022))
        ordered = np.sort(stain_map(rgb).ravel())
        last = ordered.size - 1
        for rank in (0, last // 2, int(round(0.995 * last)), last):
            assert _order_statistic(cumulative, rank) == ordered[rank]


def test_otsu_splits_two_modes():
    from hemaflow.data.cellfinder import _otsu_of_counts

    counts = np.zeros(511)
    counts[255 - 20] = 500  # background around stain -20
    counts[255 + 60] = 50  # nuclei around stain 60
    threshold = _otsu_of_counts(counts)
    assert -20 < threshold < 60


def _layout_stack(masks: np.ndarray, pad: int):
    """Boolean (B, H, W) masks in the finder's flat layout (padding False)."""
    from hemaflow.data.cellfinder import _Layout

    layout = _Layout(*masks.shape, pad)
    flat, images = layout.array("test_mask", bool)
    flat[:] = False
    images[:] = masks
    return layout, flat.copy()


def test_the_grown_stack_is_each_images_maximum_filter():
    from scipy import ndimage

    from hemaflow.data.cellfinder import _grow

    rng = np.random.default_rng(2)
    for radius, shape in ((1, (3, 23, 31)), (2, (4, 9, 40)), (3, (2, 31, 23)), (3, (1, 5, 5))):
        masks = rng.random(shape) < 0.05
        masks[0, 0, :] |= rng.random(shape[2]) < 0.5  # stained pixels on the edges
        masks[-1, :, -1] |= rng.random(shape[1]) < 0.5
        layout, flat = _layout_stack(masks, radius)
        grown, work = np.empty_like(flat), np.empty_like(flat)
        _grow(flat, layout, grown, work)
        blocks = grown[1:].reshape(shape[0], shape[1] + radius, shape[2] + radius)
        for mask, block in zip(masks, blocks):
            expected = ndimage.maximum_filter(mask.view(np.uint8), size=2 * radius + 1) > 0
            assert np.array_equal(block[: shape[1], : shape[2]], expected)
            assert not block[shape[1] :].any() and not block[:, shape[2] :].any()
        assert not grown[0]


def test_run_components_are_ndimage_labels_in_scan_order(monkeypatch):
    """The components found from the grown mask's runs are scipy's default 2-D labels,
    numbered alike, image after image; and they are renumbered so should csgraph ever
    number its components in another order."""
    from scipy import ndimage
    from scipy.sparse import csgraph

    from hemaflow.data.cellfinder import _components, _runs

    rng = np.random.default_rng(3)
    masks = rng.random((5, 30, 41)) < 0.45
    masks[2] = False  # an empty image between others
    layout, flat = _layout_stack(masks, 1)
    starts, ends = _runs(flat, np.empty(len(flat) - 1, bool))
    labels, offset = [], 0
    for mask in masks:
        image_labels, count = ndimage.label(mask)
        labels.append(np.where(image_labels > 0, image_labels + offset, 0))
        offset += count
    expected = np.stack(labels)
    position = starts - 1  # flat index -> layout position
    image, rest = position // layout.block, position % layout.block
    run_labels = expected[image, rest // layout.stride, rest % layout.stride]
    assert np.array_equal(_components(starts, ends, layout.stride) + 1, run_labels)
    assert np.array_equal(ends - starts, np.diff(np.flatnonzero(np.diff(flat)))[0::2])

    connected = csgraph.connected_components

    def reversed_numbers(graph, directed):
        count, numbers = connected(graph, directed=directed)
        return count, count - 1 - numbers

    monkeypatch.setattr(csgraph, "connected_components", reversed_numbers)
    assert np.array_equal(_components(starts, ends, layout.stride) + 1, run_labels)


def _reference_find_cell(image):
    """The finder as it was before stacks (one image at a time, scipy's label and a
    float stain map): the batched finder must give exactly its results."""
    from scipy import ndimage

    from hemaflow.data.cellfinder import (
        ANALYSIS_SIDE,
        CLOSING_FRACTION,
        MIN_AREA_FRACTION,
        MIN_CONTRAST,
        PEAK_FRACTION,
        CellLocation,
    )

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    width, height = image.size
    scale = 1.0 if max(width, height) <= 1.5 * ANALYSIS_SIDE else ANALYSIS_SIDE / max(width, height)
    small = image.convert("RGB")
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = small.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(small).astype(np.int16)
    twice = pixels[..., 0] + pixels[..., 2] - 2 * pixels[..., 1]
    counts = np.bincount((twice.ravel() + 510).astype(np.intp), minlength=1022)[:1022]
    cumulative = np.cumsum(counts)

    def order(rank):
        return (int(np.searchsorted(cumulative, rank, side="right")) - 510) / 2.0

    median, peak = order((twice.size - 1) // 2), order(int(round(0.995 * (twice.size - 1))))
    whole = counts.reshape(511, 2).sum(axis=1)
    centres = np.arange(511, dtype=np.float64) - 255.0 + 0.5
    below = np.cumsum(whole)
    above = below[-1] - below
    sum_below = np.cumsum(whole * centres)
    mean_below = sum_below / np.maximum(below, 1)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(above, 1)
    otsu = float(centres[np.argmax(below * above * (mean_below - mean_above) ** 2)])
    threshold = max(otsu, PEAK_FRACTION * peak)
    stain = twice.astype(np.float32) * 0.5
    mask = stain > threshold
    if not mask.any():
        return "no stained object (flat image)"
    radius = max(1, round(CLOSING_FRACTION * max(stain.shape)))
    grown = ndimage.maximum_filter(mask.view(np.uint8), size=2 * radius + 1) > 0
    labels, count = ndimage.label(grown)
    weight = np.bincount(labels[mask], weights=stain[mask] - threshold, minlength=count + 1)[1:]
    best = int(np.argmax(weight)) + 1
    window = ndimage.find_objects(labels, max_label=best)[best - 1]
    component = (labels[window] == best) & mask[window]
    area_fraction = float(np.count_nonzero(component)) / mask.size
    contrast = float(stain[window][component].mean()) - median
    if contrast < MIN_CONTRAST:
        return f"strongest stained object is faint (contrast {contrast:.1f} < {MIN_CONTRAST:g})"
    if area_fraction < MIN_AREA_FRACTION:
        return (
            f"strongest stained object is a speck ({area_fraction:.4f} of the image "
            f"< {MIN_AREA_FRACTION:g})"
        )
    ys, xs = np.nonzero(component)
    ys, xs = ys + window[0].start, xs + window[1].start
    x0, x1 = xs.min() / scale, (xs.max() + 1) / scale
    y0, y1 = ys.min() / scale, (ys.max() + 1) / scale
    return CellLocation((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0), contrast)


def _mixed_real_images() -> list:
    """Real images of every shared lab at their analysed sizes (pbc drafted to 112 px
    as ingest decodes it, bccd frames, Tecom, raabin frames), faded copies (faint), a
    blank and a speckled frame, a noise array: mixed sizes, in no particular order."""
    root = require_shared_datasets()
    images: list = []
    for path in _every(sorted(root.glob("pbc/*/*.jpg")), 48):
        with Image.open(path) as image:
            image.draft("RGB", (112, 112))
            images.append(image.convert("RGB"))
    for pattern, count in (
        ("bccd/Original_Images/*.jpg", 10),
        ("zheng_tecom/**/*.bmp", 10),
        ("raabin_frames/images/*.jpg", 4),
    ):
        for path in _every(sorted(root.glob(pattern)), count):
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
    for image in images[:12:2]:
        pixels = np.asarray(image).astype(float)
        images.append((pixels * 0.2 + 255 * 0.8).astype(np.uint8))
    speckled = np.full((112, 112, 3), 225, np.uint8)
    speckled[50:52, 60:62] = (150, 60, 170)
    images += [Image.new("RGB", (120, 120), (230, 230, 230)), speckled]
    images.append(np.random.default_rng(0).integers(200, 215, (120, 120, 3), dtype=np.uint8))
    order = np.random.default_rng(1).permutation(len(images))
    return [images[k] for k in order]


def test_the_batched_finder_equals_the_one_image_finder_on_every_lab():
    """find_cells on a mixed-size batch (several stacks of one size, each over its
    pixel budget) gives exactly what the one-image finder, old and new, gives: the same
    floats and the same reasons for no cell."""
    from hemaflow.data.cellfinder import find_cells

    images = _mixed_real_images()
    expected = [_reference_find_cell(image) for image in images]
    kinds = {
        type(result).__name__ if not isinstance(result, str) else result[:30] for result in expected
    }
    assert len(kinds) >= 4, kinds  # found, flat, faint and speck all occur
    batched = find_cells(images)
    for image, want, got in zip(images, expected, batched):
        if isinstance(want, str):
            assert isinstance(got, NoCellFound) and got.reason == want
            with pytest.raises(NoCellFound, match=re.escape(want)):
                find_cell(image)
        else:
            assert repr(got) == repr(want)
            assert repr(find_cell(image)) == repr(want)


def test_the_ingest_batch_gives_process_items_rows_one_by_one(tmp_path: Path):
    """Decoding a batch, finding its cells in one call, then cropping gives the rows
    and images of process_item called file by file, quarantines included."""
    from hemaflow.data.ingest import process_item, process_items

    root = require_shared_datasets()
    folder = tmp_path / "lab" / "cells"
    folder.mkdir(parents=True)
    sources = _every(sorted(root.glob("pbc/*/*.jpg")), 12) + _every(
        sorted((root / "bccd" / "Original_Images").glob("*.jpg")), 4
    )
    for number, source in enumerate(sources):
        shutil.copy(source, folder / f"{number:02d}{source.suffix}")
    Image.fromarray(np.full((90, 90, 3), 225, np.uint8)).save(folder / "05blank.png")
    (folder / "07broken.jpg").write_bytes(b"not an image")
    items = list_dataset(tmp_path / "lab", {"layout": "imagefolder"}, (".jpg", ".png"))
    items.append(SourceItem(rel_path="cells/gone.jpg", source_label="cells"))
    options = _cell_options(tmp_path / "lab", 60.0)
    one_by_one = [process_item(item, options) for item in items]
    batched = process_items(items, options)
    codes = [row["reason_code"] for results in batched for row, _ in results]
    assert {"no_cell_found", "not_an_image", "missing_file"} <= set(codes), codes
    assert len(batched) == len(one_by_one) == len(items)
    for want, got in zip(one_by_one, batched):
        assert [row for row, _ in got] == [row for row, _ in want]
        for (_, image), (_, expected) in zip(got, want):
            assert (image is None and expected is None) or np.array_equal(image, expected)
