"""Canonical classes from the class map: one lookup shared by dedup and subgroup."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

UNMAPPED = "__unmapped__"


def lookup_class(
    class_map: Mapping[str, str | None], fine_label: Any, source_label: Any
) -> str | None:
    """Fine label first, then source label; ``UNMAPPED`` when neither is in the map,
    None when the map drops the label on purpose (maps it to null) or there is no label."""
    for label in (fine_label, source_label):
        if isinstance(label, str) and label in class_map:
            return class_map[label]
    if not isinstance(source_label, str) and not isinstance(fine_label, str):
        return None
    return UNMAPPED


def canonical_classes(manifest: pd.DataFrame, config: Mapping[str, Any]) -> pd.Series:
    """Canonical class per row (object Series): a class, None (unlabelled or dropped on
    purpose) or ``UNMAPPED``."""
    values = []
    datasets = config["datasets"]
    for dataset, fine, source in zip(
        manifest["dataset"], manifest["fine_label"], manifest["source_label"], strict=True
    ):
        if not datasets[dataset]["labelled"]:
            values.append(None)
            continue
        mapping = config["class_map"].get(dataset, {})
        values.append(lookup_class(mapping, _none_if_na(fine), _none_if_na(source)))
    return pd.Series(values, index=manifest.index, dtype=object)


def unmapped_labels(manifest: pd.DataFrame, classes: pd.Series) -> dict[str, list[str]]:
    """dataset -> sorted labels that the class map misses (fine/source as looked up)."""
    missing: dict[str, set[str]] = {}
    rows = manifest.loc[classes == UNMAPPED]
    for dataset, fine, source in zip(rows["dataset"], rows["fine_label"], rows["source_label"]):
        fine, source = _none_if_na(fine), _none_if_na(source)
        missing.setdefault(dataset, set()).add(_label_text(fine, source))
    return {dataset: sorted(labels) for dataset, labels in missing.items()}


def _label_text(fine: Any, source: Any) -> str:
    return f"{source} (fine label {fine})" if fine and source else str(source or fine)


def labels_missing_from_class_map(
    config: Mapping[str, Any], data_root: Path
) -> dict[str, list[str]]:
    """dataset -> sorted labels of listed files that the class map misses, found from
    the listings alone (folder names, label columns, file-name fine labels; nothing is
    decoded), so that a run can stop before any job instead of after ingest and dedup."""
    from hemaflow.data.layouts import list_dataset
    from hemaflow.data.listing import ListingOptions

    options = ListingOptions.from_config(dict(config), data_root)
    extensions = tuple(config["ingest"]["extensions"])
    missing: dict[str, set[str]] = {}
    for dataset, spec in config["datasets"].items():
        if not spec["labelled"]:
            continue
        mapping = config["class_map"].get(dataset, {})
        for item in list_dataset(data_root / spec["path"], spec, extensions, options):
            if item.rejection is not None:
                continue
            if lookup_class(mapping, item.fine_label, item.source_label) == UNMAPPED:
                label = _label_text(item.fine_label, item.source_label)
                missing.setdefault(dataset, set()).add(label)
    return {dataset: sorted(labels) for dataset, labels in missing.items()}


def _none_if_na(value: Any) -> Any:
    return (
        None
        if value is None or value is pd.NA or (isinstance(value, float) and value != value)
        else value
    )
