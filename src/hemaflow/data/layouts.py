"""Enumerate the source items of a dataset, one function per layout.

A listing never decodes images. Problems visible from the listing alone (a CSV row that
names a missing file, several labels in one cell, an empty label, a frame without its
label file, a broken link, a FIFO) become items that carry their rejection, so they reach
the manifest and the quarantine report instead of vanishing or stopping the run: nothing
under a dataset's image folder disappears without a row.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from hemaflow.data.decode import RejectedImage, read_bytes
from hemaflow.errors import HemaflowError

NormalizedBox = tuple[float, float, float, float]  # YOLO cx, cy, w, h in [0, 1]
Rejection = tuple[str, str]  # (code, message)


@dataclass
class SourceItem:
    """One source file; ``boxes`` set means one crop per box (detection frames)."""

    rel_path: str  # relative to the dataset folder, '/' separated
    source_label: str | None = None
    fine_label: str | None = None
    boxes: list[NormalizedBox] | None = None
    rejection: Rejection | None = None  # found while listing
    notes: list[str] = field(default_factory=list)
    link_target: str | None = None  # the real file when reached through a symbolic link
    source_group: str | None = None  # files of one source (augmented copies) split together


class LayoutError(HemaflowError):
    """A dataset's files cannot be listed as configured (names the file and reason)."""


@dataclass(frozen=True)
class ListingOptions:
    """How a listing treats links and reads: from the config's ``ingest`` section.

    Links are followed when their real target lies under ``data_root`` or under the
    dataset folder's own real path (a dataset ``path`` that is itself a link is the
    user's explicit choice); others only when ``follow_links_outside`` is set."""

    data_root: Path | None = None  # None: the dataset folder itself
    follow_links_outside: bool = False
    read_timeout_s: float = 60.0

    @classmethod
    def from_config(cls, config: dict[str, Any], data_root: Path) -> ListingOptions:
        ingest = config["ingest"]
        return cls(
            data_root=Path(data_root),
            follow_links_outside=ingest["follow_links_outside"],
            read_timeout_s=ingest["read_timeout_s"],
        )


@dataclass(frozen=True)
class Entry:
    """One thing found under a folder: a regular file to read, or a rejected entry
    (a broken link, a link leaving data_root, a folder link loop, a FIFO, ...)."""

    rel_path: str  # relative to the walked folder, '/' separated
    link_target: str | None = None
    rejection: Rejection | None = None


_FILE_KINDS = (
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "special file")


class _LinkGuard:
    """Classifies symbolic links against the folders a listing may read."""

    def __init__(self, dataset_root: Path, options: ListingOptions):
        self.options = options
        self.data_root = os.path.realpath(options.data_root or dataset_root)
        self.allowed = {self.data_root, os.path.realpath(dataset_root)}

    def inside(self, real: str) -> bool:
        return any(
            real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.allowed
        )

    def follow(self, path: str) -> tuple[str, os.stat_result | None, Rejection | None]:
        """(real target, its stat, rejection) of the link at ``path``."""
        real = os.path.realpath(path)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return real, None, ("broken_link", f"symbolic link to {real!r}, which does not exist")
        except OSError as exc:
            return real, None, ("broken_link", f"symbolic link cannot be followed: {exc.strerror}")
        if not self.inside(real) and not self.options.follow_links_outside:
            return (
                real,
                info,
                (
                    "link_outside",
                    f"symbolic link to {real!r}, outside data_root {self.data_root!r} "
                    "(set ingest.follow_links_outside: true to follow it)",
                ),
            )
        return real, info, None


def walk_entries(
    root: Path, options: ListingOptions | None = None, *, dataset_root: Path | None = None
) -> list[Entry]:
    """Every entry below ``root``, sorted by relative path, each classified once.

    Links to files and folders are followed within the guard's limits (a folder link
    back to one of its own ancestors is a ``link_loop``); anything that is not a regular
    file becomes an entry with its rejection, never a silent omission."""
    options = options or ListingOptions()
    guard = _LinkGuard(dataset_root or root, options)
    entries: list[Entry] = []

    def visit(directory: str, prefix: str, real_dir: str, ancestors: frozenset[str], linked: bool):
        try:
            with os.scandir(directory) as scan:
                children = sorted(scan, key=lambda child: child.name)
        except OSError as exc:
            entries.append(
                Entry(
                    prefix.rstrip("/") or ".",
                    rejection=("unreadable", f"cannot list folder: {exc.strerror}"),
                )
            )
            return
        for child in children:
            rel = prefix + child.name
            real = posixpath.join(real_dir, child.name)
            if child.is_symlink():
                real, info, rejection = guard.follow(child.path)
                if rejection is not None:
                    entries.append(Entry(rel, link_target=real, rejection=rejection))
                elif stat.S_ISDIR(info.st_mode):
                    if real in ancestors:
                        entries.append(
                            Entry(
                                rel,
                                link_target=real,
                                rejection=(
                                    "link_loop",
                                    f"folder link to {real!r}, which contains the link (a loop)",
                                ),
                            )
                        )
                    else:
                        visit(child.path, rel + "/", real, ancestors | {real}, True)
                elif stat.S_ISREG(info.st_mode):
                    entries.append(Entry(rel, link_target=real))
                else:
                    entries.append(
                        Entry(
                            rel,
                            link_target=real,
                            rejection=(
                                "not_a_file",
                                f"symbolic link to a {_kind(info.st_mode)}, not a regular file",
                            ),
                        )
                    )
            elif child.is_dir(follow_symlinks=False):
                visit(child.path, rel + "/", real, ancestors | {real}, linked)
            elif child.is_file(follow_symlinks=False):
                entries.append(Entry(rel, link_target=real if linked else None))
            else:
                try:
                    mode = child.stat(follow_symlinks=False).st_mode
                except OSError:
                    mode = 0
                entries.append(
                    Entry(rel, rejection=("not_a_file", f"a {_kind(mode)}, not a regular file"))
                )

    real_root = os.path.realpath(root)
    visit(str(root), "", real_root, frozenset({real_root}), False)
    return sorted(entries, key=lambda entry: entry.rel_path)


def check_file(
    path: Path, root: Path, options: ListingOptions | None = None
) -> tuple[str | None, Rejection | None]:
    """(link target, rejection) of one named file, by the rules of :func:`walk_entries`;
    ``missing_file`` when nothing is there."""
    options = options or ListingOptions()
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None, ("missing_file", "does not exist")
    except OSError as exc:
        return None, ("unreadable", f"cannot stat: {exc.strerror}")
    target = None
    if stat.S_ISLNK(info.st_mode):
        target, info, rejection = _LinkGuard(root, options).follow(str(path))
        if rejection is not None:
            return target, rejection
    if not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else f"a {_kind(info.st_mode)}"
        return target, ("not_a_file", f"{what}, not a regular file")
    return target, None


def read_text(
    path: Path, root: Path, options: ListingOptions | None = None
) -> tuple[str | None, Rejection | None]:
    """A small text file (label table, YOLO labels), checked and read with the timeout."""
    options = options or ListingOptions()
    _, rejection = check_file(path, root, options)
    if rejection is not None:
        return None, rejection
    try:
        return read_bytes(str(path), timeout_s=options.read_timeout_s).decode("utf-8-sig"), None
    except RejectedImage as exc:
        return None, (exc.code, exc.message)
    except UnicodeDecodeError as exc:
        return None, ("unreadable", f"not UTF-8 text: {exc}")


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
