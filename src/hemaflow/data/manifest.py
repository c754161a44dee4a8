"""The manifest: one row per source file or crop, accepted or quarantined, with its
columns' types."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

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


_INTEGER_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1", "width", "height")
_STRING_COLUMNS = (
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
)


def manifest_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The manifest of rows (dicts keyed by :data:`MANIFEST_COLUMNS`)."""
    return manifest_from_columns({c: [row.get(c) for row in rows] for c in MANIFEST_COLUMNS})


def manifest_from_columns(columns: dict[str, Any]) -> pd.DataFrame:
    """The manifest of rows given column by column, each column built with its type:
    pandas would store 64-bit hashes mixed with None as float64 (53 bits)."""
    data: dict[str, Any] = {}
    for name in MANIFEST_COLUMNS:
        values = columns[name]
        if name in _INTEGER_COLUMNS:
            data[name] = pd.array(values, dtype="Int64")
        elif name in _STRING_COLUMNS:
            data[name] = pd.array(values, dtype="string")
        elif name == "phash":
            data[name] = pd.array(values, dtype="UInt64")
        elif name == "cache_index":
            data[name] = np.asarray(values, dtype=np.int64)
        else:  # typed as pandas infers them from the values (object when there are none)
            data[name] = values if len(values) else np.array([], dtype=object)
    return pd.DataFrame(data, columns=MANIFEST_COLUMNS)
