"""Duplicate groups, representatives and label-conflict policies on small frames."""

import numpy as np
import pandas as pd
import pytest

from hemaflow.dedup.groups import find_duplicates
from hemaflow.dedup.verify import shift_correlation

rng = np.random.default_rng(0)


def _frame(rows):
    frame = pd.DataFrame(
        rows,
        columns=["record_id", "image_id", "phash", "dataset", "canonical_class", "width"],
    )
    frame["source_path"] = frame["record_id"]
    frame["height"] = frame["width"]
    frame["phash"] = frame["phash"].astype(np.uint64)
    return frame


def _random_hash():
    return int(rng.integers(0, 2**63, dtype=np.int64)) * 2 + 1


def test_exact_and_near_groups_and_representative():
    base, other = _random_hash(), _random_hash()
    near = base ^ 0b111  # 3 bits away
    frame = _frame(
        [
            ["a:1", "sha-x", base, "a", "neutrophil", 100],
            ["b:1", "sha-x", base, "b", "neutrophil", 360],  # larger: representative
            ["a:2", "sha-y", near, "a", "neutrophil", 100],
            ["a:3", "sha-z", other, "a", "monocyte", 100],
        ]
    )
    result = find_duplicates(frame, near_threshold=4, dataset_order=["a", "b"])
    roles = result.assignments.set_index("record_id")["dedup_role"]
    assert roles["b:1"] == "representative"
    assert roles["a:1"] == roles["a:2"] == "duplicate"
    assert roles["a:3"] == "unique"
    assert result.assignments.set_index("record_id").loc["a:2", "duplicate_of"] == "b:1"
    assert len(result.groups) == 1 and result.groups.loc[0, "kind"] == "near"
    # the same at threshold 2 only merges the exact pair
    exact_only = find_duplicates(frame, near_threshold=2, dataset_order=["a", "b"])
    assert exact_only.groups["kind"].tolist() == ["exact"]


def test_representative_does_not_depend_on_row_order():
    base = _random_hash()
    rows = [[f"d:{k}", f"sha{k}", base ^ (1 << k), "d", "eosinophil", 100] for k in range(5)]
    first = find_duplicates(_frame(rows), near_threshold=2)
    second = find_duplicates(_frame(rows[::-1]), near_threshold=2)
    kept_first = first.assignments.query("dedup_role == 'representative'")["record_id"].tolist()
    kept_second = second.assignments.query("dedup_role == 'representative'")["record_id"].tolist()
    assert kept_first == kept_second == ["d:0"]


def _conflict_frame():
    base = _random_hash()
    return _frame(
        [
            ["a:1", "s1", base, "a", "eosinophil", 100],
            ["a:2", "s1", base, "a", "neutrophil", 100],
            ["a:3", "s1", base, "a", "neutrophil", 100],
        ]
    )


def test_conflict_policy_drop_drops_whole_group():
    result = find_duplicates(_conflict_frame(), near_threshold=0, conflict_policy="drop")
    assert set(result.assignments["dedup_role"]) == {"label_conflict"}
    assert bool(result.groups.loc[0, "label_conflict"])
    assert result.groups.loc[0, "classes"] == "eosinophil,neutrophil"


def test_conflict_policy_majority_keeps_majority_class():
    result = find_duplicates(_conflict_frame(), near_threshold=0, conflict_policy="majority")
    roles = result.assignments.set_index("record_id")["dedup_role"]
    assert roles["a:2"] == "representative"
    assert roles["a:1"] == roles["a:3"] == "duplicate"


def test_conflict_policy_majority_drops_a_tie():
    frame = _conflict_frame().iloc[:2]
    result = find_duplicates(frame, near_threshold=0, conflict_policy="majority")
    assert set(result.assignments["dedup_role"]) == {"label_conflict"}


def test_conflict_policy_keep_and_unknown_policy():
    result = find_duplicates(_conflict_frame(), near_threshold=0, conflict_policy="keep")
    assert (result.assignments["dedup_role"] == "representative").sum() == 1
    with pytest.raises(ValueError, match="conflict_policy"):
        find_duplicates(_conflict_frame(), near_threshold=0, conflict_policy="vote")


def test_unlabelled_members_never_conflict_and_labelled_member_is_kept():
    base = _random_hash()
    frame = _frame(
        [
            ["raabin:1", "s1", base, "raabin", None, 575],
            ["pbc:1", "s2", base ^ 1, "pbc", "neutrophil", 224],
        ]
    )
    result = find_duplicates(frame, near_threshold=2, dataset_order=["raabin", "pbc"])
    roles = result.assignments.set_index("record_id")["dedup_role"]
    assert roles["pbc:1"] == "representative"  # labelled beats larger
    assert roles["raabin:1"] == "duplicate"


def test_thumbnail_verification_rejects_hash_only_matches():
    base = _random_hash()
    same_cell = rng.uniform(0, 255, (32, 32)).astype(np.float32)
    shifted = np.roll(same_cell, 1, axis=1)  # the same cell, re-centred by a pixel
    different = rng.uniform(0, 255, (32, 32)).astype(np.float32)
    frame = _frame(
        [
            ["a:1", "s1", base, "a", "neutrophil", 100],
            ["a:2", "s2", base ^ 1, "a", "neutrophil", 100],
            ["a:3", "s3", base ^ 2, "a", "monocyte", 100],
        ]
    )
    thumbs = np.stack([same_cell, shifted, different])
    result = find_duplicates(frame, near_threshold=4, thumbnails=thumbs, min_correlation=0.95)
    roles = result.assignments.set_index("record_id")["dedup_role"]
    assert roles["a:1"] == "representative" and roles["a:2"] == "duplicate"
    assert roles["a:3"] == "unique"
    assert result.pairs["verified"].sum() == 1 and len(result.pairs) == 3


def test_shift_correlation_properties():
    image = rng.uniform(0, 255, (5, 32, 32)).astype(np.float32)
    assert np.allclose(shift_correlation(image, image), 1.0, atol=1e-5)
    shifted = np.roll(image, (2, -2), axis=(1, 2))
    assert (shift_correlation(image, shifted, max_shift=2) > 0.9).all()
    assert (shift_correlation(image, shifted, max_shift=0) < 0.3).all()
    flat = np.zeros_like(image)
    assert (shift_correlation(image, flat) == 0).all()
