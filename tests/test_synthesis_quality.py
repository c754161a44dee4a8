"""A fair gate and quality targets that decide padding (issue 16): the gate's judge checked
on real validation images per class, the per-class decision (synthetic images when the
generator met its route's targets, repeated real images when it missed them), the
balanced set and summary that follow from it. Real pbc cells, a tiny judge trained here."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch

from hemaflow import smoke
from hemaflow.errors import ConfigError
from hemaflow.summary import headline
from hemaflow.synth.balance import build_balanced, oversampled_picks, synthetic_cap
from hemaflow.synth.metric_stages import validation_metrics_stage
from hemaflow.synth.quality import GateSettings, fair_threshold, real_acceptance
from hemaflow.synth.stages import (
    balanced_stage,
    gate_real_acceptance_stage,
    train_gate_classifier_stage,
)
from hemaflow.synth.targets import (
    QualityTargets,
    balancing_decision,
    balancing_table,
    missed_targets,
    quality_measures,
)

from .realdata import pbc_cells

torch.set_num_threads(1)

CLASSES = ["basophil", "eosinophil", "neutrophil"]
# per class: (train, val, held_out, test) images; neutrophil has no validation image
SPLITS = {"basophil": (4, 2, 1, 2), "eosinophil": (4, 2, 0, 2), "neutrophil": (4, 0, 0, 2)}
# the smoke classifier with a shorter schedule and no early stopping
TINY_JUDGE = {
    **smoke.CLASSIFIER,
    "batch_size": 6,
    "iterations": 4,
    "eval_every": 2,
    "early_stopping_patience": 0,
    "checkpoint_every": 2,
}
ISSUE_16_TARGETS = {
    "cwgan": {"precision": 0.5, "recall": 0.2, "kid": 0.15, "acceptance": 0.6},
    "fewshot": {"precision": 0.3, "kid": 0.25, "acceptance": 0.4, "diversity_ratio": 0.8},
}


@pytest.fixture(scope="module")
def pool_files(tmp_path_factory):
    """A synthesis pool of real pbc cells (64 px) with every split, on disk."""
    root = tmp_path_factory.mktemp("pool")
    images, names = pbc_cells(9, 64, classes=CLASSES)
    splits = []
    for name in names[np.sort(np.unique(names, return_index=True)[1])]:
        n_train, n_val, n_held, n_test = SPLITS[name]
        splits += ["train"] * n_train + ["val"] * n_val + ["held_out"] * n_held
        splits += ["test"] * n_test
        splits += ["unused"] * (9 - n_train - n_val - n_held - n_test)
    pool = pd.DataFrame(
        {
            "record_id": [f"pbc:{k}" for k in range(len(images))],
            "dataset": "pbc",
            "domain": "pbc",
            "canonical_class": names,
            "split": splits,
            "pool_index": np.arange(len(images)),
        }
    )
    np.save(root / "images.npy", images)
    pool.to_parquet(root / "index.parquet", index=False)
    return {"root": root, "images": images, "pool": pool}


@pytest.fixture(scope="module")
def judge(pool_files):
    """The gate's judge, trained by the workflow's own stage on the pool's train rows."""
    root = pool_files["root"]
    summary = train_gate_classifier_stage(
        str(root / "images.npy"),
        str(root / "index.parquet"),
        TINY_JUDGE,
        str(root / "state"),
        str(root / "judge.pt"),
        str(root / "judge_losses.csv"),
        str(root / "judge_summary.json"),
    )
    assert summary["completed"]
    return root / "judge.pt"


# ------------------------------------------------------------------- the gate's real check


def test_real_acceptance_verdicts():
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    table = real_acceptance(
        probabilities,
        ["a", "a", "a", "b"],
        ["a", "b", "c"],
        GateSettings(min_confidence=0.5, min_real_acceptance=0.9),
    ).set_index("canonical_class")
    assert table.loc["a", ["real_images", "accepted"]].tolist() == [3, 2]
    assert table.loc["a", "acceptance"] == pytest.approx(2 / 3)
    assert table.loc["a", "verdict"] == "too_strict"
    assert table.loc["b", "verdict"] == "fair" and table.loc["b", "acceptance"] == 1.0
    assert table.loc["c", "verdict"] == "no_validation_images"
    assert math.isnan(table.loc["c", "acceptance"]) and table.loc["c", "real_images"] == 0
    # the same judge is fair for a at a lower level: the level is the setting, not the data
    lenient = real_acceptance(
        probabilities, ["a", "a", "a", "b"], ["a", "b", "c"], GateSettings(min_real_acceptance=0.6)
    )
    assert lenient.loc[0, "verdict"] == "fair"
    with pytest.raises(ValueError, match="4 probability rows"):
        real_acceptance(probabilities, ["a"], ["a", "b"], GateSettings())


