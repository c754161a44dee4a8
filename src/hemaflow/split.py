"""Deterministic, stratified train/val/test split that keeps duplicate groups together."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def _stable_key(seed: int, group_id: str) -> str:
    """A platform-independent pseudo-random order for groups (no global RNG state)."""
    return hashlib.sha256(f"{seed}:{group_id}".encode()).hexdigest()


def allocate(n: int, ratios: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder counts per split summing to n (ties: train, then test, then val)."""
    quotas = {name: n * ratios[name] for name in SPLITS}
    counts = {name: int(np.floor(quotas[name])) for name in SPLITS}
    left = n - sum(counts.values())
    preference = {"train": 0, "test": 1, "val": 2}
    order = sorted(SPLITS, key=lambda s: (-(quotas[s] - counts[s]), preference[s]))
    for name in order[:left]:
        counts[name] += 1
    return counts


def stratified_group_split(
    strata: pd.Series, groups: pd.Series, ratios: Mapping[str, float], seed: int
) -> pd.Series:
    """Split label per row. Within each stratum (e.g. domain x class) whole groups are
    ordered by a seeded hash of their id and cut by the ratios, so every row of a group
    lands in the same split and the result depends only on the rows and the seed.

    A group whose rows sit in several strata is placed by its first stratum in sort order.
    """
    frame = pd.DataFrame({"stratum": strata.astype(str), "group": groups.astype(str)})
    group_stratum = frame.groupby("group")["stratum"].min()
    split_of_group: dict[str, str] = {}
    for _, members in group_stratum.groupby(group_stratum):
        ordered = sorted(members.index, key=lambda g: _stable_key(seed, g))
        counts = allocate(len(ordered), ratios)
        start = 0
        for name in SPLITS:
            for group in ordered[start : start + counts[name]]:
                split_of_group[group] = name
            start += counts[name]
    return frame["group"].map(split_of_group).rename("split")
