"""Ingest, dedup and subgroup on all four real shared datasets (about 20 s).

The known defects of the shared data (its README) are the expectations here."""

import copy

import numpy as np
import pandas as pd
import pytest

from hemaflow.config import resolve_data_root
from hemaflow.data.ingest import run_ingest
from hemaflow.errors import UnmappedLabelsError
from hemaflow.subgroup import class_counts, combine_manifests, dedup_manifests, subgroup

from .realdata import real_default_config


@pytest.fixture(scope="module")
def default_config():
    """The default config with centre crops: the near-duplicate thresholds and the counts
    below were calibrated on centre crops (bench/near_dup_threshold.py). On the default
    cell crops the same thresholds mark more pairs (docs/cross_lab.md); recalibrating them
    for cell crops is open work."""
    config = real_default_config()
    for spec in config["datasets"].values():
        if "crop" in spec:
            spec["crop"] = "center"
    return config


@pytest.fixture(scope="module")
def ingested(default_config):
    manifests, caches = [], {}
    for dataset in default_config["datasets"]:
        manifest, cache = run_ingest(
            default_config, dataset, resolve_data_root(default_config), workers=2
        )
        manifests.append(manifest)
        caches[dataset] = cache
    return combine_manifests(manifests), caches


@pytest.fixture(scope="module")
def deduped(ingested, default_config):
    manifest, caches = ingested
    return dedup_manifests(manifest, default_config, caches)


def _members(groups):
    return [set(m.split(";")) for m in groups["members"]]


def test_ingest_counts_and_quarantine_reasons(ingested):
    manifest, caches = ingested
    by = manifest.groupby("dataset")["status"].value_counts().unstack(fill_value=0)
    assert by.loc["pbc", "ok"] == 17092 and by.loc["pbc", "quarantined"] == 1
    assert by.loc["zheng_tecom", "ok"] == 300
    ds_store = manifest.loc[manifest["source_path"] == "pbc/neutrophil/.DS_169665.jpg"]
    assert ds_store["reason_code"].tolist() == ["not_an_image"]
    bccd = manifest.loc[manifest["dataset"] == "bccd"]
    assert bccd["reason_code"].value_counts().to_dict() == {
        "missing_file": 44,
        "multiple_labels": 8,
        "empty_label": 1,
        "unsupported_extension": 1,  # Original_Images/index.txt: a row, never silence
    }
    raabin = manifest.loc[(manifest["dataset"] == "raabin_frames") & (manifest["status"] == "ok")]
    assert raabin["record_id"].str.contains("#box").all() and len(raabin) > 480
    for dataset, cache in caches.items():
        ok = manifest.loc[(manifest["dataset"] == dataset) & (manifest["status"] == "ok")]
        assert cache.shape == (len(ok), 64, 64, 3) and cache.dtype == np.uint8
        assert sorted(ok["cache_index"]) == list(range(len(ok)))


def test_exact_duplicates_of_the_readme(deduped):
    exact = deduped.groups.loc[deduped.groups["kind"] == "exact"]
    pbc_exact = exact.loc[exact["datasets"] == "pbc"]
    assert len(pbc_exact) == 17
    members = _members(exact)
    assert {"pbc:eosinophil/EO_225902.jpg", "pbc:neutrophil/BNE_191112.jpg"} in members
    assert {"zheng_tecom:Dataset 1/112.bmp", "zheng_tecom:Dataset 1/139.bmp"} in members
    cross = exact.loc[exact["label_conflict"]]
    assert len(cross) == 1 and cross.iloc[0]["action"].startswith("drop")


def test_near_duplicates_found_and_false_hash_matches_rejected(deduped):
    members = _members(deduped.groups.loc[deduped.groups["kind"] == "near"])
    # checked by eye (bench/near_dup_threshold.py): the same cell imaged twice
    for pair in (
        {"pbc:eosinophil/EO_246684.jpg", "pbc:eosinophil/EO_409717.jpg"},
        {"pbc:monocyte/MO_231316.jpg", "pbc:monocyte/MO_415531.jpg"},
        {"zheng_tecom:Dataset 1/157.bmp", "zheng_tecom:Dataset 1/158.bmp"},
        {"bccd:Original_Images/BloodImage_00037.jpg", "bccd:Original_Images/BloodImage_00038.jpg"},
    ):
        assert any(pair <= group for group in members), pair
    # two different cells only 2 hash bits apart: a candidate, rejected by verification
    pairs = deduped.pairs
    false_match = pairs.loc[
        (pairs["record_id_a"] == "pbc:basophil/BA_646371.jpg")
        & (pairs["record_id_b"] == "pbc:eosinophil/EO_371502.jpg")
    ]
    assert len(false_match) == 1 and not bool(false_match["verified"].iloc[0])
    assert not deduped.groups.loc[deduped.groups["kind"] == "near", "label_conflict"].any()


def test_subgroup_split_and_counts(ingested, deduped, default_config):
    manifest, _ = ingested
    merged = subgroup(manifest, deduped.assignments, default_config)
    kept = merged.loc[merged["status"] == "ok"]
    assert kept["canonical_class"].notna().sum() == (kept["dataset"] != "raabin_frames").sum()
    assert set(kept["split"]) == {"train", "val", "test"}
    # no duplicate group crosses splits
    grouped = merged.loc[merged["group_size"] > 1].groupby("group_id")["split"].nunique()
    assert (grouped == 1).all() and len(grouped) > 30
    assert set(merged.loc[merged["status"] == "quarantined", "split"].dropna()) == set()
    counts = class_counts(merged)
    assert counts["total"].sum() == len(kept)
    pbc_neutrophil = counts.query("canonical_class == 'neutrophil' and domain == 'pbc'").iloc[0]
    assert abs(pbc_neutrophil["train"] / pbc_neutrophil["total"] - 0.7) < 0.01
    assert (merged["status"] == "label_conflict").sum() == 2


def test_unmapped_labels_error_lists_every_label_or_drops(ingested, deduped, default_config):
    manifest, _ = ingested
    config = copy.deepcopy(default_config)
    del config["class_map"]["bccd"]["BASOPHIL"]
    del config["class_map"]["zheng_tecom"]["monocyte"]
    with pytest.raises(UnmappedLabelsError) as caught:
        subgroup(manifest, deduped.assignments, config)
    assert caught.value.unmapped == {"bccd": ["BASOPHIL"], "zheng_tecom": ["monocyte"]}
    config["subgroup"]["unmapped"] = "drop"
    merged = subgroup(manifest, deduped.assignments, config)
    dropped = merged.loc[merged["status"] == "unmapped"]
    assert len(dropped) == 3 + 48
    assert pd.isna(dropped["split"]).all()
