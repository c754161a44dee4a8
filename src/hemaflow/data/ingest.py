"""Ingest one dataset: list, decode once, hash, crop, resize into an image cache, and
write a manifest row for every source file or crop, accepted or quarantined."""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.data.cellfinder import (
    CellLocation,
    NoCellFound,
    find_cells,
    reference_extent,
)
from hemaflow.data.decode import (
    DecodedImage,
    RejectedImage,
    content_hash,
    decode_image,
    read_bytes,
)
from hemaflow.data.geometry import (
    Box,
    center_square_box,
    crop_image,
    resize_square,
    scale_box,
    yolo_square_box,
)
from hemaflow.data.layouts import list_dataset
from hemaflow.data.listing import ListingOptions, SourceItem
from hemaflow.data.manifest import MANIFEST_COLUMNS, manifest_from_columns
from hemaflow.dedup.phash import phash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOptions:
    dataset: str
    domain: str
    root: str  # dataset folder
    data_prefix: str  # dataset path as given: relative to data_root, or absolute
    image_size: int
    max_pixels: int
    formats: tuple[str, ...]
    box_margin: float = 0.15
    crop: str = "center"  # center | cell (whole images; detection frames use their boxes)
    cell_crop_factor: float = 2.0
    cell_reference: float | None = None  # stored pixels; set before ingest for crop: cell
    read_timeout_s: float = 60.0


