"""Merge the per-dataset manifests with the dedup decisions, map labels to canonical
classes, split, and count."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from hemaflow.data.ingest import QUARANTINE_COLUMNS
from hemaflow.dedup.contained import FRAME_SIDE, contained_pairs
from hemaflow.dedup.groups import ROLE_CONFLICT, ROLE_DUPLICATE, DedupResult, find_duplicates
from hemaflow.dedup.verify import THUMB_SIZE, gray_thumbnails
from hemaflow.errors import UnmappedLabelsError
from hemaflow.labels import UNMAPPED, canonical_classes, unmapped_labels
from hemaflow.split import stratified_group_split

log = logging.getLogger(__name__)

UNLABELLED = "unlabelled"


def combine_manifests(manifests: list[pd.DataFrame]) -> pd.DataFrame:
    frame = pd.concat(manifests, ignore_index=True)
    duplicated = frame["record_id"].duplicated()
    if duplicated.any():
        raise ValueError(
            f"record ids are not unique: {frame.loc[duplicated, 'record_id'].tolist()[:5]}"
        )
    return frame


def dedup_manifests(
    manifest: pd.DataFrame,
    config: Mapping[str, Any],
    dataset_caches: Mapping[str, np.ndarray],
    data_root: Path | None = None,
):
    """Duplicate groups over the accepted rows of all datasets."""
    accepted = manifest.loc[manifest["status"] == "ok"].reset_index(drop=True)
    accepted["canonical_class"] = canonical_classes(accepted, config)
    thumbnails = np.zeros((len(accepted), THUMB_SIZE, THUMB_SIZE), dtype=np.float32)
    for dataset, rows in accepted.groupby("dataset").groups.items():
        indices = accepted.loc[rows, "cache_index"].to_numpy()
        thumbnails[np.asarray(rows)] = gray_thumbnails(dataset_caches[dataset][indices])
    result = find_duplicates(
        accepted,
        near_threshold=config["dedup"]["near_threshold"],
        conflict_policy=config["dedup"]["conflict_policy"],
        dataset_order=list(config["datasets"]),
        thumbnails=thumbnails,
        min_correlation=config["dedup"]["near_min_correlation"],
        dihedral=config["dedup"]["dihedral"],
        dihedral_min_correlation=config["dedup"]["dihedral_min_correlation"],
    )
    return add_containment(result, accepted, config, dataset_caches, data_root)


def _frame_path(row: pd.Series, data_root: Path) -> Path:
    path = Path(str(row["source_path"]))
    return path if row.get("source_path_base") == "absolute" else data_root / path


def add_containment(
    result: DedupResult,
    accepted: pd.DataFrame,
    config: Mapping[str, Any],
    dataset_caches: Mapping[str, np.ndarray],
    data_root: Path | None,
) -> DedupResult:
    """Crops of one dataset found inside the whole frames of another (config
    dedup.contained_in): a ``contained_in`` column in the assignments (the frame's record
    id) and one ``contained_in`` group per frame, so the split keeps them together."""
    assignments = result.assignments
    assignments["contained_in"] = pd.Series(pd.NA, index=assignments.index, dtype="string")
    pairs = config["dedup"].get("contained_in", [])
    if not pairs:
        return result
    if data_root is None:
        raise ValueError("dedup.contained_in needs the data root to read whole frames")
    row_of = {record: k for k, record in enumerate(assignments["record_id"])}
    rows = []
    for pair in pairs:
        crop_rows = accepted.loc[accepted["dataset"] == pair["crops"]]
        frame_rows = accepted.loc[accepted["dataset"] == pair["frames"]]
        frame_rows = frame_rows.drop_duplicates("source_path")
        if crop_rows.empty or frame_rows.empty:
            continue
        frames = []
        for _, frame in frame_rows.iterrows():
            with Image.open(_frame_path(frame, data_root)) as image:
                image.draft("RGB", (4 * FRAME_SIDE, 4 * FRAME_SIDE))
                frames.append(image.convert("RGB"))
        crops = dataset_caches[pair["crops"]][crop_rows["cache_index"].to_numpy()]
        found = contained_pairs(crops, frames, config["dedup"]["contained_min_correlation"])
        by_frame: dict[str, list[tuple[str, float]]] = {}
        for match in found:
            crop_id = crop_rows["record_id"].iloc[match.crop]
            frame_id = frame_rows["record_id"].iloc[match.frame]
            assignments.loc[row_of[crop_id], "contained_in"] = frame_id
            by_frame.setdefault(frame_id, []).append((crop_id, match.correlation))
        for frame_id, members in sorted(by_frame.items()):
            rows.append(
                {
                    "group_id": frame_id,
                    "kind": "contained_in",
                    "size": len(members) + 1,
                    "datasets": ",".join(sorted({pair["crops"], pair["frames"]})),
                    "classes": "",
                    "label_conflict": False,
                    "action": "same split (crops inside the frame, best correlation "
                    f"{max(c for _, c in members):.3f})",
                    "kept": "",
                    "members": ";".join([frame_id] + [crop for crop, _ in members]),
                }
            )
        log.info(
            "dedup: %d of %d %s crops lie inside %s frames",
            len(found),
            len(crop_rows),
            pair["crops"],
            pair["frames"],
        )
    if rows:
        result.groups = pd.concat([result.groups, pd.DataFrame(rows)], ignore_index=True)
    return result


def subgroup(
    manifest: pd.DataFrame, assignments: pd.DataFrame, config: Mapping[str, Any]
) -> pd.DataFrame:
    """The merged manifest: every row of every dataset, with canonical_class, dedup group,
    final status (ok / quarantined / duplicate / label_conflict / unmapped) and split."""
    merged = manifest.merge(assignments, on="record_id", how="left", validate="one_to_one")
    merged["canonical_class"] = canonical_classes(merged, config)
    accepted = merged["status"] == "ok"

    unmapped = accepted & (merged["canonical_class"] == UNMAPPED)
    if unmapped.any():
        missing = unmapped_labels(merged.loc[unmapped], merged.loc[unmapped, "canonical_class"])
        if config["subgroup"]["unmapped"] == "error":
            raise UnmappedLabelsError(missing)
        merged.loc[unmapped, "status"] = "unmapped"
        merged.loc[unmapped, "reason_code"] = "unmapped_label"
        merged.loc[unmapped, "reason"] = "label not in class_map (subgroup.unmapped: drop)"
        log.warning(
            "dropped %d rows whose labels the class map misses: %s", unmapped.sum(), missing
        )

    labelled = merged["dataset"].map(lambda d: config["datasets"][d]["labelled"])
    dropped_on_purpose = accepted & labelled & merged["canonical_class"].isna()
    merged.loc[dropped_on_purpose, "status"] = "excluded"
    merged.loc[dropped_on_purpose, "reason_code"] = "excluded_by_class_map"
    merged.loc[dropped_on_purpose, "reason"] = "label mapped to null in class_map"

    for role, status in ((ROLE_DUPLICATE, "duplicate"), (ROLE_CONFLICT, "label_conflict")):
        rows = (merged["status"] == "ok") & (merged["dedup_role"] == role)
        merged.loc[rows, "status"] = status
        merged.loc[rows, "reason_code"] = status
        merged.loc[rows, "reason"] = merged.loc[rows, "dedup_reason"]
    merged.loc[merged["canonical_class"] == UNMAPPED, "canonical_class"] = None

    has_group = merged["group_id"].notna()
    strata = merged["domain"] + "/" + merged["canonical_class"].fillna(UNLABELLED).astype(str)
    # duplicates follow their group's stratum: place groups by their kept member
    split = pd.Series(pd.NA, index=merged.index, dtype="string")
    candidates = has_group & merged["status"].isin(["ok", "duplicate", "label_conflict"])
    merged["split_group"] = pd.Series(pd.NA, index=merged.index, dtype="string")
    merged.loc[candidates, "split_group"] = split_groups(merged.loc[candidates]).to_numpy()
    split.loc[candidates] = stratified_group_split(
        _group_strata(merged.loc[candidates], strata.loc[candidates]),
        merged.loc[candidates, "split_group"],
        config["split"],
        config["split"]["seed"],
    ).to_numpy()
    merged["split"] = split
    merged["canonical_class"] = merged["canonical_class"].astype("string")
    merged["status"] = merged["status"].astype("string")
    return merged


def split_groups(rows: pd.DataFrame) -> pd.Series:
    """The unit of the split per row: its duplicate group, joined with every other group
    that holds a file of the same source (``source_group`` of the same dataset) and with
    the group of the frame a crop lies in (``contained_in``), so that augmented copies of
    one frame, or a crop and its frame, never straddle train and test. Named by the
    smallest group id it joins."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    groups = rows["group_id"].astype(str)
    if "source_group" in rows:
        sources = rows["dataset"].astype(str) + "/" + rows["source_group"].astype("string")
        for _, members in groups[sources.notna()].groupby(sources[sources.notna()]):
            ids = sorted(set(members))
            for other in ids[1:]:
                a, b = find(ids[0]), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    if "contained_in" in rows:
        group_of = dict(zip(rows["record_id"].astype(str), groups, strict=True))
        inside = rows["contained_in"].astype("string")
        for group, frame in zip(groups[inside.notna()], inside[inside.notna()], strict=True):
            if frame in group_of:
                a, b = find(group), find(group_of[frame])
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return groups.map(find)