def test_real_acceptance_with_realism_counts_the_whole_gate():
    """With min_realism, a real image passes the gate only when the judge accepts it AND
    its realism score is high enough; an unscored image (NaN) is not held against it."""
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8]])
    realism = np.array([1.2, 0.7, np.nan, 1.5])
    settings = GateSettings(min_confidence=0.5, min_real_acceptance=0.6, min_realism=1.0)
    table = real_acceptance(probabilities, ["a", "a", "a", "b"], ["a", "b"], settings, realism)
    table = table.set_index("canonical_class")
    assert table.loc["a", "accepted"] == 2 and table.loc["a", "acceptance"] == pytest.approx(2 / 3)
    assert table.loc["a", "realism_acceptance"] == pytest.approx(2 / 3)
    assert table.loc["a", "verdict"] == "fair"
    stricter = real_acceptance(
        probabilities,
        ["a", "a", "a", "b"],
        ["a", "b"],
        GateSettings(min_real_acceptance=0.6, min_realism=1.3),
        realism,
    ).set_index("canonical_class")
    assert stricter.loc["a", "accepted"] == 1 and stricter.loc["a", "verdict"] == "too_strict"
    assert stricter.loc["b", "verdict"] == "fair"
    # off (0): the judge's own acceptance, no realism column
    off = real_acceptance(probabilities, ["a", "a", "a", "b"], ["a", "b"], GateSettings(), realism)
    assert off.loc[0, "accepted"] == 3 and math.isnan(off.loc[0, "realism_acceptance"])


def test_fair_threshold_lowers_the_bar_to_what_real_images_reach_and_never_raises_it():
    rng = np.random.default_rng(0)
    weak = rng.uniform(0, 1, 101)  # a judge that gives real cells of the class anything
    on = GateSettings(min_confidence=0.5, fair_confidence=True)
    threshold = fair_threshold(weak, on)
    assert threshold < 0.5
    assert (weak >= threshold).mean() >= 0.9  # fair by construction ...
    assert (weak > threshold).mean() < 0.9  # ... and the highest such threshold
    assert threshold == np.sort(weak)[101 - 91]  # 91 of 101 = ceil(0.9 * 101)
    strong = np.concatenate([np.full(95, 0.99), np.full(5, 0.1)])  # already fair at 0.5
    assert fair_threshold(strong, on) == 0.5
    assert fair_threshold(weak, GateSettings(min_confidence=0.5)) == 0.5  # off by default
    assert fair_threshold(np.zeros(0), on) == 0.5  # no real images: as configured
    assert fair_threshold(weak, GateSettings(min_real_acceptance=0.0, fair_confidence=True)) == 0.5


def test_real_acceptance_with_fair_confidence_reports_each_class_threshold():
    probabilities = np.array([[0.4, 0.6], [0.3, 0.7], [0.45, 0.55], [0.1, 0.9]])
    table = real_acceptance(
        probabilities,
        ["a", "a", "a", "b"],
        ["a", "b"],
        GateSettings(min_confidence=0.5, min_real_acceptance=0.6, fair_confidence=True),
    ).set_index("canonical_class")
    # a: 0.4, 0.3, 0.45 -> two of three (0.6) reach 0.4; b: 0.9 >= 0.5 already
    assert table.loc["a", "min_confidence"] == pytest.approx(0.4)
    assert table.loc["a", "accepted"] == 2 and table.loc["a", "verdict"] == "fair"
    assert table.loc["b", "min_confidence"] == 0.5
    plain = real_acceptance(
        probabilities, ["a", "a", "a", "b"], ["a", "b"], GateSettings(min_real_acceptance=0.6)
    ).set_index("canonical_class")
    assert plain.loc["a", "verdict"] == "too_strict" and plain.loc["a", "min_confidence"] == 0.5
    with pytest.raises(ConfigError, match=r"quality_gate\.fair_confidence"):
        GateSettings.from_config({"fair_confidence": "yes"})


