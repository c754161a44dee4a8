"""The quality curve's parts that need no trained generator: its time axis, its metrics
on real images standing in for generated ones, its settings, table and plot. (The curves
of trained generators are tested with them, in test_cwgan.py and test_fewshot.py.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hemaflow.metrics import InceptionFeatures
from hemaflow.plots import plot_quality_curve
from hemaflow.synth.curve import (
    CURVE_COLUMNS,
    CURVE_SPLITS,
    CurvePoint,
    CurveSettings,
    concat_curves,
    point_metrics,
    quality_curve,
    real_features,
    seconds_at,
    training_seconds,
)
from tests.realdata import pbc_cells

torch.set_num_threads(1)


def test_the_reference_is_never_the_test_split():
    assert "test" not in CURVE_SPLITS and set(CURVE_SPLITS) == {"val", "held_out"}


def test_seconds_at_interpolates_the_loss_log(tmp_path):
    path = tmp_path / "losses.csv"
    pd.DataFrame(
        {"iteration": [10, 20, 30], "loss": [1, 2, 3], "seconds": [5.0, 9.0, 21.0]}
    ).to_csv(path, index=False)
    assert np.allclose(seconds_at(path, [5, 10, 25, 30]), [2.5, 5.0, 15.0, 21.0])
    assert training_seconds(path) == 21.0
    empty = tmp_path / "empty.csv"
    pd.DataFrame({"iteration": [], "seconds": []}).to_csv(empty, index=False)
    assert training_seconds(empty) == 0.0 and seconds_at(empty, [0]).tolist() == [0.0]
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"iteration": [1]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="bad.csv.*seconds"):
        seconds_at(bad, [1])


def test_settings_from_config():
    settings = CurveSettings.from_config(
        {"images_per_class": 8, "real_per_class": 9, "in_default_target": True}, seed=3
    )
    assert settings == CurveSettings(images_per_class=8, real_per_class=9, seed=3)
    assert CurveSettings.from_config(None) == CurveSettings(100, 200, 0)
    with pytest.raises(ValueError, match="synthesis.curve.images_per_class"):
        CurveSettings(images_per_class=1)


def test_quality_curve_on_real_images_and_its_plot(tmp_path):
    """Two 'snapshots' standing in for a generator: one drawing another class's cells,
    then one drawing cells of the class itself. KID falls, precision rises, and the
    table and plot say so."""
    cells, names = pbc_cells(14, 64, classes=["basophil", "platelet"])
    basophil, platelet = cells[names == "basophil"], cells[names == "platelet"]
    inception = InceptionFeatures("cpu")
    settings = CurveSettings(images_per_class=7, real_per_class=7, seed=0)
    real = real_features({"basophil": basophil[7:]}, settings, inception)
    assert real["basophil"].shape == (7, 2048)

    def drawing(images):
        return lambda name, n, seed: images[:n]

    points = [
        CurvePoint(10, 30.0, drawing(platelet)),
        CurvePoint(20, 60.0, drawing(basophil)),
    ]
    table = quality_curve("cwgan", points, real, settings, inception, image_size=64)
    assert list(table.columns) == list(CURVE_COLUMNS)
    assert table["acceptance"].isna().all()  # no judge
    # a judge that accepts the cells of the class asked for: the platelets drawn for
    # basophil are rejected, the basophils accepted (KID alone cannot tell which is which)
    seen = []

    def judge(name, images):
        seen.append((name, len(images)))
        known = {cell.tobytes() for cell in basophil}
        return float(np.mean([cell.tobytes() in known for cell in images]))

    judged = quality_curve("cwgan", points, real, settings, inception, 64, judge=judge)
    assert judged["acceptance"].tolist() == [0.0, 1.0] and seen == [("basophil", 7)] * 2
    assert judged.drop(columns="acceptance").equals(table.drop(columns="acceptance"))
    assert table["iteration"].tolist() == [10, 20] and table["seconds"].tolist() == [30.0, 60.0]
    far, near = table.to_dict("records")
    assert near["kid"] < far["kid"] and near["precision"] >= far["precision"]
    assert (table["fake_images"] == 7).all() and (table["real_images"] == 7).all()

    table.to_csv(tmp_path / "a.csv", index=False)
    other = table.assign(canonical_class="platelet")
    other.to_csv(tmp_path / "b.csv", index=False)
    both = concat_curves([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert len(both) == 4 and list(both.columns) == list(CURVE_COLUMNS)
    plot_quality_curve(both, str(tmp_path / "curve.png"), "two classes")
    assert (tmp_path / "curve.png").stat().st_size > 5_000
    plot_quality_curve(table.iloc[:0], str(tmp_path / "empty.png"), "no snapshots")
    assert (tmp_path / "empty.png").exists()
    # a table written before the acceptance column: read with it empty
    table.drop(columns="acceptance").to_csv(tmp_path / "old.csv", index=False)
    judged.to_csv(tmp_path / "judged.csv", index=False)
    mixed = concat_curves([tmp_path / "old.csv", tmp_path / "judged.csv"])
    assert list(mixed.columns) == list(CURVE_COLUMNS)
    assert mixed["acceptance"].isna().tolist() == [True, True, False, False]
    plot_quality_curve(mixed, str(tmp_path / "judged.png"), "with the judge's acceptance")
    assert (tmp_path / "judged.png").stat().st_size > (tmp_path / "curve.png").stat().st_size
    pd.DataFrame({"iteration": [1]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(ValueError, match="c.csv: not a quality curve table"):
        concat_curves([tmp_path / "c.csv"])


def test_point_metrics_leave_out_what_too_few_images_cannot_measure():
    rng = np.random.default_rng(0)
    fake, real = rng.normal(size=(3, 16)), rng.normal(size=(10, 16))
    few = point_metrics(fake, real, seed=0)  # 3 images: KID yes, a 3-NN manifold no
    assert np.isfinite(few["kid"]) and np.isnan(few["precision"]) and np.isnan(few["recall"])
    none = point_metrics(fake[:1], real, seed=0)
    assert all(np.isnan(value) for value in none.values())
    enough = point_metrics(rng.normal(size=(10, 16)), real, seed=0)
    assert all(np.isfinite(value) for value in enough.values())
