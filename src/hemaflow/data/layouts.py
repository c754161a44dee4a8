"""Enumerate the source items of a dataset, one function per layout.

A listing never decodes images. Problems visible from the listing alone (a CSV row that
names a missing file, several labels in one cell, an empty label, a frame without its
label file, a broken link, a FIFO) become items that carry their rejection, so they reach
the manifest and the quarantine report instead of vanishing or stopping the run: nothing
under a dataset's image folder disappears without a row. The item, the options and the
guarded folder walk that every layout shares live in :mod:`hemaflow.data.listing`.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
import os
import posixpath
import re
from pathlib import Path
from typing import Any

from PIL import Image

from hemaflow.data.listing import (
    LayoutError,
    ListingOptions,
    NormalizedBox,
    SourceItem,
    check_file,
    read_text,
    walk_entries,
)


def _is_image_name(name: str, extensions: tuple[str, ...]) -> bool:
    return os.path.splitext(name)[1].lower() in extensions


def list_imagefolder(
    root: Path,
    spec: dict[str, Any],
    extensions: tuple[str, ...],
    options: ListingOptions | None = None,
) -> list[SourceItem]:
    """Label = first folder below the dataset root; fine label from a file-name regex."""
    regex = re.compile(spec["fine_label_regex"]) if spec.get("fine_label_regex") else None
    items = []
    for entry in walk_entries(root, options):
        rel = entry.rel_path
        parts = rel.split("/")
        name = parts[-1]
        label = parts[0] if len(parts) > 1 else None
        item = SourceItem(rel_path=rel, source_label=label, link_target=entry.link_target)
        if entry.rejection is not None:
            item.rejection = entry.rejection
        elif label is None:
            item.rejection = ("no_label", "file lies outside any class folder")
        elif not _is_image_name(name, extensions):
            item.rejection = (
                "unsupported_extension",
                f"extension {os.path.splitext(name)[1] or '(none)'!r} is not an image extension",
            )
        if regex is not None:
            match = regex.search(name)
            if match and match.group("fine"):
                item.fine_label = match.group("fine")
        items.append(item)
    return items


def format_filename(pattern: str, raw_id: str) -> str:
    if re.search(r"%[0-9]*d", pattern):
        value = float(raw_id)
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"id {raw_id!r} is not a whole number")
        return pattern % int(value)
    return pattern % raw_id


def resolve_in_images_dir(images_dir: str, name: str) -> str | None:
    """The dataset-relative path of ``name`` inside ``images_dir``; None when the name is
    absolute or climbs out of it (``../``), so that a label table cannot read elsewhere."""
    name = name.replace("\\", "/")
    if posixpath.isabs(name) or re.match(r"^[A-Za-z]:", name):
        return None
    base = posixpath.normpath(images_dir.replace(os.sep, "/"))
    joined = posixpath.normpath(posixpath.join(base, name))
    if base == ".":
        inside = joined != "." and joined != ".." and not joined.startswith("../")
    else:
        inside = joined.startswith(base + "/")
    return joined if inside else None


def read_label_table(table: Path, root: Path, options: ListingOptions | None = None) -> list[dict]:
    """The rows of a CSV label table; LayoutError naming the file when it cannot be read."""
    text, rejection = read_text(table, root, options)
    if rejection is not None:
        raise LayoutError(f"{table}: cannot read label table: {rejection[1]}")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def csv_table_labels(
    root: Path, spec: dict[str, Any], options: ListingOptions | None = None
) -> set[str]:
    """Every label the table's label column gives (codes applied), without any file check."""
    codes = {str(k): v for k, v in spec.get("label_codes", {}).items()}
    labels = set()
    for row in read_label_table(root / spec["csv"], root, options):
        raw = (row.get(spec["label_column"]) or "").strip()
        if raw:
            labels.add(codes.get(raw, raw))
    return labels


