"""Stratified, deterministic split that keeps groups together."""

import numpy as np
import pandas as pd
import pytest

from hemaflow.split import allocate, stratified_group_split

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 99, 1000])
def test_allocate_sums_and_follows_ratios(n):
    counts = allocate(n, RATIOS)
    assert sum(counts.values()) == n
    for name, ratio in RATIOS.items():
        assert abs(counts[name] - n * ratio) < 1.0 + 1e-9


def _frame():
    rows = []
    for cls, n in (("a", 500), ("b", 120), ("c", 9)):
        for domain in ("x", "y"):
            for k in range(n):
                group = f"{domain}{cls}{k // 3}"  # groups of three rows
                rows.append({"stratum": f"{domain}/{cls}", "group": group})
    return pd.DataFrame(rows)


def test_split_is_stratified_deterministic_and_keeps_groups():
    frame = _frame()
    first = stratified_group_split(frame["stratum"], frame["group"], RATIOS, seed=1)
    second = stratified_group_split(
        frame["stratum"].iloc[::-1], frame["group"].iloc[::-1], RATIOS, seed=1
    )
    assert first.equals(second.sort_index())  # row order does not matter
    assert (frame.assign(split=first).groupby("group")["split"].nunique() == 1).all()
    shares = frame.assign(split=first).groupby("stratum")["split"].value_counts(normalize=True)
    for stratum in ("x/a", "y/a", "x/b"):
        assert abs(shares[stratum]["train"] - 0.7) < 0.05
        assert abs(shares[stratum]["test"] - 0.2) < 0.05
    other_seed = stratified_group_split(frame["stratum"], frame["group"], RATIOS, seed=2)
    assert not first.equals(other_seed)


def test_every_split_present_in_a_small_stratum():
    frame = pd.DataFrame({"stratum": ["s"] * 10, "group": [f"g{k}" for k in range(10)]})
    split = stratified_group_split(frame["stratum"], frame["group"], RATIOS, seed=0)
    assert split.value_counts().to_dict() == {"train": 7, "test": 2, "val": 1}


def test_augmented_copies_of_one_source_share_a_split(tmp_path, shared_datasets):
    """group_regex gives every copy of a frame one source key; the split then keeps them
    together even though each copy is its own duplicate group (flips, tints...)."""
    import uuid

    from hemaflow.data.layouts import list_dataset
    from hemaflow.subgroup import split_groups

    cells = sorted((shared_datasets / "pbc" / "neutrophil").glob("SNE_*.jpg"))[:40]
    folder = tmp_path / "NEUTROPHIL"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for n, cell in enumerate(cells):
        data = cell.read_bytes()
        (folder / f"NEUTROPHIL_original_{n}.jpg").write_bytes(data)
        for _ in range(int(rng.integers(1, 4))):
            name = f"NEUTROPHIL_original_{n}.jpg_{uuid.UUID(int=int(rng.integers(2**62)))}.jpg"
            (folder / name).write_bytes(data)
    spec = {"layout": "imagefolder", "group_regex": r"^(?P<source>[A-Z]+_original_\d+)\.jpg"}
    items = list_dataset(tmp_path, spec, (".jpg",))
    assert all(item.source_group.startswith("NEUTROPHIL_original_") for item in items)
    rows = pd.DataFrame(
        {
            "record_id": [f"d:{item.rel_path}" for item in items],
            "group_id": [f"d:{item.rel_path}" for item in items],  # dedup found no copies
            "dataset": "d",
            "source_group": pd.array([item.source_group for item in items], dtype="string"),
        }
    )
    groups = split_groups(rows)
    assert groups.nunique() == len(cells)
    split = stratified_group_split(pd.Series("d/neutrophil", index=rows.index), groups, RATIOS, 0)
    per_source = pd.DataFrame({"source": rows["source_group"], "split": split})
    assert (per_source.groupby("source")["split"].nunique() == 1).all()
    assert set(split) == {"train", "val", "test"}
    # without the key, copies of one frame land in different splits
    alone = stratified_group_split(pd.Series("d/n", index=rows.index), rows["group_id"], RATIOS, 0)
    mixed = pd.DataFrame({"source": rows["source_group"], "split": alone})
    assert (mixed.groupby("source")["split"].nunique() > 1).any()