def _row(item: SourceItem, options: IngestOptions, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(MANIFEST_COLUMNS)
    row.update(
        record_id=f"{options.dataset}:{item.rel_path}",
        dataset=options.dataset,
        domain=options.domain,
        source_path=_source_path(options.data_prefix, item.rel_path),
        source_path_base="absolute" if options.data_prefix.startswith("/") else "data_root",
        link_target=item.link_target,
        source_group=item.source_group,
        source_label=item.source_label,
        fine_label=item.fine_label,
        status="ok",
    )
    row.update(values)
    return row


def _source_path(prefix: str, rel_path: str) -> str:
    """The dataset path as configured joined with the item's path: relative to data_root
    (portable) for a relative dataset path, absolute for an absolute one."""
    if prefix in ("", ".", "./"):
        return rel_path
    return f"{prefix.rstrip('/')}/{rel_path}"


def _quarantine(row: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    row.update(status="quarantined", reason_code=code, reason=message)
    return row


def process_item(
    item: SourceItem, options: IngestOptions
) -> list[tuple[dict[str, Any], np.ndarray | None]]:
    """Decode one source file once; return a (row, cached image or None) per crop."""
    return process_items([item], options)[0]


# Decoded images waiting for their white cell hold up to this many pixels in all: more
# are searched (and cropped) before the next file is decoded.
_PENDING_PIXELS = 1 << 24


def process_items(
    items: list[SourceItem], options: IngestOptions
) -> list[list[tuple[dict[str, Any], np.ndarray | None]]]:
    """:func:`process_item` of each item, in phases: decode the files, find the white
    cells of those cropped at their cell with one :func:`find_cells` call (much cheaper
    than one call an image), then crop. The results are process_item's one by one."""
    results: list[list[tuple[dict[str, Any], np.ndarray | None]]] = [[] for _ in items]
    pending: list[tuple[int, _Decoded]] = []
    pixels = 0
    for index, item in enumerate(items):
        state = _decode_item(item, options)
        if not isinstance(state, _Decoded):
            results[index] = state
        elif item.boxes is None and options.crop == "cell":
            pending.append((index, state))
            pixels += state.decoded.image.width * state.decoded.image.height
            if pixels > _PENDING_PIXELS:
                _crop_at_cells(pending, options, results)
                pending, pixels = [], 0
        else:
            results[index] = _crops(state, options, None)
    _crop_at_cells(pending, options, results)
    return results


@dataclass(frozen=True)
class _Decoded:
    item: SourceItem
    sha: str
    decoded: DecodedImage


def _decode_item(
    item: SourceItem, options: IngestOptions
) -> _Decoded | list[tuple[dict[str, Any], np.ndarray | None]]:
    """The decoded file, or its quarantined row when it cannot be used."""
    if item.rejection is not None:
        return [(_quarantine(_row(item, options), *item.rejection), None)]
    path = os.path.join(options.root, item.rel_path)
    try:
        data = read_bytes(path, timeout_s=options.read_timeout_s)
        sha = content_hash(data)
        decoded = decode_image(
            data,
            max_pixels=options.max_pixels,
            formats=options.formats,
            draft_size=_draft_request(item, options),
        )
    except RejectedImage as exc:
        row = _row(item, options)
        return [(_quarantine(row, exc.code, exc.message), None)]
    return _Decoded(item, sha, decoded)


def _crop_at_cells(pending: list[tuple[int, _Decoded]], options: IngestOptions, results) -> None:
    """Find the white cells of the ``pending`` decoded files and crop them, into their
    places in ``results``."""
    if not pending:
        return
    assert options.cell_reference is not None, "cell_reference is set before ingest"
    cells = find_cells([state.decoded.image for _, state in pending])
    for (index, state), cell in zip(pending, cells):
        results[index] = _crops(state, options, cell)


def _crops(
    state: _Decoded, options: IngestOptions, cell: CellLocation | NoCellFound | None
) -> list[tuple[dict[str, Any], np.ndarray | None]]:
    """A (row, cached image or None) per crop of a decoded file; ``cell``: its white
    cell (crop: cell, no boxes)."""
    item, sha, decoded = state.item, state.sha, state.decoded
    common = dict(
        sha256=sha,
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        mode=decoded.mode,
    )
    width, height = decoded.width, decoded.height
    # boxes are kept in stored-pixel coordinates; the decoded frame may be draft-reduced
    scale_x = decoded.image.width / width
    scale_y = decoded.image.height / height
    if item.boxes is None and options.crop == "cell":
        assert cell is not None
        if isinstance(cell, NoCellFound):
            row = _row(item, options, **common)
            return [
                (_quarantine(row, "no_cell_found", f"no white cell found: {cell.reason}"), None)
            ]
        crops: list[tuple[Box, str, str]] = [(_cell_box(cell, scale_x, options), sha, "")]
    elif item.boxes is None:
        crops = [(center_square_box(width, height), sha, "")]
    else:
        crops = []
        for number, (cx, cy, w, h) in enumerate(item.boxes):
            box = yolo_square_box(cx, cy, w, h, width, height, options.box_margin)
            crops.append((box, f"{sha}:{box[0]},{box[1]},{box[2]},{box[3]}", f"#box{number}"))
    results = []
    for box, image_id, suffix in crops:
        row = _row(item, options, image_id=image_id, **common)
        row["record_id"] += suffix
        row.update(box_x0=box[0], box_y0=box[1], box_x1=box[2], box_y1=box[3])
        if box[2] - box[0] < 4:
            results.append((_quarantine(row, "degenerate_box", f"box {box} is too small"), None))
            continue
        square = crop_image(decoded.image, scale_box(box, scale_x, scale_y))
        small = resize_square(square, options.image_size)
        row["phash"] = int(phash(small))
        results.append((row, np.asarray(small, dtype=np.uint8)))
    return results


def _cell_box(location: CellLocation, scale: float, options: IngestOptions) -> Box:
    """The square crop (stored pixels) centred on the white cell ``location`` of a
    decoded image that is ``scale`` times the stored size."""
    assert options.cell_reference is not None, "cell_reference is set before ingest"
    side = options.cell_crop_factor * options.cell_reference
    x0, y0, x1, y1 = location.square_box(side * scale)
    # back to stored pixels, keeping the square exactly square
    stored_side = max(1, int(round(side)))
    left = int(round(x0 / scale))
    top = int(round(y0 / scale))
    return (left, top, left + stored_side, top + stored_side)


def _draft_request(item: SourceItem, options: IngestOptions):
    """The smallest decoded frame that still gives every crop ``image_size`` pixels."""
    size = options.image_size

    def request(width: int, height: int) -> tuple[int, int]:
        if item.boxes is None and options.crop == "cell" and options.cell_reference:
            shortest = options.cell_crop_factor * options.cell_reference
        elif item.boxes is None:
            shortest = min(width, height)
        else:
            shortest = min(max(w * width, h * height) for _, _, w, h in item.boxes) or 1
        scale = min(1.0, size / max(shortest, 1))
        return (max(1, int(width * scale + 0.999)), max(1, int(height * scale + 0.999)))

    return request


# Work is shipped to worker processes in batches of items. Their images go straight into
# one array shared with the parent, a slot for every image an item can give (known from
# the listing), and their rows come back as columns: nothing per image or per row is
# pickled, and the parent, which shares the machine with the workers, stays nearly idle.
_BATCH = 64


@dataclass
class _WorkerState:
    options: IngestOptions | None = None
    images: np.ndarray | None = None  # (slots, S, S, 3) uint8, shared with the parent


_worker = _WorkerState()


def _init_worker(options: IngestOptions | None, images: np.ndarray | None = None) -> None:
    _worker.options = options
    _worker.images = images


def _image_slots(item: SourceItem) -> int:
    """The most images ``item`` can give: one per box, else one."""
    return 1 if item.boxes is None else max(1, len(item.boxes))


def _image_array(slots: int, size: int, shared: bool) -> np.ndarray:
    """An uninitialised (slots, size, size, 3) uint8 array; ``shared``: in memory that
    forked workers write to and the parent reads."""
    shape = (slots, size, size, 3)
    if not shared:
        return np.empty(shape, np.uint8)
    nbytes = slots * size * size * 3
    return np.frombuffer(mmap.mmap(-1, max(1, nbytes)), np.uint8, nbytes).reshape(shape)


# the manifest columns a worker fills in (the parent numbers the cached images)
_ROW_COLUMNS = [c for c in MANIFEST_COLUMNS if c != "cache_index"]


def _process_batch(task: tuple[int, list[SourceItem]]) -> tuple[dict[str, list], np.ndarray]:
    """The rows of a batch whose images start at slot ``first``, as columns, and each
    row's image slot (-1: none); the images are written to the shared array."""
    first, batch = task
    options, images = _worker.options, _worker.images
    assert options is not None and images is not None
    rows: list[dict[str, Any]] = []
    slots: list[int] = []
    for item, results in zip(batch, process_items(batch, options)):
        for number, (row, image) in enumerate(results):
            rows.append(row)
            if image is None:
                slots.append(-1)
            else:
                images[first + number] = image
                slots.append(first + number)
        first += _image_slots(item)
    return {c: [row[c] for row in rows] for c in _ROW_COLUMNS}, np.array(slots, np.int64)


def _batches(items: list[SourceItem], size: int) -> list[list[SourceItem]]:
    return [items[k : k + size] for k in range(0, len(items), size)]


def _map_batches(
    function, tasks: list, options: IngestOptions, workers: int, images: np.ndarray | None = None
) -> Iterator:
    """``function`` of each task, in order: in this process with one worker, else in a
    pool of forked workers that hold ``options`` and the shared ``images``."""
    if workers <= 1:
        _init_worker(options, images)
        try:
            yield from (function(task) for task in tasks)
        finally:
            _init_worker(None)  # the images are the caller's from here on
        return
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(options, images),
    )
    try:
        yield from pool.map(function, tasks)
    finally:
        pool.shutdown(cancel_futures=True)


def _place_images(images: np.ndarray, slots: np.ndarray, cached: int) -> np.ndarray:
    """The cache indices of a batch's rows (-1: no image), numbered from ``cached``; the
    batch's images are moved from their slots to those places. Slots only grow, so the
    places lie before any slot still being written."""
    has_image = slots >= 0
    used = slots[has_image]
    indices = np.full(len(slots), -1, np.int64)
    indices[has_image] = np.arange(cached, cached + len(used))
    if len(used) and (used[0] != cached or used[-1] != cached + len(used) - 1):
        images[cached : cached + len(used)] = images[used]
    return indices


def ingest_dataset(
    items: list[SourceItem], options: IngestOptions, workers: int = 1
) -> tuple[pd.DataFrame, np.ndarray]:
    """Process every listed item; returns the manifest and the (N, S, S, 3) uint8 cache,
    whose row k is the image of the manifest row with ``cache_index == k``."""
    if options.crop == "cell" and options.cell_reference is None:
        options = _with_cell_reference(items, options, workers)
    batches = _batches(items, _BATCH)
    firsts = np.cumsum([0] + [sum(map(_image_slots, batch)) for batch in batches])
    images = _image_array(int(firsts[-1]), options.image_size, shared=workers > 1)
    tasks = [(int(first), batch) for first, batch in zip(firsts, batches)]
    columns: dict[str, list] = {c: [] for c in _ROW_COLUMNS}
    cache_indices: list[np.ndarray] = []
    cached = done = 0
    start = time.monotonic()
    report_every = max(500, len(items) // 20)
    next_report = report_every
    results = _map_batches(_process_batch, tasks, options, workers, images)
    for batch, (batch_columns, slots) in zip(batches, results):
        for name, values in batch_columns.items():
            columns[name].extend(values)
        cache_indices.append(_place_images(images, slots, cached))
        cached += int(np.count_nonzero(slots >= 0))
        done += len(batch)
        if done >= next_report or done == len(items):
            next_report += report_every
            elapsed = time.monotonic() - start
            rate = done / elapsed if elapsed > 0 else float("inf")
            log.info(
                "%s: %d/%d files, %.0f files/s, %d images cached, eta %.0f s",
                options.dataset,
                done,
                len(items),
                rate,
                cached,
                (len(items) - done) / rate if rate else 0,
            )
    columns["cache_index"] = np.concatenate(cache_indices) if cache_indices else []
    return manifest_from_columns(columns), images[:cached]


# Up to this many images, evenly spaced over the listing, set a dataset's cell scale.
CELL_REFERENCE_SAMPLE = 200


def _sample_extents(batch: list[SourceItem]) -> list[float | None]:
    """The nucleus extent (stored pixels) of each sampled item, None where it has none;
    their cells found a stack at a time (:func:`find_cells`)."""
    options = _worker.options
    assert options is not None
    found: list[float | None] = [None] * len(batch)
    pending: list[tuple[int, DecodedImage]] = []

    def search() -> None:
        cells = find_cells([decoded.image for _, decoded in pending])
        for (slot, decoded), cell in zip(pending, cells):
            if not isinstance(cell, NoCellFound):
                found[slot] = cell.extent * decoded.width / decoded.image.width
        pending.clear()

    pixels = 0
    for index, item in enumerate(batch):
        try:
            data = read_bytes(
                os.path.join(options.root, item.rel_path), timeout_s=options.read_timeout_s
            )
            decoded = decode_image(data, max_pixels=options.max_pixels, formats=options.formats)
        except RejectedImage:
            continue
        pending.append((index, decoded))
        pixels += decoded.image.width * decoded.image.height
        if pixels > _PENDING_PIXELS:
            search()
            pixels = 0
    search()
    return found


def measure_cell_reference(
    items: list[SourceItem],
    options: IngestOptions,
    sample: int = CELL_REFERENCE_SAMPLE,
    workers: int = 1,
) -> float:
    """The dataset's reference nucleus size (stored pixels): the median over an evenly
    spaced sample of its listed images (the same sample on every run, whatever the
    number of ``workers`` that decode it)."""
    candidates = [item for item in items if item.rejection is None and item.boxes is None]
    if len(candidates) > sample:
        picks = np.linspace(0, len(candidates) - 1, sample).round().astype(int)
        candidates = [candidates[k] for k in picks]
    if workers <= 1 or len(candidates) < 2 * _SAMPLE_CHUNK:
        workers, size = 1, max(1, len(candidates))
    else:
        size = _SAMPLE_CHUNK
    found = [
        extent
        for chunk in _map_batches(_sample_extents, _batches(candidates, size), options, workers)
        for extent in chunk
    ]
    extents = [extent for extent in found if extent is not None]
    try:
        return reference_extent(extents)
    except ValueError:
        raise ValueError(
            f"dataset {options.dataset}: crop: cell found no white cell in {len(candidates)} "
            f"sampled images under {options.root}; set cell_reference or use crop: center"
        ) from None


# sampled images per worker task when the reference is measured in parallel
_SAMPLE_CHUNK = 16


def _with_cell_reference(
    items: list[SourceItem], options: IngestOptions, workers: int = 1
) -> IngestOptions:
    """``options`` with the dataset's measured reference nucleus size (crop: cell, auto)."""
    reference = measure_cell_reference(items, options, workers=workers)
    log.info(
        "%s: reference nucleus size %.1f px (median of a sample); crops of %.0f px",
        options.dataset,
        reference,
        reference * options.cell_crop_factor,
    )
    return replace(options, cell_reference=reference)


def options_from_config(config: dict[str, Any], dataset: str, data_root: Path) -> IngestOptions:
    spec = config["datasets"][dataset]
    reference = spec.get("cell_reference", "auto")
    return IngestOptions(
        dataset=dataset,
        domain=spec["domain"],
        root=str(data_root / spec["path"]),
        data_prefix=spec["path"],
        image_size=config["image_size"],
        max_pixels=config["ingest"]["max_image_pixels"],
        formats=tuple(config["ingest"]["formats"]),
        box_margin=spec.get("box_margin", 0.15),
        crop=spec.get("crop", "center"),
        cell_crop_factor=float(spec.get("cell_crop_factor", 2.0)),
        cell_reference=None if reference == "auto" else float(reference),
        read_timeout_s=config["ingest"]["read_timeout_s"],
    )


def run_ingest(
    config: dict[str, Any], dataset: str, data_root: Path, workers: int = 1
) -> tuple[pd.DataFrame, np.ndarray]:
    """List and ingest one configured dataset."""
    options = options_from_config(config, dataset, data_root)
    items = list_dataset(
        Path(options.root),
        config["datasets"][dataset],
        tuple(config["ingest"]["extensions"]),
        ListingOptions.from_config(config, data_root),
    )
    log.info("%s: %d source entries listed under %s", dataset, len(items), options.root)
    return ingest_dataset(items, options, workers)


QUARANTINE_COLUMNS = [
    "dataset",
    "record_id",
    "source_path",
    "source_label",
    "reason_code",
    "reason",
]


def quarantine_table(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest.loc[manifest["status"] == "quarantined", QUARANTINE_COLUMNS].reset_index(
        drop=True
    )


def write_outputs(
    manifest: pd.DataFrame,
    cache: np.ndarray,
    manifest_path: str,
    cache_path: str,
    quarantine_path: str,
) -> None:
    Path(manifest_path).parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(manifest_path, index=False)
    np.save(cache_path, cache)
    quarantine_table(manifest).to_csv(quarantine_path, index=False)


def ingest_to_files(
    config: dict[str, Any],
    dataset: str,
    workers: int,
    out_manifest: str,
    out_images: str,
    out_quarantine: str,
) -> pd.DataFrame:
    """The ingest stage of one dataset, from the config to its three outputs."""
    from hemaflow.config import resolve_data_root

    manifest, cache = run_ingest(config, dataset, resolve_data_root(config), workers)
    write_outputs(manifest, cache, out_manifest, out_images, out_quarantine)
    counts = manifest["status"].value_counts().to_dict()
    log.info("%s: wrote %d rows (%s), cache %s", dataset, len(manifest), counts, cache.shape)
    for _, row in quarantine_table(manifest).iterrows():
        log.warning(
            "quarantined %s: %s (%s)", row["source_path"], row["reason"], row["reason_code"]
        )
    return manifest
