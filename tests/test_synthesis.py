"""Synthesis stage without the generators: routing, pool and subsampling, quality gate,
gated generation, the balanced manifest and per-class metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemaflow.errors import ConfigError
from hemaflow.synth.balance import BALANCED_COLUMNS, build_balanced, synthetic_rows
from hemaflow.synth.generate import gate_summary, generate_gated
from hemaflow.synth.pool import build_pool, class_images, labelled_train, train_counts
from hemaflow.synth.quality import CopyDetector, GateSettings, RealismScorer, quality_gate
from hemaflow.synth.routing import (
    generating,
    meta_training_classes,
    route_for,
    route_table,
)
from tests.realdata import pbc_cells

SETTINGS = {"large_min": 1000, "fewshot_max": 100, "mid_route": "cwgan", "target": "largest"}


# --------------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("count", "route"),
    [
        (1, "fewshot"),
        (99, "fewshot"),
        (100, "cwgan"),  # mid (100..1000) follows mid_route
        (101, "cwgan"),
        (999, "cwgan"),
        (1000, "cwgan"),
        (1001, "cwgan"),
    ],
)
def test_route_at_every_boundary_mid_cwgan(count, route):
    assert route_for(count, 1000, 100, "cwgan") == route


@pytest.mark.parametrize(
    ("count", "route"),
    [(99, "fewshot"), (100, "none"), (101, "none"), (999, "none"), (1000, "none"), (1001, "cwgan")],
)
def test_route_at_every_boundary_mid_none(count, route):
    assert route_for(count, 1000, 100, "none") == route


def test_route_table_on_a_count_table_at_the_boundaries():
    counts = {f"c{n}": n for n in (99, 100, 101, 999, 1000, 1001)}
    counts["empty"] = 0
    table = route_table(counts, {**SETTINGS, "mid_route": "none"}).set_index("canonical_class")
    assert table.loc["c99", "route"] == "fewshot"
    assert table.loc[["c100", "c101", "c999", "c1000"], "route"].eq("none").all()
    assert table.loc["c1001", "route"] == "cwgan"
    assert table.loc["empty", "route"] == "none"
    assert table.loc["empty", "reason"] == "no training images"
    # target = the largest class; the largest class itself needs nothing
    assert (table["target"] == 1001).all()
    assert table.loc["c99", "to_generate"] == 1001 - 99
    assert table.loc["c1001", "to_generate"] == 0
    assert table.loc["c1001", "reason"] == "already at the target"
    assert table.loc["c100", "to_generate"] == 0  # route none: nothing generated
    table = route_table(counts, SETTINGS)
    assert generating(table, "cwgan") == ["c100", "c1000", "c101", "c999"]
    assert generating(table, "fewshot") == ["c99"]
    assert meta_training_classes(table, 1000) == ["c1001"]


def test_route_table_with_a_fixed_target():
    table = route_table({"a": 10, "b": 500}, {**SETTINGS, "target": 300})
    assert table.set_index("canonical_class")["to_generate"].to_dict() == {"a": 290, "b": 0}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"fewshot_max": 2000}, "synthesis.fewshot_max"),
        ({"mid_route": "fewshot"}, "synthesis.mid_route"),
        ({"target": -3}, "synthesis.target"),
        ({"target": "most"}, "synthesis.target"),
    ],
)
def test_bad_routing_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        route_table({"a": 1}, {**SETTINGS, **override})


# ------------------------------------------------------------------------------------ pool


def _cache(classes, splits, domain):
    n = len(classes)
    images = np.random.default_rng(len(domain)).integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
    index = pd.DataFrame(
        {
            "record_id": [f"{domain}:{k}" for k in range(n)],
            "dataset": domain,
            "canonical_class": classes,
            "split": splits,
        }
    )
    return images, index


def test_pool_joins_labelled_domains_and_subsamples_train_only():
    a = _cache(["x"] * 6 + ["y"] * 2, ["train"] * 5 + ["test"] + ["train", "val"], "a")
    b = _cache(["x", "x", None, ""], ["train", "val", "train", "train"], "b")
    images, pool = build_pool({"a": a, "b": b}, subsample={"x": 3}, seed=1)
    assert len(pool) == 10  # the two unlabelled rows of b are left out
    assert np.array_equal(images[pool["pool_index"]], images)
    assert (pool["domain"] == ["a"] * 8 + ["b"] * 2).all()
    assert train_counts(pool, ["x", "y", "z"]) == {"x": 3, "y": 1, "z": 0}
    # the 3 removed train rows of x are held out, val/test untouched
    assert (pool["split"] == "held_out").sum() == 3
    assert pool.loc[pool["split"] == "held_out", "canonical_class"].eq("x").all()
    assert (pool["split"] == "test").sum() == 1 and (pool["split"] == "val").sum() == 2
    # seeded: the same rows every time, other rows for another seed
    again = build_pool({"a": a, "b": b}, subsample={"x": 3}, seed=1)[1]
    assert again["split"].equals(pool["split"])
    train_x, labels = labelled_train(images, pool, ["y", "x"])
    assert len(train_x) == 4 and sorted(labels.tolist()) == [0, 1, 1, 1]
    held = class_images(images, pool, "x", ["held_out", "test", "val"])
    assert len(held) == 5


def test_subsample_of_a_class_without_training_images_is_refused():
    a = _cache(["x", "y"], ["train", "test"], "a")
    with pytest.raises(ConfigError, match=r"synthesis\.subsample\.y"):
        build_pool({"a": a}, subsample={"y": 1})


# ------------------------------------------------------------------------------ the gate


@pytest.fixture(scope="module")
def cells():
    images, names = pbc_cells(6, 64, classes=["basophil", "eosinophil", "neutrophil"])
    return images, names


def test_quality_gate_rejects_a_copied_training_image(cells):
    images, names = cells
    train = images[names == "basophil"][:4]
    other = images[names == "eosinophil"][:2]
    # a copy of a training image (re-encoded: flipped back and forth, one pixel shifted)
    copy = np.roll(train[1], 1, axis=1)[None]
    candidates = np.concatenate([copy, other, train[2:3]])
    detector = CopyDetector(train, max_hamming=8)
    probabilities = np.tile([0.9, 0.05, 0.05], (len(candidates), 1))
    probabilities[1] = [0.2, 0.7, 0.1]  # classified as another class
    gate = quality_gate(
        candidates,
        0,
        probabilities,
        ["basophil", "eosinophil", "neutrophil"],
        detector,
        GateSettings(min_confidence=0.5),
    )
    assert gate["reject_reason"].tolist() == [
        "near_copy_of_training_image",
        "low_confidence",
        "",
        "near_copy_of_training_image",
    ]
    assert gate.loc[0, "copy_correlation"] > 0.95 and gate.loc[3, "nearest_hamming"] == 0
    assert gate.loc[2, "copy_correlation"] < 0.95  # a different cell is not a copy
    assert gate.loc[1, "predicted_class"] == "eosinophil"


def _colour_features(images: np.ndarray) -> np.ndarray:
    """A cheap stand-in for Inception features in the gate's unit tests: the images'
    mean colour on a 4 x 4 grid."""
    x = np.asarray(images, dtype=np.float64)
    n, h, w, c = x.shape
    return x.reshape(n, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(n, -1)


def test_quality_gate_realism_rejects_what_lies_off_the_training_manifold(cells):
    images, names = cells
    train = images[names == "basophil"]
    realism = RealismScorer(train, _colour_features)
    # a real basophil not in the training set, a training image shifted by one pixel (in
    # a ball), a flat grey square (far from every cell), one the judge rejects
    grey = np.full((1, *train.shape[1:]), 128, np.uint8)
    other = images[names == "eosinophil"][:1]
    candidates = np.concatenate([np.roll(train[:1], 1, axis=2), grey, other])
    probabilities = np.tile([0.9, 0.05, 0.05], (len(candidates), 1))
    probabilities[2] = [0.1, 0.8, 0.1]
    settings = GateSettings(min_realism=1.0, copy_min_correlation=1.01)  # copies allowed
    gate = quality_gate(
        candidates,
        0,
        probabilities,
        ["basophil", "eosinophil", "neutrophil"],
        CopyDetector(train, 8),
        settings,
        realism,
    )
    assert gate["reject_reason"].tolist() == ["", "low_realism", "low_confidence"]
    assert gate.loc[0, "realism"] >= 1.0 > gate.loc[1, "realism"]
    assert np.isnan(gate.loc[2, "realism"])  # rejected by the judge: not scored
    # off: the same candidates, realism not scored, the grey square accepted
    off = quality_gate(
        candidates,
        0,
        probabilities,
        ["basophil", "eosinophil", "neutrophil"],
        CopyDetector(train, 8),
        GateSettings(copy_min_correlation=1.01),
        realism,
    )
    assert off["accepted"].tolist() == [True, True, False] and off["realism"].isna().all()
    with pytest.raises(ValueError, match="RealismScorer"):
        quality_gate(
            candidates,
            0,
            probabilities,
            ["basophil", "eosinophil", "neutrophil"],
            CopyDetector(train, 8),
            settings,
        )
    # too few training images for k-NN balls: realism is left unjudged, not failed
    few = RealismScorer(train[:3], _colour_features)
    assert not few.usable and np.isnan(few.scores(candidates)).all()


def test_gated_generation_fills_the_need_and_reports_rejections(cells):
    images, names = cells
    pool_images = images[names != "basophil"]
    train = images[names == "basophil"][:3]

    def sample(n, seed):  # a "generator" that sometimes copies a training image
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, len(pool_images), n)
        out = pool_images[picks].copy()
        out[::3] = train[0]
        return out

    def classify(batch):
        return np.tile([0.8, 0.2], (len(batch), 1))

    detector = CopyDetector(train, max_hamming=8)
    accepted, candidates = generate_gated(
        sample, classify, "basophil", ["basophil", "other"], 7, detector, GateSettings(), seed=3
    )
    assert len(accepted) == 7 and candidates["used"].sum() == 7
    assert (candidates.loc[candidates["used"], "reject_reason"] == "").all()
    assert candidates["reject_reason"].eq("near_copy_of_training_image").sum() >= 1
    summary = gate_summary("basophil", "fewshot", 7, candidates)
    assert summary["shortfall"] == 0 and summary["rejected_near_copy"] >= 1
    # regenerating from the recorded seed gives the same candidates
    first = candidates.iloc[0]
    assert np.array_equal(sample(int(first["offset"]) + 1, int(first["seed"]))[0], accepted[0]) or (
        not first["used"]
    )

    # a generator the classifier never believes: a shortfall, reported, bounded effort
    accepted, candidates = generate_gated(
        sample,
        lambda b: np.tile([0.1, 0.9], (len(b), 1)),
        "basophil",
        ["basophil", "other"],
        5,
        detector,
        GateSettings(),
        seed=3,
        max_candidates_factor=2.0,
    )
    assert len(accepted) == 0 and len(candidates) == 10
    assert gate_summary("basophil", "fewshot", 5, candidates)["shortfall"] == 5


def test_balanced_manifest_has_real_and_traceable_synthetic_rows(cells, tmp_path):
    images, names = cells
    pool = pd.DataFrame(
        {
            "record_id": [f"pbc:{k}" for k in range(len(images))],
            "dataset": "pbc",
            "domain": "pbc",
            "canonical_class": names,
            "split": ["train", "test"] * (len(images) // 2),
            "pool_index": np.arange(len(images)),
        }
    )
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    candidates = pd.DataFrame(
        {
            "synthetic_id": ["s:0", "s:1", "s:2"],
            "seed": [11, 11, 11],
            "offset": [0, 1, 2],
            "used": [True, False, True],
            "reject_reason": ["", "low_confidence", ""],
        }
    )
    rows = synthetic_rows("basophil", "fewshot", str(model), candidates)
    fake = images[:2]
    balanced, manifest = build_balanced(images, pool, {"basophil": (fake, rows)})
    assert list(manifest.columns) == list(BALANCED_COLUMNS)
    n_real = (pool["split"] == "train").sum()
    assert len(manifest) == len(balanced) == n_real + 2
    assert (manifest["origin"] == "real").sum() == n_real
    synthetic = manifest[manifest["origin"] == "synthetic"]
    assert synthetic["record_id"].tolist() == ["s:0", "s:2"]
    assert synthetic["seed"].tolist() == [11, 11] and synthetic["offset"].tolist() == [0, 2]
    assert synthetic["generator"].eq("fewshot").all()
    assert len(synthetic["checkpoint_sha256"].iloc[0]) == 64
    assert np.array_equal(balanced[-2:], fake)
    real_rows = manifest[manifest["origin"] == "real"]
    assert np.array_equal(balanced[: len(real_rows)], images[pool["split"] == "train"])
    with pytest.raises(ValueError, match="basophil"):
        build_balanced(images, pool, {"basophil": (images[:1], rows)})


def test_class_metrics_on_real_images(tmp_path):
    from hemaflow.synth.evaluate import class_metrics, metrics_table, plot_samples

    same, _ = pbc_cells(12, 64, classes=["basophil"])
    held_out, _ = pbc_cells(12, 64, classes=["basophil"], offset=12)
    other, _ = pbc_cells(12, 64, classes=["platelet"])
    near = class_metrics(same, held_out, 1.0, fid_min_images=10, lpips_pairs=50)
    far = class_metrics(other, held_out, 0.0, fid_min_images=10, lpips_pairs=50)
    assert near["kid"] < far["kid"]
    assert np.isfinite(near["fid"]) and near["fid"] < far["fid"]
    assert 0 < near["lpips_diversity"] < 1 and 0 < near["real_lpips_diversity"] < 1
    assert near["classifier_accuracy"] == 1.0
    small = class_metrics(same[:5], held_out, None, fid_min_images=10, lpips_pairs=10)
    assert np.isnan(small["fid"]) and np.isfinite(small["kid"])
    assert 0 <= small["precision"] <= 1
    # two gated images (seen in the main job): no k-NN manifold, the rest is still measured
    two = class_metrics(same[:2], held_out, None, fid_min_images=10, lpips_pairs=10)
    assert np.isnan(two["precision"]) and np.isnan(two["recall"]) and np.isfinite(two["kid"])
    table = metrics_table([{"canonical_class": "basophil", "route": "fewshot", **near}])
    assert table.loc[0, "kid"] == near["kid"]
    plot_samples({"basophil": held_out}, {"basophil": same}, str(tmp_path / "g.png"), "t")
    assert (tmp_path / "g.png").stat().st_size > 1000


def test_ablation_route_variants():
    from hemaflow.synth.routing import ablate_routes, route_table

    settings = {"large_min": 100, "fewshot_max": 10, "mid_route": "cwgan", "target": "largest"}
    table = route_table({"big": 150, "mid": 50, "rare": 5, "full": 150}, settings)
    routes = lambda t: dict(zip(t["canonical_class"], t["route"]))  # noqa: E731
    assert routes(ablate_routes(table, "routed")) == routes(table)
    assert routes(ablate_routes(table, "no_cwgan")) == {
        "big": "none",
        "full": "none",
        "mid": "none",
        "rare": "fewshot",
    }
    assert routes(ablate_routes(table, "no_fewshot"))["rare"] == "none"
    assert routes(ablate_routes(table, "no_fewshot"))["mid"] == "cwgan"
    every = ablate_routes(table, "fewshot_all")
    # the classes that need images go to the few-shot GAN; the full ones need none
    assert routes(every) == {"big": "cwgan", "full": "cwgan", "mid": "fewshot", "rare": "fewshot"}
    assert (every["to_generate"] == table["to_generate"]).all()
    assert "ablation fewshot_all: cwgan -> fewshot" in set(every["reason"])
    with pytest.raises(ValueError, match="not one of"):
        ablate_routes(table, "no_generators")
