"""``results/summary.json``: the run's headline numbers in one file, for scripts.

Collected from the stages' own outputs (nothing is recomputed): data counts, the
normalization metrics per pair, the synthesis per class (route, gate counts, quality
targets met or missed with the values, how the class was balanced), the gate judge's
acceptance of real validation images per class, and the classifier's test metrics with
their confidence intervals."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from hemaflow.synth.quality import JUDGE_TOO_STRICT, JUDGE_UNCHECKED


def _records(path: str | None) -> list[dict[str, Any]]:
    if not path:
        return []
    return pd.read_csv(path, keep_default_na=False).to_dict(orient="records")


def _table(path: str | None) -> list[dict[str, Any]]:
    """Rows of a CSV with empty cells (not measured, not applicable) as null."""
    if not path:
        return []
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")


def synthesis_classes(gate: str | None, balancing: str | None) -> list[dict[str, Any]]:
    """Per class: the balancing decision (every class of the route table) with the gate
    counts of the generated classes."""
    gates = {row["canonical_class"]: row for row in _table(gate)}
    if not balancing:
        return list(gates.values())
    merged = []
    for row in _table(balancing):
        extra = gates.get(row["canonical_class"], {})
        row["missed"] = row["missed"].split("; ") if row["missed"] else []
        merged.append({**row, **{k: v for k, v in extra.items() if k not in row}})
    return merged


def gate_judge(real_acceptance: str | None) -> dict[str, Any]:
    """The gate judge's acceptance of real validation images per class, and the classes
    it is too strict for or could not be checked on."""
    rows = _table(real_acceptance)
    return {
        "classes": rows,
        "too_strict": [r["canonical_class"] for r in rows if r["verdict"] == JUDGE_TOO_STRICT],
        "unchecked": [r["canonical_class"] for r in rows if r["verdict"] == JUDGE_UNCHECKED],
    }


def headline(
    data_summary: str,
    classifier_evaluation: str,
    normalization_metrics: str | None = None,
    synthesis_gate: str | None = None,
    settings: Mapping[str, Any] | None = None,
    synthesis_balancing: str | None = None,
    gate_real_acceptance: str | None = None,
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
        "synthesis": synthesis_classes(synthesis_gate, synthesis_balancing),
        "gate_judge": gate_judge(gate_real_acceptance),
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
