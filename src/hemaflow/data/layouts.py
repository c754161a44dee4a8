"""Enumerate the source items of a dataset, one function per layout.

A listing never decodes images. Problems visible from the listing alone (a CSV row that
names a missing file, several labels in one cell, an empty label, a frame without its
label file) become items that carry their rejection, so they reach the manifest and the
quarantine report instead of vanishing.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hemaflow.errors import HemaflowError

NormalizedBox = tuple[float, float, float, float]  # YOLO cx, cy, w, h in [0, 1]


@dataclass
class SourceItem:
    """One source file; ``boxes`` set means one crop per box (detection frames)."""

    rel_path: str  # relative to the dataset folder, '/' separated
    source_label: str | None = None
    fine_label: str | None = None
    boxes: list[NormalizedBox] | None = None
    rejection: tuple[str, str] | None = None  # (code, message) found while listing
    notes: list[str] = field(default_factory=list)


class LayoutError(HemaflowError):
    """A dataset's files cannot be listed as configured (names the file and reason)."""


def _is_image_name(name: str, extensions: tuple[str, ...]) -> bool:
    return os.path.splitext(name)[1].lower() in extensions


def _walk_files(root: Path) -> list[str]:
    """Every regular file below root, relative, sorted, '/' separated."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in files:
            found.append(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
    return sorted(found)


def list_imagefolder(
    root: Path, spec: dict[str, Any], extensions: tuple[str, ...]
) -> list[SourceItem]:
    """Label = first folder below the dataset root; fine label from a file-name regex."""
    regex = re.compile(spec["fine_label_regex"]) if spec.get("fine_label_regex") else None
    items = []
    for rel in _walk_files(root):
        parts = rel.split("/")
        name = parts[-1]
        label = parts[0] if len(parts) > 1 else None
        item = SourceItem(rel_path=rel, source_label=label)
        if label is None:
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


def list_csv(root: Path, spec: dict[str, Any], extensions: tuple[str, ...]) -> list[SourceItem]:
    """A label table maps ids or file names to labels; every row and every file is
    accounted for (missing files, unlisted files, empty and multiple labels)."""
    table = root / spec["csv"]
    images_dir = spec.get("images_dir", ".")
    codes = {str(k): v for k, v in spec.get("label_codes", {}).items()}
    separator = spec.get("multi_label_separator", ",")
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = rows[0].keys() if rows else []
    except OSError as exc:
        raise LayoutError(f"{table}: cannot read label table: {exc.strerror}") from None
    for column in (spec["id_column"], spec["label_column"]):
        if rows and column not in header:
            raise LayoutError(
                f"{table}: no column {column!r} (columns: {', '.join(map(repr, header))})"
            )
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
        rel = os.path.normpath(os.path.join(images_dir, name)).replace(os.sep, "/")
        parts = [raw_label]
        if separator and separator in raw_label:
            # "NEUTROPHIL, NEUTROPHIL" names two cells of one type: still one label.
            parts = sorted({part.strip() for part in raw_label.split(separator) if part.strip()})
        label = codes.get(parts[0], parts[0]) if len(parts) == 1 else raw_label
        item = SourceItem(rel_path=rel, source_label=label or None)
        if not (root / rel).is_file():
            item.rejection = ("missing_file", f"{where}: names {rel!r}, which does not exist")
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
    image_root = root / images_dir
    listed = set(by_file)
    for rel_in_images in _walk_files(image_root):
        rel = os.path.normpath(os.path.join(images_dir, rel_in_images)).replace(os.sep, "/")
        if rel in listed:
            continue
        if not _is_image_name(rel, extensions):
            continue  # documentation and licence files next to the images
        items.append(
            SourceItem(rel_path=rel, rejection=("unlisted", f"not listed in {spec['csv']}"))
        )
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


def list_yolo(root: Path, spec: dict[str, Any], extensions: tuple[str, ...]) -> list[SourceItem]:
    """Detection frames: each box of ``box_class`` becomes one crop; no cell-type label."""
    images_dir = spec.get("images_dir", "images")
    labels_dir = root / spec.get("labels_dir", "labels")
    wanted = int(spec.get("box_class", 0))
    items = []
    for rel_in_images in _walk_files(root / images_dir):
        rel = f"{images_dir}/{rel_in_images}"
        item = SourceItem(rel_path=rel)
        items.append(item)
        if not _is_image_name(rel, extensions):
            item.rejection = ("unsupported_extension", "not an image extension")
            continue
        label_file = labels_dir / (os.path.splitext(rel_in_images)[0] + ".txt")
        label_rel = os.path.relpath(label_file, root).replace(os.sep, "/")
        try:
            text = label_file.read_text()
        except FileNotFoundError:
            item.rejection = ("no_label_file", f"no YOLO label file {label_rel!r}")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            item.rejection = ("unreadable_labels", f"cannot read {label_rel!r}: {exc}")
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


def list_dataset(root: Path, spec: dict[str, Any], extensions: tuple[str, ...]) -> list[SourceItem]:
    return LISTERS[spec["layout"]](root, spec, tuple(e.lower() for e in extensions))


def dataset_input_files(root: Path, spec: dict[str, Any]) -> list[str]:
    """Files whose change must rerun this dataset's ingest (for the workflow's inputs)."""
    layout = spec["layout"]
    if layout == "imagefolder":
        return [str(root / rel) for rel in _walk_files(root)]
    images_dir = root / spec.get("images_dir", ".")
    files = [str(images_dir / rel) for rel in _walk_files(images_dir)]
    if layout == "csv":
        files.append(str(root / spec["csv"]))
    else:
        labels_dir = root / spec.get("labels_dir", "labels")
        files += [str(labels_dir / rel) for rel in _walk_files(labels_dir)]
    return sorted({os.path.normpath(f) for f in files})
