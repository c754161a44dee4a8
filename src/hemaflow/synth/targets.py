"""Quality targets: does a class's generator deserve to pad the training set?

A class is padded with its gated synthetic images only if its generator met the targets
of its route (``synthesis.quality_targets.<route>``), measured against the class's real
VALIDATION images (``evaluate.VALIDATION_SPLITS``: val and the training images that
``subsample`` held out, never test):

- ``precision``, ``recall``: k-NN precision and recall of the accepted synthetic images
  (at least the target);
- ``kid``: their KID (at most the target);
- ``diversity_ratio``: their LPIPS diversity over the real images' own (at least);
- ``acceptance``: the share of the generator's candidates that passed the quality gate
  (at least).

A class that missed any target is balanced by sampling (its real training images are
repeated) rather than padded with images that fail the bar. A target whose metric could
not be measured (too few images, no validation images) counts as missed, with the reason:
an unmeasured generator is not trusted. A target set to null is not checked."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd

from hemaflow.errors import ConfigError
from hemaflow.synth.quality import JUDGE_TOO_STRICT

#: metric -> direction of its target: ``min`` = the value must reach it, ``max`` = stay under
TARGET_DIRECTIONS = {
    "precision": "min",
    "recall": "min",
    "kid": "max",
    "diversity_ratio": "min",
    "acceptance": "min",
}
TARGET_ROUTES = ("cwgan", "fewshot")
SYNTHETIC, SAMPLING, UNBALANCED = "synthetic", "sampling", "none"


@dataclass(frozen=True)
class QualityTargets:
    """The targets of one route; None = not checked."""

    precision: float | None = None
    recall: float | None = None
    kid: float | None = None
    diversity_ratio: float | None = None
    acceptance: float | None = None

    @classmethod
    def from_config(cls, section: Mapping[str, Any], route: str) -> QualityTargets:
        """``section``: ``synthesis.quality_targets``; the targets of ``route``."""
        if route not in TARGET_ROUTES:
            raise ValueError(f"route {route!r} has no quality targets (one of {TARGET_ROUTES})")
        values = section.get(route, {}) or {}
        for key, value in values.items():
            where = f"synthesis.quality_targets.{route}.{key}"
            if key not in TARGET_DIRECTIONS:
                raise ConfigError(where, f"unknown target (known: {', '.join(TARGET_DIRECTIONS)})")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(where, f"expected a number >= 0 or null, got {value!r}")
            if key in ("precision", "recall", "acceptance") and value > 1:
                raise ConfigError(where, f"a share: must be in [0, 1], got {value!r}")
        return cls(**{k: (None if v is None else float(v)) for k, v in values.items()})

    @classmethod
    def defaults(cls, route: str) -> QualityTargets:
        """The targets of ``route`` that a config without ``synthesis.quality_targets``
        gets: the schema's defaults (for benches, which judge by the workflow's bar)."""
        from hemaflow.config import load_schema

        synthesis = load_schema()["properties"]["synthesis"]["properties"]
        routes = synthesis["quality_targets"]["properties"]
        if route not in routes:
            raise ValueError(f"route {route!r} has no quality targets (one of {TARGET_ROUTES})")
        properties = routes[route]["properties"]
        return cls.from_config({route: {k: v["default"] for k, v in properties.items()}}, route)

    def checked(self) -> dict[str, float]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def quality_measures(metrics: Mapping[str, Any], acceptance: float | None) -> dict[str, float]:
    """The five measures of the targets from ``evaluate.class_metrics`` output and the
    gate's acceptance rate; NaN where not measured."""
    nan = float("nan")
    diversity, real_diversity = (
        _finite(metrics.get("lpips_diversity")),
        _finite(metrics.get("real_lpips_diversity")),
    )
    ratio = diversity / real_diversity if diversity is not None and real_diversity else nan
    measures = {name: _finite(metrics.get(name)) for name in ("precision", "recall", "kid")}
    measures["diversity_ratio"] = ratio
    measures["acceptance"] = _finite(acceptance)
    return {name: nan if value is None else value for name, value in measures.items()}


def missed_targets(measures: Mapping[str, Any], targets: QualityTargets) -> list[str]:
    """One line per missed target, with the value and the target (``kid 0.31 > 0.15``),
    or ``precision not measured (target >= 0.5)``."""
    missed = []
    for name, target in targets.checked().items():
        value = _finite(measures.get(name))
        bound = ">=" if TARGET_DIRECTIONS[name] == "min" else "<="
        if value is None:
            missed.append(f"{name} not measured (target {bound} {target:g})")
        elif TARGET_DIRECTIONS[name] == "min" and value < target:
            missed.append(f"{name} {value:.3g} < {target:g}")
        elif TARGET_DIRECTIONS[name] == "max" and value > target:
            missed.append(f"{name} {value:.3g} > {target:g}")
    return missed


