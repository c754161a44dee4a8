"""Duplicate groups, representatives and label-conflict policies on small frames."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

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


# ---------------------------------------------------------------------------- dihedral


def _augmented_cells():
    """Real pbc cells at 64 px: one cell with its flip, rotations and tints, and others."""
    from PIL import Image

    from hemaflow.dedup.phash import phash

    from .realdata import require_shared_datasets

    folder = require_shared_datasets() / "pbc" / "neutrophil"
    paths = sorted(folder.glob("SNE_*.jpg"))[:40]
    cells = [
        np.asarray(Image.open(p).convert("RGB").resize((64, 64), Image.Resampling.BOX))
        for p in paths
    ]
    base = cells[0]
    tint = np.clip(base * np.array([1.15, 0.9, 1.0]) + 10, 0, 255).astype(np.uint8)
    copies = {
        "orig": base,
        "flip": base[:, ::-1],
        "rot90": np.rot90(base),
        "flip_ud_tint": tint[::-1],
        "rot270_tint": np.rot90(tint, 3),
        "transpose": base.transpose(1, 0, 2),
    }
    names = list(copies) + [f"other{k}" for k in range(1, len(cells))]
    images = np.stack(list(copies.values()) + cells[1:])
    rows = [
        [f"d:{name}", f"sha-{name}", int(phash(image)), "d", "neutrophil", 64]
        for name, image in zip(names, images, strict=True)
    ]
    return _frame(rows), images, list(copies)


def test_dihedral_copies_and_tints_form_one_group():
    from hemaflow.dedup.verify import gray_thumbnails

    frame, images, copies = _augmented_cells()
    thumbs = gray_thumbnails(images)
    plain = find_duplicates(frame, near_threshold=8, thumbnails=thumbs, min_correlation=0.95)
    plain_group = plain.assignments.set_index("record_id")["group_id"]
    assert len({plain_group[f"d:{name}"] for name in copies}) > 1  # the flips escape it
    result = find_duplicates(
        frame,
        near_threshold=8,
        thumbnails=thumbs,
        min_correlation=0.95,
        dihedral=True,
        dihedral_min_correlation=0.985,
    )
    group = result.assignments.set_index("record_id")["group_id"]
    assert len({group[f"d:{name}"] for name in copies}) == 1
    grouped = set(result.groups.loc[0, "members"].split(";"))
    assert grouped == {f"d:{name}" for name in copies}  # no other cell joins it
    assert len(result.groups) == 1
    oriented = result.pairs.loc[result.pairs["verified"], "orientation"]
    assert {"flip_lr", "rot90"} & set(oriented)


# ---------------------------------------------------------------------------- crop in frame


def test_crops_cut_from_frames_are_contained_in_them(tmp_path):
    """Crops a lab cut (and rescaled) from frames that another dataset holds whole are
    found inside their frames, grouped as contained_in and split with them."""
    import io

    from PIL import Image

    from hemaflow.config import validate_config
    from hemaflow.data.ingest import run_ingest
    from hemaflow.subgroup import dedup_manifests, subgroup

    from .realdata import require_shared_datasets

    shared = require_shared_datasets()
    frames = sorted((shared / "bccd" / "Original_Images").glob("*.jpg"))[:12]
    data_root = tmp_path / "data"
    (data_root / "frames" / "neutrophil").mkdir(parents=True)
    (data_root / "crops" / "neutrophil").mkdir(parents=True)
    for path in frames:
        (data_root / "frames" / "neutrophil" / path.name).write_bytes(path.read_bytes())
    cuts = {"BloodImage_00001.jpg": (40, 60, 260), "BloodImage_00004.jpg": (300, 150, 180)}
    for name, (x, y, side) in cuts.items():
        with Image.open(data_root / "frames" / "neutrophil" / name) as frame:
            crop = frame.convert("RGB").crop((x, y, x + side, y + side)).resize((224, 224))
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=85)
        (data_root / "crops" / "neutrophil" / f"cut_{name}").write_bytes(buffer.getvalue())
    pbc = sorted((shared / "pbc" / "neutrophil").glob("SNE_*.jpg"))[:4]
    for path in pbc:  # cells from another lab: inside no frame
        (data_root / "crops" / "neutrophil" / path.name).write_bytes(path.read_bytes())
    config = validate_config(
        {
            "data_root": str(data_root),
            "datasets": {
                "frames": {"path": "frames", "domain": "f", "layout": "imagefolder"},
                "crops": {"path": "crops", "domain": "c", "layout": "imagefolder"},
            },
            "class_map": {
                "frames": {"neutrophil": "neutrophil"},
                "crops": {"neutrophil": "neutrophil"},
            },
            "dedup": {"contained_in": [{"crops": "crops", "frames": "frames"}]},
        }
    )
    manifests, caches = [], {}
    for name in ("frames", "crops"):
        manifest, caches[name] = run_ingest(config, name, data_root)
        manifests.append(manifest)
    manifest = pd.concat(manifests, ignore_index=True)
    result = dedup_manifests(manifest, config, caches, data_root)
    inside = result.assignments.dropna(subset=["contained_in"])
    assert dict(zip(inside["record_id"], inside["contained_in"], strict=True)) == {
        f"crops:neutrophil/cut_{name}": f"frames:neutrophil/{name}" for name in cuts
    }
    contained = result.groups.loc[result.groups["kind"] == "contained_in"]
    assert len(contained) == 2 and set(contained["size"]) == {2}
    merged = subgroup(manifest, result.assignments, config).set_index("record_id")
    for name in cuts:
        crop, frame = f"crops:neutrophil/cut_{name}", f"frames:neutrophil/{name}"
        assert merged.loc[crop, "split"] == merged.loc[frame, "split"]
        assert merged.loc[crop, "split_group"] == merged.loc[frame, "split_group"]


def test_phash_thresholds_at_numpys_median():
    """The hash's median is np.median's (mean of the two middle coefficients)."""
    from hemaflow.dedup.phash import _BIT_WEIGHTS, _DCT, phash

    rng = np.random.default_rng(5)
    for _ in range(20):
        image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        gray = Image.fromarray(image).convert("L").resize((32, 32), Image.Resampling.BOX)
        low = _DCT @ np.asarray(gray, dtype=np.float64) @ _DCT.T
        bits = (low > np.median(low)).ravel()
        assert phash(image) == np.uint64(np.bitwise_or.reduce(_BIT_WEIGHTS[bits]))