def list_csv(
    root: Path,
    spec: dict[str, Any],
    extensions: tuple[str, ...],
    options: ListingOptions | None = None,
) -> list[SourceItem]:
    """A label table maps ids or file names to labels; every row and every file is
    accounted for (missing files, unlisted files, empty and multiple labels, ids that
    leave the image folder, non-image files next to the images)."""
    table = root / spec["csv"]
    images_dir = spec.get("images_dir", ".")
    codes = {str(k): v for k, v in spec.get("label_codes", {}).items()}
    separator = spec.get("multi_label_separator", ",")
    rows = read_label_table(table, root, options)
    header = rows[0].keys() if rows else []
    for column in (spec["id_column"], spec["label_column"]):
        if rows and column not in header:
            raise LayoutError(
                f"{table}: no column {column!r} (columns: {', '.join(map(repr, header))})"
            )
    entries = {
        posixpath.normpath(posixpath.join(images_dir, entry.rel_path)): entry
        for entry in walk_entries(root / images_dir, options, dataset_root=root)
    }
    by_file: dict[str, SourceItem] = {}
    items: list[SourceItem] = []
    for line_number, row in enumerate(rows, start=2):
        raw_id = (row.get(spec["id_column"]) or "").strip()
        raw_label = (row.get(spec["label_column"]) or "").strip()
        where = f"{spec['csv']} line {line_number}"
        if not raw_id:
            items.append(
                SourceItem(
                    rel_path=f"{spec['csv']}#line{line_number}",
                    rejection=("empty_id", f"{where}: empty id"),
                )
            )
            continue
        try:
            name = format_filename(spec["filename_pattern"], raw_id)
        except (TypeError, ValueError, OverflowError):
            items.append(
                SourceItem(
                    rel_path=f"{spec['csv']}#line{line_number}",
                    rejection=(
                        "bad_id",
                        f"{where}: id {raw_id!r} does not fit "
                        f"filename_pattern {spec['filename_pattern']!r}",
                    ),
                )
            )
            continue
        rel = resolve_in_images_dir(images_dir, name)
        if rel is None:
            items.append(
                SourceItem(
                    rel_path=f"{spec['csv']}#line{line_number}",
                    rejection=(
                        "bad_id",
                        f"{where}: id {raw_id!r} names {name!r}, which lies outside "
                        f"images_dir {images_dir!r}",
                    ),
                )
            )
            continue
        parts = [raw_label]
        if separator and separator in raw_label:
            # "NEUTROPHIL, NEUTROPHIL" names two cells of one type: still one label.
            parts = sorted({part.strip() for part in raw_label.split(separator) if part.strip()})
        label = codes.get(parts[0], parts[0]) if len(parts) == 1 else raw_label
        entry = entries.get(rel)
        item = SourceItem(
            rel_path=rel,
            source_label=label or None,
            link_target=entry.link_target if entry is not None else None,
        )
        if entry is None:
            what = "is not a file" if os.path.lexists(root / rel) else "does not exist"
            item.rejection = ("missing_file", f"{where}: names {rel!r}, which {what}")
        elif entry.rejection is not None:
            item.rejection = (entry.rejection[0], f"{where}: names {rel!r}: {entry.rejection[1]}")
        elif not label:
            item.rejection = ("empty_label", f"{where}: empty label")
        elif len(parts) > 1:
            item.rejection = ("multiple_labels", f"{where}: several cell types {parts}")
        elif parts[0] != raw_label:
            item.notes.append(f"{where}: label {raw_label!r} repeats one type")
        previous = by_file.get(rel)
        if previous is None:
            by_file[rel] = item
            items.append(item)
            continue
        # The file is named again: one manifest row per file, its verdict from all rows.
        if item.rejection is not None and item.rejection[0] == "missing_file":
            continue
        if previous.rejection is None and item.rejection is None:
            if previous.source_label == item.source_label:
                previous.notes.append(f"listed again at {where}")
                continue
            previous.rejection = (
                "conflicting_rows",
                f"{where}: {rel!r} listed again with label {item.source_label!r} "
                f"(was {previous.source_label!r})",
            )
        elif previous.rejection is None:
            previous.rejection = (
                "conflicting_rows",
                f"{where}: {rel!r} listed again, and that row is rejected: {item.rejection[1]}",
            )
        else:
            previous.notes.append(f"{where}: listed again ({item.rejection or item.source_label})")
    table_rel = posixpath.normpath(spec["csv"])
    for rel, entry in entries.items():
        if rel in by_file or rel == table_rel:
            continue
        item = SourceItem(rel_path=rel, link_target=entry.link_target)
        if entry.rejection is not None:
            item.rejection = entry.rejection
        elif not _is_image_name(rel, extensions):
            item.rejection = (
                "unsupported_extension",
                f"not an image extension, and not listed in {spec['csv']}",
            )
        else:
            item.rejection = ("unlisted", f"not listed in {spec['csv']}")
        items.append(item)
    return sorted(items, key=lambda it: it.rel_path)


def parse_yolo_labels(text: str, source: str) -> list[tuple[int, NormalizedBox]]:
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise LayoutError(f"{source} line {number}: expected 5 fields, got {len(fields)}")
        try:
            cls = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise LayoutError(f"{source} line {number}: not numbers: {line.strip()!r}") from None
        values = (cx, cy, w, h)
        if not all(math.isfinite(v) and -0.01 <= v <= 1.01 for v in values) or w <= 0 or h <= 0:
            raise LayoutError(
                f"{source} line {number}: box {values} is not a normalized box in [0, 1]"
            )
        boxes.append((cls, values))
    return boxes


