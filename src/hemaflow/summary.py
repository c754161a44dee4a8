"""``results/summary.json``: the run's headline numbers in one file, for scripts.

Collected from the stages' own outputs (nothing is recomputed): data counts, the
normalization metrics per pair, the synthesis gate per class, and the classifier's test
metrics with their confidence intervals."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd


def _records(path: str | None) -> list[dict[str, Any]]:
    if not path:
        return []
    return pd.read_csv(path, keep_default_na=False).to_dict(orient="records")


def headline(
    data_summary: str,
    classifier_evaluation: str,
    normalization_metrics: str | None = None,
    synthesis_gate: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    with open(data_summary) as handle:
        data = json.load(handle)
    with open(classifier_evaluation) as handle:
        evaluation = json.load(handle)
    metrics = (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "macro_sensitivity",
        "macro_specificity",
    )
    return {
        "settings": dict(settings or {}),
        "data": {
            "rows": data["rows"],
            "kept": data["kept"],
            "by_status": data["by_status"],
            "classes": data.get("classes"),
        },
        "normalization": _records(normalization_metrics),
        "synthesis": _records(synthesis_gate),
        "classifier": {
            "test_images": evaluation["n_images"],
            **{
                name: {
                    "value": evaluation[name],
                    "ci95": [evaluation[f"{name}_low"], evaluation[f"{name}_high"]],
                }
                for name in metrics
            },
        },
    }


def write_headline(out_path: str, **paths: Any) -> dict[str, Any]:
    summary = headline(**paths)
    with open(out_path, "w") as handle:
        json.dump(summary, handle, indent=2, default=str)
    return summary
