"""Duplicate groups across datasets and domains: exact (same content) and near (perceptual
hashes within a Hamming threshold), one deterministic representative per group, and a
policy for groups whose members carry different canonical classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hemaflow.dedup.dihedral import dihedral_hashes, dihedral_pairs, oriented_correlation
from hemaflow.dedup.hamming_search import near_pairs
from hemaflow.dedup.verify import shift_correlation
from hemaflow.labels import UNMAPPED

CONFLICT_POLICIES = ("drop", "majority", "keep")

ROLE_UNIQUE = "unique"
ROLE_REPRESENTATIVE = "representative"
ROLE_DUPLICATE = "duplicate"
ROLE_CONFLICT = "label_conflict"


@dataclass
class DedupResult:
    assignments: pd.DataFrame  # one row per candidate image: record_id, group_id, role, ...
    groups: pd.DataFrame  # one row per group of 2 or more
    pairs: pd.DataFrame  # near candidates with different content, verified or not


def _union_find(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Component label (smallest member index) per node; iterative, path-halving."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            if root_a < root_b:
                parent[root_b] = root_a
            else:
                parent[root_a] = root_b
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def _exact_pairs(image_ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    codes, _ = pd.factorize(image_ids)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    same = sorted_codes[1:] == sorted_codes[:-1]
    return order[:-1][same], order[1:][same]


def _dihedral_candidates(thumbnails: np.ndarray, near_threshold: int):
    """Pairs whose hashes are near once one image is flipped or rotated, with their
    oriented correlation; per unordered pair only its best orientation."""
    hashes = dihedral_hashes(thumbnails)
    left, right, distance, names = dihedral_pairs(hashes, near_threshold)
    correlation = oriented_correlation(thumbnails, left, right, names)
    if len(left):
        low, high = np.minimum(left, right), np.maximum(left, right)
        order = np.lexsort((-correlation, high, low))
        first = np.ones(len(order), dtype=bool)
        first[1:] = (low[order][1:] != low[order][:-1]) | (high[order][1:] != high[order][:-1])
        keep = order[first]
        keep.sort()
        left, right, distance = low[keep], high[keep], distance[keep]
        correlation, names = correlation[keep], names[keep]
    return left, right, distance, correlation, names


def find_duplicates(
    candidates: pd.DataFrame,
    near_threshold: int,
    conflict_policy: str = "drop",
    dataset_order: Sequence[str] = (),
    thumbnails: np.ndarray | None = None,
    min_correlation: float = -1.0,
    dihedral: bool = False,
    dihedral_min_correlation: float | None = None,
) -> DedupResult:
    """Group ``candidates`` (columns record_id, image_id, phash, dataset, source_path,
    width, height, canonical_class) and choose what to keep.

    Hash pairs within ``near_threshold`` bits are near duplicates when their
    ``thumbnails`` (row-aligned with candidates, see verify.gray_thumbnails) correlate at
    least ``min_correlation``; without thumbnails the hash alone decides. With
    ``dihedral`` (needs thumbnails), copies up to a flip, a 90-degree rotation or a tint
    are found too (see :mod:`hemaflow.dedup.dihedral`), verified at
    ``dihedral_min_correlation`` (default: ``min_correlation``).

    The representative of a group is the first member by: has a canonical class, larger
    stored image, dataset order in the config, source path, record id. Deterministic for a
    given set of inputs, whatever their order.
    """
    if conflict_policy not in CONFLICT_POLICIES:
        raise ValueError(f"dedup.conflict_policy: {conflict_policy!r} not in {CONFLICT_POLICIES}")
    frame = candidates.reset_index(drop=True)
    n = len(frame)
    hashes = frame["phash"].to_numpy(dtype=np.uint64)
    exact_left, exact_right = _exact_pairs(frame["image_id"].astype(str))
    near_left, near_right, distance = near_pairs(hashes, near_threshold)
    if thumbnails is not None and len(near_left):
        correlation = shift_correlation(thumbnails[near_left], thumbnails[near_right])
    else:
        correlation = np.full(len(near_left), np.nan, dtype=np.float32)
    orientation = np.full(len(near_left), "identity", dtype=object)
    if dihedral and thumbnails is not None and n > 1:
        turned = _dihedral_candidates(thumbnails, near_threshold)
        near_left = np.concatenate([near_left, turned[0]])
        near_right = np.concatenate([near_right, turned[1]])
        distance = np.concatenate([distance, turned[2]])
        correlation = np.concatenate([correlation, turned[3]])
        orientation = np.concatenate([orientation, turned[4]])
    same_content = frame["image_id"].astype(str).to_numpy()
    same_content = same_content[near_left] == same_content[near_right]
    turned_threshold = (
        min_correlation if dihedral_min_correlation is None else dihedral_min_correlation
    )
    threshold = np.where(orientation == "identity", min_correlation, turned_threshold)
    verified = same_content | (correlation >= threshold) | np.isnan(correlation)
    candidate_left, candidate_right = near_left, near_right
    near_left, near_right = near_left[verified], near_right[verified]
    component = _union_find(
        n, np.concatenate([exact_left, near_left]), np.concatenate([exact_right, near_right])
    )

    labels = frame["canonical_class"]
    has_class = labels.map(lambda v: isinstance(v, str) and v != UNMAPPED)
    rank_dataset = {name: k for k, name in enumerate(dataset_order)}
    priority = pd.DataFrame(
        {
            "no_class": (~has_class).astype(int),
            "neg_pixels": -(frame["width"].astype("float64") * frame["height"].astype("float64")),
            "dataset_rank": frame["dataset"].map(rank_dataset).fillna(len(rank_dataset)),
            "source_path": frame["source_path"].astype(str),
            "record_id": frame["record_id"].astype(str),
        }
    )
    order = priority.sort_values(list(priority.columns), kind="stable").index.to_numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)

    roles = np.full(n, ROLE_UNIQUE, dtype=object)
    kept_as = np.full(n, None, dtype=object)
    reasons = np.full(n, None, dtype=object)
    group_rows = []
    members_by_group: dict[int, list[int]] = {}
    for index, root in enumerate(component.tolist()):
        members_by_group.setdefault(root, []).append(index)
    record_ids = frame["record_id"].astype(str).to_numpy()
    image_ids = frame["image_id"].astype(str).to_numpy()
    for members in members_by_group.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda m: rank[m])
        classes = sorted({labels[m] for m in members if has_class[m]})
        exact = len({image_ids[m] for m in members}) == 1
        group_id = record_ids[members[0]]
        representative: int | None = members[0]
        action = "keep representative"
        if len(classes) > 1:
            counts = pd.Series([labels[m] for m in members if has_class[m]]).value_counts()
            majority = counts.index[0] if counts.iloc[0] * 2 > counts.sum() else None
            if conflict_policy == "drop" or (conflict_policy == "majority" and majority is None):
                representative = None
                action = "drop group (label conflict)"
            elif conflict_policy == "majority":
                representative = next(m for m in members if labels[m] == majority)
                action = f"keep majority class {majority}"
            else:
                action = "keep representative despite label conflict"
        for m in members:
            if representative is None:
                roles[m] = ROLE_CONFLICT
                reasons[m] = f"duplicate group {group_id} has several classes: {', '.join(classes)}"
            elif m == representative:
                roles[m] = ROLE_REPRESENTATIVE
            else:
                roles[m] = ROLE_DUPLICATE
                kept_as[m] = record_ids[representative]
                reasons[m] = f"duplicate of {record_ids[representative]}"
        group_rows.append(
            {
                "group_id": group_id,
                "kind": "exact" if exact else "near",
                "size": len(members),
                "datasets": ",".join(sorted({frame.at[m, "dataset"] for m in members})),
                "classes": ",".join(classes),
                "label_conflict": len(classes) > 1,
                "action": action,
                "kept": record_ids[representative] if representative is not None else "",
                "members": ";".join(record_ids[m] for m in members),
            }
        )
    group_of = np.array(
        [
            record_ids[members_by_group[c][0]] if len(members_by_group[c]) > 1 else record_ids[i]
            for i, c in enumerate(component.tolist())
        ]
    )
    assignments = pd.DataFrame(
        {
            "record_id": record_ids,
            "group_id": group_of,
            "group_size": [len(members_by_group[c]) for c in component.tolist()],
            "dedup_role": roles,
            "duplicate_of": kept_as,
            "dedup_reason": reasons,
        }
    )
    groups = (
        pd.DataFrame(
            group_rows,
            columns=[
                "group_id",
                "kind",
                "size",
                "datasets",
                "classes",
                "label_conflict",
                "action",
                "kept",
                "members",
            ],
        )
        .sort_values(["kind", "group_id"])
        .reset_index(drop=True)
    )
    keep = ~same_content
    pairs = pd.DataFrame(
        {
            "record_id_a": record_ids[candidate_left[keep]],
            "record_id_b": record_ids[candidate_right[keep]],
            "distance": distance[keep].astype(int),
            "correlation": correlation[keep].round(4),
            "verified": verified[keep],
            "orientation": orientation[keep],
        }
    )
    return DedupResult(assignments=assignments, groups=groups, pairs=pairs)
