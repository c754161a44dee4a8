"""Which generator balances which class: the route table.

As in the reference study, a class with more than ``large_min`` training images goes to
the classifier-guided conditional WGAN-GP (enough images to learn a class-conditional
model), a class with fewer than ``fewshot_max`` to the meta-learned few-shot GAN, and a
class in between (``fewshot_max`` to ``large_min`` inclusive) follows ``mid_route``. Every
class is filled up to the target count (the largest class by default)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.errors import ConfigError

log = logging.getLogger(__name__)

ROUTES = ("cwgan", "fewshot", "none")
MID_ROUTES = ("cwgan", "none")
ROUTE_COLUMNS = ("canonical_class", "count", "route", "target", "to_generate", "reason")


def route_for(count: int, large_min: int, fewshot_max: int, mid_route: str) -> str:
    """The route of a class with ``count`` training images."""
    if count > large_min:
        return "cwgan"
    if count < fewshot_max:
        return "fewshot"
    return mid_route


def check_settings(settings: Mapping[str, Any]) -> None:
    """The synthesis thresholds, with messages naming the key."""
    large_min, fewshot_max = settings["large_min"], settings["fewshot_max"]
    if fewshot_max > large_min + 1:
        raise ConfigError(
            "synthesis.fewshot_max",
            f"{fewshot_max} is above large_min ({large_min}) + 1: the routes would overlap",
        )
    if settings["mid_route"] not in MID_ROUTES:
        raise ConfigError(
            "synthesis.mid_route", f"{settings['mid_route']!r} is not one of {MID_ROUTES}"
        )
    target = settings.get("target", "largest")
    if target != "largest" and not (isinstance(target, int) and target > 0):
        raise ConfigError(
            "synthesis.target", f"expected 'largest' or a positive count, got {target!r}"
        )


def route_table(counts: Mapping[str, int], settings: Mapping[str, Any]) -> pd.DataFrame:
    """One row per class: its training count, route, target count and how many images to
    generate. ``settings``: large_min, fewshot_max, mid_route, target ('largest' or a
    count). A class without any training image cannot be synthesized (route none)."""
    check_settings(settings)
    target_setting = settings.get("target", "largest")
    largest = max(counts.values(), default=0)
    target = largest if target_setting == "largest" else int(target_setting)
    rows = []
    for name in sorted(counts):
        count = int(counts[name])
        route = route_for(
            count, settings["large_min"], settings["fewshot_max"], settings["mid_route"]
        )
        reason = ""
        if count == 0:
            route, reason = "none", "no training images"
        elif route == "none":
            reason = "mid_route is none"
        to_generate = max(0, target - count) if route != "none" else 0
        if route != "none" and to_generate == 0:
            reason = "already at the target"
        rows.append(
            {
                "canonical_class": name,
                "count": count,
                "route": route,
                "target": target,
                "to_generate": to_generate,
                "reason": reason,
            }
        )
    table = pd.DataFrame(rows, columns=list(ROUTE_COLUMNS))
    return table.astype({"count": "int64", "target": "int64", "to_generate": "int64"})


def generating(table: pd.DataFrame, route: str) -> list[str]:
    """Classes of ``route`` that need images."""
    chosen = table[(table["route"] == route) & (table["to_generate"] > 0)]
    return chosen["canonical_class"].tolist()


def meta_training_classes(table: pd.DataFrame, large_min: int) -> list[str]:
    """Task classes for the few-shot GAN's meta-training: the large classes."""
    return table.loc[table["count"] > large_min, "canonical_class"].tolist()


def subsample_train(index: pd.DataFrame, subsample: Mapping[str, int], seed: int) -> pd.DataFrame:
    """Keep ``n`` training rows of each class named in ``subsample`` (a seeded random
    choice); the other training rows of that class become ``held_out`` so that an
    experiment can evaluate on them. Other splits are untouched."""
    index = index.copy()
    for name, n in sorted(subsample.items()):
        rows = np.flatnonzero(
            (index["canonical_class"] == name).to_numpy() & (index["split"] == "train").to_numpy()
        )
        if len(rows) == 0:
            raise ConfigError(f"synthesis.subsample.{name}", "no training images of this class")
        if n > len(rows):
            log.warning(
                "synthesis.subsample.%s: %d requested, only %d training images: all kept",
                name,
                n,
                len(rows),
            )
            continue
        rng = np.random.default_rng([seed, *name.encode()])
        dropped = rng.permutation(rows)[n:]
        index.iloc[dropped, index.columns.get_loc("split")] = "held_out"
        log.info("subsampled %s to %d training images (%d held out)", name, n, len(dropped))
    return index


# The synthesis side of the ablation study: which generators balance the training set.
SYNTHESIS_VARIANTS = ("routed", "no_cwgan", "no_fewshot", "fewshot_all")


def ablate_routes(table: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The route table of an ablation variant: ``routed`` as routed; ``no_cwgan`` and
    ``no_fewshot`` leave the classes of that generator unbalanced (route ``none``);
    ``fewshot_all`` sends every class that needs images to the few-shot GAN. Counts,
    targets and needs are unchanged; ``reason`` says what the ablation did."""
    if variant not in SYNTHESIS_VARIANTS:
        raise ValueError(f"synthesis variant {variant!r} is not one of {SYNTHESIS_VARIANTS}")
    table = table.copy()
    if variant == "routed":
        return table
    if variant == "fewshot_all":
        changed = (table["to_generate"] > 0) & (table["route"] != "fewshot")
        new_route = "fewshot"
    else:
        dropped = "cwgan" if variant == "no_cwgan" else "fewshot"
        changed = table["route"] == dropped
        new_route = "none"
    table.loc[changed, "reason"] = [
        f"ablation {variant}: {old} -> {new_route}" for old in table.loc[changed, "route"]
    ]
    table.loc[changed, "route"] = new_route
    return table