def test_min_realism_setting_is_checked():
    assert GateSettings.from_config({"min_realism": 1.0}).min_realism == 1.0
    assert GateSettings().min_realism == 0.0
    with pytest.raises(ConfigError, match=r"quality_gate\.min_realism"):
        GateSettings.from_config({"min_realism": -0.5})


def _fairness_table(pool_files, judge, gate_section, folder):
    """The gate_real_acceptance stage on the test pool, indexed by class."""
    root = pool_files["root"]
    return gate_real_acceptance_stage(
        str(judge),
        str(root / "images.npy"),
        str(root / "index.parquet"),
        gate_section,
        str(folder / "real_acceptance.csv"),
    ).set_index("canonical_class")


def test_gate_fairness_with_realism_scores_real_images_against_training_balls(
    pool_files, judge, tmp_path
):
    """min_realism > 0: the fairness table says how many real validation images of each
    class lie in its training images' Inception k-NN balls, the realism scores being
    the metrics' own (hemaflow.metrics.fid.realism_scores)."""
    from hemaflow.metrics import InceptionFeatures
    from hemaflow.metrics.fid import knn_radii, realism_scores

    images, pool = pool_files["images"], pool_files["pool"]
    table = _fairness_table(
        pool_files, judge, {"min_confidence": 0.0, "min_realism": 1.0}, tmp_path
    )
    inception = InceptionFeatures()
    for name in ("basophil", "eosinophil"):
        own = pool[(pool["canonical_class"] == name) & (pool["split"] == "train")]
        held = pool[(pool["canonical_class"] == name) & pool["split"].isin(["val", "held_out"])]
        train_f = inception.features(images[own["pool_index"].to_numpy()])
        scores = realism_scores(
            train_f, knn_radii(train_f, 3), inception.features(images[held["pool_index"]])
        )
        expected = float((scores >= 1.0).mean())
        assert table.loc[name, "realism_acceptance"] == pytest.approx(expected)
        # min_confidence 0: the judge passes all, so the gate's acceptance is realism's
        assert table.loc[name, "acceptance"] == pytest.approx(expected)
    assert math.isnan(table.loc["neutrophil", "realism_acceptance"])  # no validation images


def test_gate_judge_with_fair_confidence_is_fair_for_every_class_it_checks(
    pool_files, judge, tmp_path
):
    """fair_confidence: at min_confidence 1 (too strict for every class, above) each
    class with validation images gets its own lower threshold, reported, at which the
    judge accepts at least min_real_acceptance of them."""
    from hemaflow.classify.predict import load_classifier, predict_proba

    images, pool = pool_files["images"], pool_files["pool"]
    table = _fairness_table(
        pool_files, judge, {"min_confidence": 1.0, "fair_confidence": True}, tmp_path
    )
    net, names, _ = load_classifier(judge)
    for name in ("basophil", "eosinophil"):
        rows = pool[(pool["canonical_class"] == name) & pool["split"].isin(["val", "held_out"])]
        p = predict_proba(net, images[rows["pool_index"].to_numpy()])[:, names.index(name)]
        threshold = table.loc[name, "min_confidence"]
        assert threshold < 1.0 and table.loc[name, "verdict"] == "fair"
        assert table.loc[name, "accepted"] == int((p >= threshold).sum()) >= 0.9 * len(p)
    assert table.loc["neutrophil", "min_confidence"] == 1.0  # nothing to calibrate on


def test_min_real_acceptance_setting_is_checked():
    assert GateSettings.from_config({"min_real_acceptance": 0.8}).min_real_acceptance == 0.8
    assert GateSettings().min_real_acceptance == 0.9
    with pytest.raises(ConfigError, match=r"quality_gate\.min_real_acceptance"):
        GateSettings.from_config({"min_real_acceptance": 1.5})