def balancing_decision(
    route: str,
    measures: Mapping[str, Any],
    targets: QualityTargets,
    require_quality: bool = True,
    not_measured: str = "",
) -> dict[str, Any]:
    """How a generated class is balanced: ``synthetic`` (padded with its gated images)
    if its generator met every target or ``require_quality`` is false, else ``sampling``
    (its real training images repeated). ``missed``: the missed targets, ``; ``-joined,
    followed once by ``not_measured`` (why a metric could not be measured) if one was
    not."""
    missed = missed_targets(measures, targets)
    met = not missed
    if met:
        balanced_by, reason = SYNTHETIC, "quality targets met"
    elif not require_quality:
        balanced_by = SYNTHETIC
        reason = "quality targets missed, padded anyway: synthesis.require_quality is false"
    else:
        balanced_by = SAMPLING
        reason = "quality targets missed: real training images repeated instead"
    if not_measured and any("not measured" in line for line in missed):
        missed.append(not_measured)
    return {
        "route": route,
        "targets_met": met,
        "missed": "; ".join(missed),
        "balanced_by": balanced_by,
        "reason": reason,
    }


BALANCING_COLUMNS = (
    "canonical_class",
    "route",
    "count",
    "to_generate",
    "targets_met",
    "missed",
    "balanced_by",
    "synthetic_used",
    "oversampled",
    "reason",
    "validation_images",
    "precision",
    "recall",
    "kid",
    "diversity_ratio",
    "acceptance",
    "judge_real_acceptance",
    "judge_verdict",
)


def balancing_table(
    routes: pd.DataFrame,
    quality: Mapping[str, Mapping[str, Any]],
    targets_section: Mapping[str, Any],
    require_quality: bool,
    judge: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per class of the route table: its route, whether its generator met the
    route's targets (which ones it missed, with the values) and how it is balanced:
    ``synthetic``, ``sampling``, or ``none`` (route none, or already at the target).
    ``quality``: class -> the validation measures of its generator (a
    ``validation_metrics.json``: ``measures``, ``validation_images``,
    ``synthetic_images``). ``judge``: the gate judge's acceptance of real validation
    images (``quality.real_acceptance``); a class it is too strict for says so in its
    reason, and nothing is lowered. ``synthetic_used`` / ``oversampled`` are filled in
    later by the balanced set."""
    verdicts = judge.set_index("canonical_class") if judge is not None else None
    rows = []
    for route_row in routes.itertuples():
        name, route = route_row.canonical_class, route_row.route
        row: dict[str, Any] = {
            "canonical_class": name,
            "route": route,
            "count": int(route_row.count),
            "to_generate": int(route_row.to_generate),
        }
        if verdicts is not None and name in verdicts.index:
            row["judge_real_acceptance"] = float(verdicts.loc[name, "acceptance"])
            row["judge_verdict"] = str(verdicts.loc[name, "verdict"])
        if route == "none" or route_row.to_generate <= 0:
            why = route_row.reason or ("route none" if route == "none" else "at the target")
            row.update(targets_met=None, missed="", balanced_by=UNBALANCED, reason=why)
            rows.append(row)
            continue
        if name not in quality:
            raise ValueError(f"{name}: generated by {route} but no validation metrics given")
        found = quality[name]
        measures = found["measures"]
        n_real = int(found.get("validation_images", 0))
        not_measured = (
            "no real validation images of the class"
            if n_real == 0
            else f"too few images to measure: {int(found.get('synthetic_images', 0))} "
            f"accepted synthetic, {n_real} real validation"
        )
        targets = QualityTargets.from_config(targets_section, route)
        row.update(balancing_decision(route, measures, targets, require_quality, not_measured))
        row.update({name_: measures.get(name_) for name_ in TARGET_DIRECTIONS})
        row["validation_images"] = n_real
        if row.get("judge_verdict") == JUDGE_TOO_STRICT:
            row["reason"] += (
                f"; the gate's judge is too strict for {name} (accepts "
                f"{row['judge_real_acceptance']:.0%} of its real validation images): "
                "its acceptance understates the generator, the gate is not lowered"
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in BALANCING_COLUMNS:
        if column not in table:
            table[column] = None
    return table[list(BALANCING_COLUMNS)]