def list_yolo(
    root: Path,
    spec: dict[str, Any],
    extensions: tuple[str, ...],
    options: ListingOptions | None = None,
) -> list[SourceItem]:
    """Detection frames: each box of ``box_class`` becomes one crop; no cell-type label."""
    images_dir = spec.get("images_dir", "images")
    labels_dir = root / spec.get("labels_dir", "labels")
    wanted = int(spec.get("box_class", 0))
    items = []
    for entry in walk_entries(root / images_dir, options, dataset_root=root):
        rel_in_images = entry.rel_path
        rel = f"{images_dir}/{rel_in_images}"
        item = SourceItem(rel_path=rel, link_target=entry.link_target)
        items.append(item)
        if entry.rejection is not None:
            item.rejection = entry.rejection
            continue
        if not _is_image_name(rel, extensions):
            item.rejection = ("unsupported_extension", "not an image extension")
            continue
        label_file = labels_dir / (os.path.splitext(rel_in_images)[0] + ".txt")
        label_rel = os.path.relpath(label_file, root).replace(os.sep, "/")
        text, rejection = read_text(label_file, root, options)
        if rejection is not None and rejection[0] == "missing_file":
            item.rejection = ("no_label_file", f"no YOLO label file {label_rel!r}")
            continue
        if rejection is not None:
            item.rejection = ("unreadable_labels", f"cannot read {label_rel!r}: {rejection[1]}")
            continue
        try:
            boxes = parse_yolo_labels(text, label_rel)
        except LayoutError as exc:
            item.rejection = ("bad_label_file", str(exc))
            continue
        item.boxes = [box for cls, box in boxes if cls == wanted]
        if not item.boxes:
            item.rejection = ("no_box", f"{label_rel!r} has no box of class {wanted}")
    return items


LISTERS = {"imagefolder": list_imagefolder, "csv": list_csv, "yolo": list_yolo}


def list_dataset(
    root: Path,
    spec: dict[str, Any],
    extensions: tuple[str, ...],
    options: ListingOptions | None = None,
) -> list[SourceItem]:
    """The items of one dataset, restricted to its ``include``/``exclude`` globs and
    ``frame_sizes`` (files left out by the config get no row: the user chose them)."""
    lister = LISTERS[spec["layout"]]
    items = lister(root, spec, tuple(e.lower() for e in extensions), options)
    items = [item for item in items if is_selected(item.rel_path, spec)]
    if spec.get("frame_sizes"):
        sizes = {tuple(size) for size in spec["frame_sizes"]}
        items = [item for item in items if _frame_size_fits(root, item, sizes)]
    if spec.get("group_regex"):
        pattern = re.compile(spec["group_regex"])
        for item in items:
            item.source_group = source_group(pattern, item.rel_path)
    return items


def source_group(pattern: re.Pattern[str], rel_path: str) -> str | None:
    """The source key of a file name (group ``source`` of the regex, else the whole
    match), e.g. ``NEUTROPHIL_original_12.jpg`` for every augmented copy
    ``NEUTROPHIL_original_12.jpg_<uuid>.jpg``; None when the name does not match."""
    if "#line" in rel_path:
        return None
    match = pattern.search(posixpath.basename(rel_path))
    if match is None:
        return None
    return match.group("source") if "source" in pattern.groupindex else match.group(0)


def is_selected(rel_path: str, spec: dict[str, Any]) -> bool:
    """Whether a dataset-relative path passes the dataset's ``include`` and ``exclude``
    globs (fnmatch: ``*`` also crosses folders). A label-table row that names no file
    (``labels.csv#line7``) always passes, so its rejection is reported."""
    if "#line" in rel_path:
        return True
    include, exclude = spec.get("include"), spec.get("exclude")
    if include and not any(fnmatch.fnmatchcase(rel_path, glob) for glob in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(rel_path, glob) for glob in exclude))


def _frame_size_fits(root: Path, item: SourceItem, sizes: set[tuple[int, int]]) -> bool:
    """Header-only size check; an entry already rejected or unreadable stays (ingest
    quarantines it with its own reason)."""
    if item.rejection is not None:
        return True
    try:
        with Image.open(root / item.rel_path) as image:
            return tuple(image.size) in sizes
    except (OSError, ValueError, Image.DecompressionBombError):
        return True


def _readable_files(
    folder: Path, root: Path, options: ListingOptions | None, spec: dict[str, Any] | None = None
) -> list[str]:
    files = []
    for entry in walk_entries(folder, options, dataset_root=root):
        path = folder / entry.rel_path
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        if entry.rejection is None and (spec is None or is_selected(rel, spec)):
            files.append(str(path))
    return files


def dataset_input_files(
    root: Path, spec: dict[str, Any], options: ListingOptions | None = None
) -> list[str]:
    """Files whose change must rerun this dataset's ingest (for the workflow's inputs).

    Only regular files that exist and that ingest may read: a broken link, a FIFO or a
    link leaving data_root is never an input (Snakemake would stop on a missing input);
    ingest quarantines it with its reason instead."""
    layout = spec["layout"]
    if layout == "imagefolder":
        return _readable_files(root, root, options, spec)
    files = _readable_files(root / spec.get("images_dir", "."), root, options, spec)
    if layout == "csv":
        table = root / spec["csv"]
        if check_file(table, root, options)[1] is None:
            files.append(str(table))
    else:
        files += _readable_files(root / spec.get("labels_dir", "labels"), root, options)
    return sorted({os.path.normpath(f) for f in files})