def test_gate_judge_on_real_validation_images(pool_files, judge, tmp_path, caplog):
    from hemaflow.classify.predict import load_classifier, predict_proba

    root = pool_files["root"]
    images, pool = pool_files["images"], pool_files["pool"]
    out = tmp_path / "real_acceptance.csv"
    table = gate_real_acceptance_stage(
        str(judge), str(root / "images.npy"), str(root / "index.parquet"), {}, str(out)
    ).set_index("canonical_class")
    assert pd.read_csv(out)["canonical_class"].tolist() == CLASSES
    # val and held_out images only: never train, never test
    assert table["real_images"].to_dict() == {"basophil": 3, "eosinophil": 2, "neutrophil": 0}
    assert table.loc["neutrophil", "verdict"] == "no_validation_images"
    # the counts are the judge's own verdicts at min_confidence 0.5
    net, names, _ = load_classifier(judge)
    for name in ("basophil", "eosinophil"):
        rows = pool[(pool["canonical_class"] == name) & pool["split"].isin(["val", "held_out"])]
        p = predict_proba(net, images[rows["pool_index"].to_numpy()])[:, names.index(name)]
        assert table.loc[name, "accepted"] == int((p >= 0.5).sum())
        expected = "fair" if (p >= 0.5).mean() >= 0.9 else "too_strict"
        assert table.loc[name, "verdict"] == expected
    # any confidence passes at 0: a fair judge; none at 1: too strict, said loudly
    lenient = gate_real_acceptance_stage(
        str(judge),
        str(root / "images.npy"),
        str(root / "index.parquet"),
        {"min_confidence": 0.0},
        str(out),
    )
    assert lenient.set_index("canonical_class").loc["basophil", "verdict"] == "fair"
    with caplog.at_level(logging.WARNING, logger="hemaflow.synth.stages"):
        strict = gate_real_acceptance_stage(
            str(judge),
            str(root / "images.npy"),
            str(root / "index.parquet"),
            {"min_confidence": 1.0, "min_real_acceptance": 0.9},
            str(out),
        )
    assert set(strict.loc[strict["real_images"] > 0, "verdict"]) == {"too_strict"}
    text = caplog.text
    assert "gate judge too strict for basophil" in text and "NOT lowered" in text
    assert "neutrophil has no real validation images" in text


# --------------------------------------------------------------------------- the decision


def test_default_targets_are_the_schemas_issue_16_bar():
    for route in ("cwgan", "fewshot"):
        assert QualityTargets.defaults(route) == QualityTargets.from_config(ISSUE_16_TARGETS, route)
    with pytest.raises(ValueError, match="classifier"):
        QualityTargets.defaults("classifier")


def test_targets_met_pad_with_synthetic_images():
    targets = QualityTargets.from_config(ISSUE_16_TARGETS, "cwgan")
    measures = {"precision": 0.62, "recall": 0.31, "kid": 0.08, "acceptance": 0.9}
    decision = balancing_decision("cwgan", measures, targets)
    assert decision["targets_met"] is True and decision["missed"] == ""
    assert decision["balanced_by"] == "synthetic"


def test_targets_missed_balance_by_sampling_with_the_values():
    targets = QualityTargets.from_config(ISSUE_16_TARGETS, "cwgan")
    measures = {"precision": 0.2, "recall": 0.31, "kid": 0.3, "acceptance": 0.9}
    decision = balancing_decision("cwgan", measures, targets)
    assert decision["targets_met"] is False and decision["balanced_by"] == "sampling"
    assert decision["missed"] == "precision 0.2 < 0.5; kid 0.3 > 0.15"
    # the old behaviour on request: padded anyway, and the report still says it missed
    anyway = balancing_decision("cwgan", measures, targets, require_quality=False)
    assert anyway["balanced_by"] == "synthetic" and anyway["targets_met"] is False
    assert "require_quality is false" in anyway["reason"] and anyway["missed"]