def _group_strata(rows: pd.DataFrame, strata: pd.Series) -> pd.Series:
    """Every row of a group takes the stratum of the group's kept (status ok) row, so a
    group is allocated once, in the stratum it contributes to training data."""
    kept = rows["status"] == "ok"
    stratum_of_group = pd.Series(strata[kept].to_numpy(), index=rows.loc[kept, "group_id"])
    stratum_of_group = stratum_of_group[~stratum_of_group.index.duplicated()]
    mapped = rows["group_id"].map(stratum_of_group)
    return mapped.fillna(strata).astype(str)


def class_counts(merged: pd.DataFrame) -> pd.DataFrame:
    """Images kept (status ok) per canonical class x domain x split."""
    kept = merged.loc[merged["status"] == "ok"].copy()
    kept["canonical_class"] = kept["canonical_class"].fillna(UNLABELLED)
    counts = (
        kept.groupby(["canonical_class", "domain", "split"]).size().unstack("split", fill_value=0)
    )
    for name in ("train", "val", "test"):
        if name not in counts:
            counts[name] = 0
    counts = counts[["train", "val", "test"]]
    counts["total"] = counts.sum(axis=1)
    return counts.reset_index().sort_values(["canonical_class", "domain"]).reset_index(drop=True)


def status_summary(merged: pd.DataFrame) -> dict[str, Any]:
    """Headline counts for the run summary."""
    by_dataset = {
        dataset: {str(k): int(v) for k, v in rows["status"].value_counts().items()}
        for dataset, rows in merged.groupby("dataset")
    }
    reasons = merged.loc[merged["status"] != "ok", "reason_code"].value_counts()
    return {
        "rows": int(len(merged)),
        "kept": int((merged["status"] == "ok").sum()),
        "by_status": {str(k): int(v) for k, v in merged["status"].value_counts().items()},
        "by_dataset": by_dataset,
        "by_reason": {str(k): int(v) for k, v in reasons.items()},
        "classes": sorted(
            str(c)
            for c in merged.loc[merged["status"] == "ok", "canonical_class"].dropna().unique()
        ),
    }


