"""Canonical classes from the class map: one lookup shared by dedup and subgroup."""

from __future__ import annotations

from collections.abc import Mapping
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
        label = f"{source} (fine label {fine})" if fine and source else (source or fine)
        missing.setdefault(dataset, set()).add(str(label))
    return {dataset: sorted(labels) for dataset, labels in missing.items()}


def _none_if_na(value: Any) -> Any:
    return (
        None
        if value is None or value is pd.NA or (isinstance(value, float) and value != value)
        else value
    )