def test_a_metric_not_measured_is_a_missed_target_with_the_reason():
    targets = QualityTargets.from_config(ISSUE_16_TARGETS, "fewshot")
    measures = {"precision": float("nan"), "kid": 0.1, "acceptance": 0.5, "diversity_ratio": 0.9}
    decision = balancing_decision(
        "fewshot", measures, targets, not_measured="too few images to measure: 2, 3"
    )
    assert decision["balanced_by"] == "sampling" and decision["targets_met"] is False
    assert decision["missed"] == (
        "precision not measured (target >= 0.3); too few images to measure: 2, 3"
    )
    # the reason is given once, and only when a metric was not measured
    both = balancing_decision(
        "fewshot", {**measures, "kid": None}, targets, not_measured="no real validation images"
    )
    assert both["missed"] == (
        "precision not measured (target >= 0.3); kid not measured (target <= 0.25); "
        "no real validation images"
    )
    measured = balancing_decision("fewshot", {**measures, "precision": 0.1}, targets, True, "x")
    assert measured["missed"] == "precision 0.1 < 0.3"
    # recall is no target of the few-shot route: not measured is fine there
    assert missed_targets({**measures, "precision": 0.4, "recall": None}, targets) == []
    assert missed_targets({**measures, "precision": 0.4, "diversity_ratio": 0.5}, targets) == [
        "diversity_ratio 0.5 < 0.8"
    ]