def domain_cache(
    merged: pd.DataFrame, dataset_caches: Mapping[str, np.ndarray], domain: str
) -> tuple[np.ndarray, pd.DataFrame]:
    """The kept images of one domain as one array (rows ordered by record id), with an
    index of manifest columns whose ``domain_index`` is the array row."""
    rows = merged.loc[(merged["domain"] == domain) & (merged["status"] == "ok")]
    rows = rows.sort_values("record_id").reset_index(drop=True)
    cache_index = rows["cache_index"].to_numpy()
    shape = next(iter(dataset_caches.values())).shape[1:] if dataset_caches else (1, 1, 3)
    images = np.empty((len(rows), *shape), dtype=np.uint8)
    for dataset, positions in rows.groupby("dataset").indices.items():
        images[positions] = dataset_caches[dataset][cache_index[positions]]
    index = rows[["record_id", "dataset", "source_path", "canonical_class", "split"]].copy()
    index["domain_index"] = np.arange(len(rows))
    return images, index


def read_manifests(paths: list[str]) -> pd.DataFrame:
    return combine_manifests([pd.read_parquet(path) for path in paths])


def dedup_files(
    config: Mapping[str, Any],
    manifest_paths: list[str],
    image_paths: list[str],
    datasets: list[str],
    out_assignments: str,
    out_groups: str,
    out_pairs: str,
    out_summary: str,
) -> dict[str, Any]:
    """The dedup stage from per-dataset manifests and caches to its four outputs."""
    manifest = read_manifests(manifest_paths)
    caches = {d: np.load(p, mmap_mode="r") for d, p in zip(datasets, image_paths, strict=True)}
    from hemaflow.config import resolve_data_root

    result = dedup_manifests(manifest, config, caches, resolve_data_root(config))
    result.assignments.to_parquet(out_assignments, index=False)
    result.groups.to_csv(out_groups, index=False)
    result.pairs.to_csv(out_pairs, index=False)
    groups = result.groups
    summary = {
        "candidates": int(len(result.assignments)),
        "groups": int(len(groups)),
        "exact_groups": int((groups["kind"] == "exact").sum()) if len(groups) else 0,
        "near_groups": int((groups["kind"] == "near").sum()) if len(groups) else 0,
        "label_conflict_groups": int(groups["label_conflict"].sum()) if len(groups) else 0,
        "cross_dataset_groups": int(groups["datasets"].str.contains(",").sum())
        if len(groups)
        else 0,
        "by_role": {
            str(k): int(v) for k, v in result.assignments["dedup_role"].value_counts().items()
        },
        "near_candidates": int(len(result.pairs)),
        "near_verified": int(result.pairs["verified"].sum()) if len(result.pairs) else 0,
        "contained_in_groups": int((groups["kind"] == "contained_in").sum()) if len(groups) else 0,
        "near_threshold": config["dedup"]["near_threshold"],
        "near_min_correlation": config["dedup"]["near_min_correlation"],
        "conflict_policy": config["dedup"]["conflict_policy"],
    }
    with open(out_summary, "w") as handle:
        json.dump(summary, handle, indent=2)
    log.info("dedup: %s", summary)
    return summary


