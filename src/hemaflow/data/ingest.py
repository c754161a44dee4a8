"""Ingest one dataset: list, decode once, hash, crop, resize into an image cache, and
write a manifest row for every source file or crop, accepted or quarantined."""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Iterator
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
from hemaflow.data.layouts import ListingOptions, SourceItem, list_dataset
from hemaflow.dedup.phash import phash

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "record_id",
    "image_id",
    "sha256",
    "dataset",
    "domain",
    "source_path",
    "source_path_base",
    "link_target",
    "source_label",
    "fine_label",
    "source_group",
    "box_x0",
    "box_y0",
    "box_x1",
    "box_y1",
    "width",
    "height",
    "format",
    "mode",
    "status",
    "reason_code",
    "reason",
    "cache_index",
    "phash",
]


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
    path = str(Path(options.root) / item.rel_path)
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


# Work is shipped to worker processes in batches whose images come back as one array:
# one pickle per batch instead of one per image keeps the parent process nearly idle.
_BATCH = 64
_worker_options: IngestOptions | None = None


def _init_worker(options: IngestOptions) -> None:
    global _worker_options
    _worker_options = options


def _process_batch(batch: list[SourceItem]) -> tuple[list[list[dict[str, Any]]], np.ndarray | None]:
    assert _worker_options is not None
    return _pack(process_items(batch, _worker_options))


def _pack(results: list[list[tuple[dict[str, Any], np.ndarray | None]]]):
    """Rows per item, with ``_image`` numbering the item's images in one stacked array."""
    rows, images = [], []
    for item_results in results:
        item_rows = []
        for row, image in item_results:
            row["_image"] = -1 if image is None else len(images)
            if image is not None:
                images.append(image)
            item_rows.append(row)
        rows.append(item_rows)
    return rows, (np.stack(images) if images else None)


def _map_batches(
    function, items: list[SourceItem], size: int, options: IngestOptions, workers: int
) -> Iterator:
    """``function`` of each batch of ``size`` items, in order: in this process with one
    worker, else in a pool of forked workers that hold ``options``."""
    batches = [items[k : k + size] for k in range(0, len(items), size)]
    if workers <= 1:
        _init_worker(options)
        yield from (function(batch) for batch in batches)
        return
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=(options,)) as pool:
        yield from pool.imap(function, batches)


def _iterate(items: list[SourceItem], options: IngestOptions, workers: int) -> Iterator:
    """Yields (rows of one item..., stacked images of a batch) in listing order."""
    return _map_batches(_process_batch, items, _BATCH, options, workers)


def ingest_dataset(
    items: list[SourceItem], options: IngestOptions, workers: int = 1
) -> tuple[pd.DataFrame, np.ndarray]:
    """Process every listed item; returns the manifest and the (N, S, S, 3) uint8 cache,
    whose row k is the image of the manifest row with ``cache_index == k``."""
    if options.crop == "cell" and options.cell_reference is None:
        options = _with_cell_reference(items, options, workers)
    rows: list[dict[str, Any]] = []
    image_batches: list[np.ndarray] = []
    cached = 0
    done = 0
    start = time.monotonic()
    report_every = max(500, len(items) // 20)
    next_report = report_every
    for batch_rows, batch_images in _iterate(items, options, workers):
        for item_rows in batch_rows:
            for row in item_rows:
                local = row.pop("_image")
                row["cache_index"] = -1 if local < 0 else cached + local
                rows.append(row)
        if batch_images is not None:
            image_batches.append(batch_images)
            cached += len(batch_images)
        done += len(batch_rows)
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
    size = options.image_size
    if image_batches:
        cache = np.concatenate(image_batches)
    else:
        cache = np.zeros((0, size, size, 3), np.uint8)
    return manifest_frame(rows), cache


def manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    # Built apart: pandas would store 64-bit hashes mixed with None as float64 (53 bits).
    hashes = pd.array([row.get("phash") for row in rows], dtype="UInt64")
    frame = pd.DataFrame(
        [{k: v for k, v in row.items() if k != "phash"} for row in rows],
        columns=[c for c in MANIFEST_COLUMNS if c != "phash"],
    )
    frame["phash"] = hashes
    for column in ("box_x0", "box_y0", "box_x1", "box_y1", "width", "height"):
        frame[column] = frame[column].astype("Int64")
    frame["cache_index"] = frame["cache_index"].astype("int64")
    for column in (
        "image_id",
        "sha256",
        "source_path_base",
        "link_target",
        "source_label",
        "fine_label",
        "source_group",
        "format",
        "mode",
        "reason_code",
        "reason",
    ):
        frame[column] = frame[column].astype("string")
    return frame


# Up to this many images, evenly spaced over the listing, set a dataset's cell scale.
CELL_REFERENCE_SAMPLE = 200


def _sample_extents(batch: list[SourceItem]) -> list[float | None]:
    """The nucleus extent (stored pixels) of each sampled item, None where it has none;
    their cells found a stack at a time (:func:`find_cells`)."""
    options = _worker_options
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
                str(Path(options.root) / item.rel_path), timeout_s=options.read_timeout_s
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
        for chunk in _map_batches(_sample_extents, candidates, size, options, workers)
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