def test_quality_measures_from_the_metrics():
    measures = quality_measures(
        {
            "precision": 0.4,
            "recall": float("nan"),
            "kid": 0.2,
            "lpips_diversity": 0.1,
            "real_lpips_diversity": 0.2,
        },
        0.75,
    )
    assert measures["diversity_ratio"] == pytest.approx(0.5) and measures["acceptance"] == 0.75
    assert math.isnan(measures["recall"])
    assert math.isnan(quality_measures({"lpips_diversity": 0.1}, None)["diversity_ratio"])


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"cwgan": {"fid": 10}}, "synthesis.quality_targets.cwgan.fid"),
        ({"cwgan": {"precision": 1.5}}, "synthesis.quality_targets.cwgan.precision"),
        ({"cwgan": {"kid": -1}}, "synthesis.quality_targets.cwgan.kid"),
        ({"cwgan": {"acceptance": True}}, "synthesis.quality_targets.cwgan.acceptance"),
    ],
)
def test_bad_targets_name_the_key(section, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        QualityTargets.from_config(section, "cwgan")


def test_null_target_is_not_checked():
    targets = QualityTargets.from_config({"cwgan": {"precision": None, "kid": 0.1}}, "cwgan")
    assert targets.checked() == {"kid": 0.1}


# ---------------------------------------------------------------------- the balanced set


def test_oversampled_picks_spread_the_repeats():
    rng = np.random.default_rng(0)
    picks = oversampled_picks(3, 8, rng)
    assert len(picks) == 8 and np.bincount(picks, minlength=3).tolist() in (
        [3, 3, 2],
        [3, 2, 3],
        [2, 3, 3],
    )
    assert len(oversampled_picks(3, 0, rng)) == 0
    with pytest.raises(ValueError, match="without training images"):
        oversampled_picks(0, 2, rng)


def _quality(name, measures, validation_images=3):
    return {
        "canonical_class": name,
        "measures": measures,
        "validation_images": validation_images,
        "synthetic_images": 3,
    }


@pytest.fixture
def balanced_inputs(pool_files, tmp_path):
    """Routes, gated samples and validation metrics of two generated classes: basophil's
    C-WGAN-GP met its targets, eosinophil's few-shot GAN missed them."""
    images = pool_files["images"]
    routes = pd.DataFrame(
        {
            "canonical_class": CLASSES,
            "count": [4, 4, 4],
            "route": ["cwgan", "fewshot", "none"],
            "target": [9, 9, 9],
            "to_generate": [3, 5, 0],
            "reason": ["", "", "mid_route is none"],
        }
    )
    routes.to_csv(tmp_path / "routes.csv", index=False)
    samples, gates = {}, []
    met = {"precision": 0.6, "recall": 0.3, "kid": 0.1, "acceptance": 0.8}
    missed = {"precision": 0.1, "kid": 0.5, "acceptance": 0.2, "diversity_ratio": 0.9}
    for name, measures in (("basophil", met), ("eosinophil", missed)):
        folder = tmp_path / name
        folder.mkdir()
        np.save(folder / "images.npy", images[:3])
        pd.DataFrame(
            {
                "synthetic_id": [f"synthetic:{name}:7:{k}" for k in range(3)],
                "seed": 7,
                "offset": range(3),
                "accepted": True,
                "used": True,
                "reject_reason": "",
            }
        ).to_parquet(folder / "candidates.parquet", index=False)
        (folder / "model.pt").write_bytes(b"weights")
        (folder / "quality.json").write_text(json.dumps(_quality(name, measures)))
        (folder / "gate.json").write_text(json.dumps({"canonical_class": name, "used": 3}))
        samples[name] = tuple(
            str(folder / f)
            for f in ("images.npy", "candidates.parquet", "model.pt", "quality.json")
        )
        gates.append(str(folder / "gate.json"))
    # the judge accepts half of eosinophil's real validation images: too strict for it
    pd.DataFrame(
        {
            "canonical_class": CLASSES,
            "real_images": [2, 2, 0],
            "accepted": [2, 1, 0],
            "acceptance": [1.0, 0.5, float("nan")],
            "min_real_acceptance": 0.9,
            "verdict": ["fair", "too_strict", "no_validation_images"],
        }
    ).to_csv(tmp_path / "real_acceptance.csv", index=False)
    return {
        "routes": tmp_path / "routes.csv",
        "samples": samples,
        "gates": gates,
        "judge": tmp_path / "real_acceptance.csv",
    }


def _run_balanced(pool_files, inputs, out, require_quality, share=1.0):
    out.mkdir()
    root = pool_files["root"]
    manifest = balanced_stage(
        str(root / "images.npy"),
        str(root / "index.parquet"),
        str(inputs["routes"]),
        inputs["samples"],
        inputs["gates"],
        str(inputs["judge"]),
        ISSUE_16_TARGETS,
        require_quality,
        out_images=str(out / "images.npy"),
        out_manifest=str(out / "manifest.parquet"),
        out_gate=str(out / "gate.csv"),
        out_balancing=str(out / "balancing.csv"),
        seed=1,
        max_synthetic_share=share,
    )
    return manifest, pd.read_csv(out / "balancing.csv", keep_default_na=False)


def test_balanced_set_pads_where_targets_met_and_samples_where_missed(
    pool_files, balanced_inputs, tmp_path, caplog
):
    with caplog.at_level(logging.WARNING, logger="hemaflow.synth.stages"):
        manifest, table = _run_balanced(
            pool_files, balanced_inputs, tmp_path / "out", require_quality=True
        )
    table = table.set_index("canonical_class")
    pool = pool_files["pool"]
    origin = manifest.groupby(["canonical_class", "origin"]).size().to_dict()
    assert origin[("basophil", "synthetic")] == 3 and ("basophil", "oversampled") not in origin
    assert origin[("eosinophil", "oversampled")] == 5
    assert ("eosinophil", "synthetic") not in origin
    assert not any(key[0] == "neutrophil" and key[1] != "real" for key in origin)
    # the repeated rows are eosinophil's real training images, with their images
    repeated = manifest[manifest["origin"] == "oversampled"]
    train = pool[(pool["split"] == "train") & (pool["canonical_class"] == "eosinophil")]
    assert set(repeated["record_id"]) <= set(train["record_id"])
    balanced = np.load(tmp_path / "out" / "images.npy")
    lookup = dict(zip(pool["record_id"], pool["pool_index"]))
    for row in repeated.itertuples():
        assert np.array_equal(
            balanced[row.balanced_index], pool_files["images"][lookup[row.record_id]]
        )
    assert table.loc["basophil", "balanced_by"] == "synthetic"
    assert table.loc["basophil", "targets_met"] == "True"
    assert table.loc["basophil", "synthetic_used"] == 3
    row = table.loc["eosinophil"]
    assert row["balanced_by"] == "sampling" and row["targets_met"] == "False"
    assert row["missed"] == "precision 0.1 < 0.3; kid 0.5 > 0.25; acceptance 0.2 < 0.4"
    assert row["oversampled"] == 5 and row["synthetic_used"] == 0
    assert row["judge_verdict"] == "too_strict" and "too strict" in row["reason"]
    assert table.loc["neutrophil", "balanced_by"] == "none"
    assert "eosinophil (fewshot): quality targets missed" in caplog.text


def test_require_quality_false_pads_every_generated_class(pool_files, balanced_inputs, tmp_path):
    manifest, table = _run_balanced(
        pool_files, balanced_inputs, tmp_path / "out", require_quality=False
    )
    assert not (manifest["origin"] == "oversampled").any()
    assert (manifest["origin"] == "synthetic").sum() == 6
    table = table.set_index("canonical_class")
    assert table.loc["eosinophil", "balanced_by"] == "synthetic"
    assert table.loc["eosinophil", "targets_met"] == "False"  # still reported as missed


def test_a_synthetic_share_fills_the_rest_of_the_padding_with_real_repeats(
    pool_files, balanced_inputs, tmp_path
):
    """max_synthetic_share 0.3: basophil (4 real, 3 to make, 7 rows) takes 2 synthetic
    images and repeats 1 real one; eosinophil (4 real, 5 to make, 9 rows) 2 and 3; the
    synthetic images kept are the first ones the gate used."""
    manifest, table = _run_balanced(
        pool_files, balanced_inputs, tmp_path / "out", require_quality=False, share=0.3
    )
    origin = manifest.groupby(["canonical_class", "origin"]).size().to_dict()
    table = table.set_index("canonical_class")
    for name, synthetic, repeated in (("basophil", 2, 1), ("eosinophil", 2, 3)):
        assert origin[(name, "synthetic")] == synthetic
        assert origin[(name, "oversampled")] == repeated
        assert table.loc[name, "synthetic_used"] == synthetic
        assert table.loc[name, "oversampled"] == repeated
        assert table.loc[name, "balanced_by"] == "synthetic"
        rows = manifest[(manifest["canonical_class"] == name) & (manifest["origin"] == "synthetic")]
        assert list(rows["offset"]) == list(range(synthetic))
        share = synthetic / (manifest["canonical_class"] == name).sum()
        assert share <= 0.3
    balanced = np.load(tmp_path / "out" / "images.npy")
    assert len(balanced) == len(manifest)


def test_synthetic_cap():
    assert synthetic_cap(2306, 2326, 0.5) == 1163
    assert synthetic_cap(2306, 2326, 1.0) == 2306
    assert synthetic_cap(10, 2326, 0.5) == 10
    assert synthetic_cap(5, 10, 0.0) == 0
    with pytest.raises(ValueError, match="share"):
        synthetic_cap(5, 10, 1.5)


def test_balancing_table_needs_the_metrics_of_every_generated_class(balanced_inputs):
    routes = pd.read_csv(balanced_inputs["routes"], keep_default_na=False)
    with pytest.raises(ValueError, match="eosinophil: generated by fewshot but no validation"):
        balancing_table(routes, {"basophil": _quality("basophil", {})}, ISSUE_16_TARGETS, True)


def test_balanced_set_needs_the_judge_verdict_of_every_generated_class(
    pool_files, balanced_inputs, tmp_path
):
    judge = pd.read_csv(balanced_inputs["judge"])
    judge[judge["canonical_class"] != "eosinophil"].to_csv(tmp_path / "judge.csv", index=False)
    with pytest.raises(ValueError, match=r"judge\.csv: no row for the generated classes"):
        _run_balanced(
            pool_files,
            {**balanced_inputs, "judge": tmp_path / "judge.csv"},
            tmp_path / "out",
            require_quality=True,
        )


def test_build_balanced_refuses_to_oversample_a_class_without_training_images(pool_files):
    with pytest.raises(ValueError, match="lymphocyte"):
        build_balanced(pool_files["images"], pool_files["pool"], {}, oversample={"lymphocyte": 2})


# --------------------------------------------------------- measured on validation images


def test_validation_metrics_use_validation_images_only(pool_files, tmp_path):
    root = pool_files["root"]
    fake, _ = pbc_cells(5, 64, classes=["basophil"], offset=20)
    np.save(tmp_path / "images.npy", fake)
    pd.DataFrame(
        {
            "accepted": [True] * 5 + [False] * 3,
            "predicted_class": ["basophil"] * 6 + ["eosinophil"] * 2,
        }
    ).to_parquet(tmp_path / "candidates.parquet", index=False)
    result = validation_metrics_stage(
        "basophil",
        "cwgan",
        str(root / "images.npy"),
        str(root / "index.parquet"),
        str(tmp_path / "images.npy"),
        str(tmp_path / "candidates.parquet"),
        max_images=50,
        out_json=str(tmp_path / "validation_metrics.json"),
    )
    assert result == json.loads((tmp_path / "validation_metrics.json").read_text())
    assert result["splits"] == ["val", "held_out"]
    assert result["validation_images"] == 3  # 2 val + 1 held out; the 2 test images unused
    assert result["measures"]["acceptance"] == pytest.approx(5 / 8)
    assert result["measures"]["kid"] is not None and result["measures"]["diversity_ratio"] > 0
    # 3 real images make no k-NN manifold (it needs more than 3): not measured -> null
    assert result["measures"]["precision"] is None
    table = balancing_table(
        pd.DataFrame(
            {
                "canonical_class": ["basophil"],
                "count": [4],
                "route": ["cwgan"],
                "target": [9],
                "to_generate": [5],
                "reason": [""],
            }
        ),
        {"basophil": result},
        ISSUE_16_TARGETS,
        True,
    )
    assert table.loc[0, "balanced_by"] == "sampling"
    assert table.loc[0, "missed"].startswith("precision not measured (target >= 0.5)")
    assert table.loc[0, "missed"].endswith(
        "too few images to measure: 5 accepted synthetic, 3 real validation"
    )
    # a class without validation images: nothing is measured, and the reason says so
    none = validation_metrics_stage(
        "neutrophil",
        "fewshot",
        str(root / "images.npy"),
        str(root / "index.parquet"),
        str(tmp_path / "images.npy"),
        str(tmp_path / "candidates.parquet"),
        max_images=50,
        out_json=str(tmp_path / "neutrophil.json"),
    )
    assert none["validation_images"] == 0
    assert none["measures"]["kid"] is None and none["measures"]["acceptance"] is not None
    routes = pd.DataFrame(
        {
            "canonical_class": ["neutrophil"],
            "count": [4],
            "route": ["fewshot"],
            "target": [9],
            "to_generate": [5],
            "reason": [""],
        }
    )
    table = balancing_table(routes, {"neutrophil": none}, ISSUE_16_TARGETS, True)
    assert table.loc[0, "balanced_by"] == "sampling"
    assert table.loc[0, "missed"].endswith("no real validation images of the class")


# ------------------------------------------------------------------------- summary.json


def test_summary_says_per_class_how_it_was_balanced(pool_files, balanced_inputs, tmp_path):
    _run_balanced(pool_files, balanced_inputs, tmp_path / "out", require_quality=True)
    (tmp_path / "data.json").write_text(
        json.dumps({"rows": 10, "kept": 9, "by_status": {"ok": 9}, "classes": {}})
    )
    metrics = (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "macro_sensitivity",
        "macro_specificity",
    )
    evaluation = {"n_images": 4}
    for name in metrics:
        evaluation.update({name: 0.5, f"{name}_low": 0.4, f"{name}_high": 0.6})
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    real_acceptance(
        np.array([[0.9, 0.1], [0.2, 0.8]]),
        ["basophil", "basophil"],
        ["basophil", "eosinophil"],
        GateSettings(),
    ).to_csv(tmp_path / "real_acceptance.csv", index=False)
    summary = headline(
        str(tmp_path / "data.json"),
        str(tmp_path / "evaluation.json"),
        synthesis_gate=str(tmp_path / "out" / "gate.csv"),
        synthesis_balancing=str(tmp_path / "out" / "balancing.csv"),
        gate_real_acceptance=str(tmp_path / "real_acceptance.csv"),
    )
    json.dumps(summary, allow_nan=False)  # valid JSON: not measured is null, not NaN
    by_class = {row["canonical_class"]: row for row in summary["synthesis"]}
    assert set(by_class) == set(CLASSES)
    assert by_class["basophil"]["balanced_by"] == "synthetic"
    assert by_class["basophil"]["targets_met"] is True and by_class["basophil"]["used"] == 3
    eosinophil = by_class["eosinophil"]
    assert eosinophil["route"] == "fewshot" and eosinophil["targets_met"] is False
    assert eosinophil["balanced_by"] == "sampling" and eosinophil["missed"] == [
        "precision 0.1 < 0.3",
        "kid 0.5 > 0.25",
        "acceptance 0.2 < 0.4",
    ]
    assert eosinophil["kid"] == 0.5 and eosinophil["oversampled"] == 5
    assert by_class["basophil"]["missed"] == []
    assert by_class["neutrophil"]["targets_met"] is None
    assert summary["gate_judge"]["too_strict"] == ["basophil"]
    assert summary["gate_judge"]["unchecked"] == ["eosinophil"]