def subgroup_files(
    config: Mapping[str, Any],
    manifest_paths: list[str],
    assignments_path: str,
    out_manifest: str,
    out_counts: str,
    out_quarantine: str,
    out_summary: str,
) -> dict[str, Any]:
    """The subgroup stage from files to files; returns the run summary."""
    manifest = read_manifests(manifest_paths)
    merged = subgroup(manifest, pd.read_parquet(assignments_path), config)
    merged.to_parquet(out_manifest, index=False)
    class_counts(merged).to_csv(out_counts, index=False)
    quarantined = merged.loc[merged["status"] == "quarantined", QUARANTINE_COLUMNS]
    quarantined.to_csv(out_quarantine, index=False)
    summary = status_summary(merged)
    summary["quarantined"] = int(len(quarantined))
    with open(out_summary, "w") as handle:
        json.dump(summary, handle, indent=2)
    log.info(
        "subgroup: %d rows, %d kept, %d quarantined",
        summary["rows"],
        summary["kept"],
        summary["quarantined"],
    )
    return summary


def domain_cache_files(
    manifest_path: str,
    image_paths: list[str],
    datasets: list[str],
    domain: str,
    out_images: str,
    out_index: str,
) -> int:
    merged = pd.read_parquet(manifest_path)
    caches = {d: np.load(p, mmap_mode="r") for d, p in zip(datasets, image_paths, strict=True)}
    images, index = domain_cache(merged, caches, domain)
    np.save(out_images, images)
    index.to_parquet(out_index, index=False)
    log.info("domain %s: %d images cached", domain, len(index))
    return len(index)
