"""Which domain is mapped onto which: the normalization plan.

Two policies, as in the reference study and its simpler variant:

- ``target``: every other domain is mapped onto one target domain (``auto``: the domain
  with the most kept images).
- ``per_class_majority``: for each canonical class, the domain with the most images of
  it is that class's target and every other domain's images of the class are mapped onto
  it. Unlabelled domains follow the overall target.

A CycleGAN model is trained per domain pair and gives both directions, so the plan lists
pairs (oriented the way most images go) and, per domain and class, the domain to map to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

METHODS = ("none", "reinhard", "macenko", "cyclegan")
DIRECTIONS = ("target", "per_class_majority")
UNLABELLED = "unlabelled"


def pair_name(source: str, target: str) -> str:
    return f"{source}_to_{target}"


def make_plan(counts: pd.DataFrame, target: str = "auto", direction: str = "target") -> dict:
    """counts: the subgroup stage's counts.csv (canonical_class, domain, train, ..., total).

    Returns a JSON-serialisable dict: target, direction, ``pairs`` (list of [source,
    target] in the orientation of most mapped images) and ``mapping``
    {domain: {class: destination domain}} for every (domain, class) present.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"normalization.direction: {direction!r} not in {DIRECTIONS}")
    totals = counts.groupby("domain")["total"].sum().sort_index()
    if totals.empty:
        raise ValueError("no kept images: nothing to normalize")
    if target == "auto":
        # most images; ties broken by name so that the plan is deterministic
        target = sorted(totals.index, key=lambda d: (-totals[d], d))[0]
    elif target not in totals.index:
        raise ValueError(
            f"normalization.target: domain {target!r} has no kept images "
            f"(domains: {', '.join(totals.index)})"
        )
    mapping: dict[str, dict[str, str]] = {}
    for row in counts.itertuples(index=False):
        destination = target
        if direction == "per_class_majority" and row.canonical_class != UNLABELLED:
            of_class = counts.loc[counts["canonical_class"] == row.canonical_class]
            of_class = of_class.groupby("domain")["total"].sum()
            destination = sorted(of_class.index, key=lambda d: (-of_class[d], d))[0]
        mapping.setdefault(row.domain, {})[row.canonical_class] = destination
    flows: dict[frozenset, dict[tuple[str, str], int]] = {}
    for row in counts.itertuples(index=False):
        destination = mapping[row.domain][row.canonical_class]
        if destination != row.domain:
            key = frozenset((row.domain, destination))
            flow = flows.setdefault(key, {})
            flow[(row.domain, destination)] = flow.get((row.domain, destination), 0) + row.total
    pairs = []
    for flow in flows.values():
        (source, destination), _ = sorted(flow.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        pairs.append([source, destination])
    return {
        "target": target,
        "direction": direction,
        "pairs": sorted(pairs),
        "mapping": {d: dict(sorted(m.items())) for d, m in sorted(mapping.items())},
    }


def pairs_of_domain(plan: Mapping[str, Any], domain: str) -> list[tuple[str, str]]:
    """The plan's pairs that involve ``domain``."""
    return [tuple(p) for p in plan["pairs"] if domain in p]


def destination(plan: Mapping[str, Any], domain: str, canonical_class: Any) -> str:
    cls = canonical_class if isinstance(canonical_class, str) else UNLABELLED
    by_class = plan["mapping"].get(domain, {})
    return by_class.get(cls, plan["target"])
