"""The shared ground of every dataset listing: items, options and the guarded walk.

A listing (one per layout, in :mod:`hemaflow.data.layouts`) turns a dataset folder into
:class:`SourceItem` rows. This module holds what all of them share: the item and its
rejection, the :class:`ListingOptions` from the config's ``ingest`` section, and the walk
that classifies every entry under a folder once (links followed within ``data_root``,
broken links, link loops, FIFOs and other special files turned into rejected entries),
plus the checked reads of a single named file or small text file.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
