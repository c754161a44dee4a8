"""In-lab cross-validation, the yardstick of a cross-lab goal: stratified folds, every
image predicted once by a model that never trained on it, pooled metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hemaflow.classify import leave_one_out
from hemaflow.classify.leave_one_out import in_lab_cross_validation, stratified_folds

from .realdata import pbc_cells
from .test_classifier import TRAIN_TINY

CLASSES = ["eosinophil", "lymphocyte", "neutrophil"]


def test_stratified_folds_deal_every_class_evenly():
    labels = ["a"] * 11 + ["b"] * 5 + ["c"] * 1
    fold = stratified_folds(labels, 5, seed=0)
    assert fold.shape == (17,) and set(fold.tolist()) <= set(range(5))
    for name in "abc":
        counts = np.bincount(fold[np.array(labels) == name], minlength=5)
        assert counts.max() - counts.min() <= 1
    # the classes' remainders (1, 0 and 1 rows over 5 folds) land in different folds
    sizes = np.bincount(fold, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    assert np.array_equal(fold, stratified_folds(labels, 5, seed=0))
    assert not np.array_equal(fold, stratified_folds(labels, 5, seed=1))


@pytest.fixture(scope="module")
def lab_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("in_lab") / "cache"
    folder.mkdir()
    images, names = pbc_cells(8, 32, classes=CLASSES)
    index = pd.DataFrame(
        {
            "record_id": [f"lab:{k}" for k in range(len(names))],
            "domain_index": np.arange(len(names)),
            "canonical_class": names.astype(str),
            # every split counts: the whole lab is cross-validated
            "split": (["train", "val", "test", "train"] * len(names))[: len(names)],
        }
    )
    np.save(folder / "images.npy", images)
    index.to_parquet(folder / "index.parquet", index=False)
    return {"lab": (str(folder / "images.npy"), str(folder / "index.parquet"))}


def test_every_image_is_predicted_by_a_model_that_never_trained_on_it(
    lab_cache, tmp_path, monkeypatch
):
    seen = []
    real_train = leave_one_out.train_on_rows

    def spy(train_images, train_rows, val_images, val_rows, *args):
        seen.append((set(train_rows["record_id"]), set(val_rows["record_id"])))
        return real_train(train_images, train_rows, val_images, val_rows, *args)

    monkeypatch.setattr(leave_one_out, "train_on_rows", spy)
    options = {"preset": "small", **TRAIN_TINY, "iterations": 2}
    result = in_lab_cross_validation(
        lab_cache,
        "lab",
        options,
        str(tmp_path / "state"),
        str(tmp_path / "out"),
        folds=3,
        n_boot=50,
    )
    n = 8 * len(CLASSES)
    assert result["n_images"] == n and len(result["predicted"]) == n
    assert set(result["predicted"]) <= set(CLASSES)
    assert np.asarray(result["confusion"]).sum() == n
    assert 0.0 <= result["balanced_accuracy_low"] <= result["balanced_accuracy_high"] <= 1.0
    fold = np.asarray(result["fold"])
    assert len(seen) == 3
    for k, (train_ids, val_ids) in enumerate(seen):
        held = {f"lab:{j}" for j in np.flatnonzero(fold == k)}
        assert not (train_ids | val_ids) & held
        assert (train_ids | val_ids) == {f"lab:{j}" for j in range(n)} - held
        assert not train_ids & val_ids
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert written["balanced_accuracy"] == pytest.approx(result["balanced_accuracy"])
    assert sorted(p.name for p in (tmp_path / "out").glob("model-fold*.pt")) == [
        f"model-fold{k}.pt" for k in range(3)
    ]


def test_one_fold_is_refused(lab_cache, tmp_path):
    with pytest.raises(ValueError, match="at least 2 folds"):
        in_lab_cross_validation(
            lab_cache, "lab", {"preset": "small"}, str(tmp_path), str(tmp_path), folds=1
        )


def test_tta_reaches_every_cross_lab_evaluation(lab_cache, tmp_path, monkeypatch):
    """``tta`` is passed down to the prediction by the leave-one-lab-out, in-lab and
    cross-lab evaluations, and a test-time-augmented evaluation is invariant to turning
    every image by a quarter (which a single prediction of a random network is not)."""
    from hemaflow.classify import predict
    from hemaflow.classify.predict import load_classifier
    from hemaflow.classify.stages import lab_evaluation

    options = {"preset": "small", **TRAIN_TINY, "iterations": 2}
    result = in_lab_cross_validation(
        lab_cache, "lab", options, str(tmp_path / "state"), str(tmp_path / "out"), folds=2
    )
    assert result["tta"] is False
    net, classes, _ = load_classifier(tmp_path / "out" / "model-fold0.pt")
    images, rows = leave_one_out.labelled_rows(*lab_cache["lab"], leave_one_out.ALL_SPLITS)
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))
    plain = predict.predict_proba(net, images)
    assert not np.allclose(plain, predict.predict_proba(net, turned), atol=1e-4)
    averaged = lab_evaluation(net, classes, images, rows, 20, 0, tta=True)
    assert (
        averaged["confusion"]
        == lab_evaluation(net, classes, turned, rows, 20, 0, tta=True)["confusion"]
    )

    calls = []
    real = predict.predict_proba

    def spy(net, images, batch_size=256, tta=False):
        calls.append(tta)
        return real(net, images, batch_size, tta)

    monkeypatch.setattr(predict, "predict_proba", spy)
    lab_evaluation(net, classes, images, rows, 20, 0, tta=True)
    in_lab_cross_validation(
        lab_cache,
        "lab",
        options,
        str(tmp_path / "state"),
        str(tmp_path / "out2"),
        folds=2,
        n_boot=20,
        tta=True,
    )
    assert calls == [True, True, True]


def test_balance_labs_weighs_labs_alike_within_each_class():
    """Within each class every lab that has it reaches the largest lab's count (its own
    rows repeated in order); a lab without the class gets none; the originals come first."""
    from hemaflow.classify.leave_one_out import balance_labs

    rows = pd.DataFrame(
        {
            "domain": ["big"] * 9 + ["small"] * 3 + ["tiny"],
            "canonical_class": ["a"] * 6 + ["b"] * 3 + ["a", "a", "b", "b"],
            "record_id": [f"r{k}" for k in range(13)],
        }
    )
    images = np.arange(13) * 10  # stands for the images: which row each one is
    out_images, out_rows = balance_labs(images, rows)
    assert list(out_rows["record_id"][:13]) == list(rows["record_id"])
    assert np.array_equal(out_images, out_rows["record_id"].str[1:].astype(int) * 10)
    counts = out_rows.groupby(["canonical_class", "domain"]).size().to_dict()
    assert counts == {
        ("a", "big"): 6,
        ("a", "small"): 6,
        ("b", "big"): 3,
        ("b", "small"): 3,
        ("b", "tiny"): 3,
    }
    # small's two 'a' rows are cycled: r9, r10, r9, r10, r9, r10
    small_a = out_rows[(out_rows["domain"] == "small") & (out_rows["canonical_class"] == "a")]
    assert list(small_a["record_id"]) == ["r9", "r10"] * 3


def test_leave_one_lab_out_balances_the_training_labs_when_told(tmp_path, monkeypatch):
    """``balance=True`` trains on the lab-balanced rows (validation rows untouched) and the
    result says so; the default trains on the pooled rows as they are."""
    folders = {}
    for lab, per_class, offset in (("big", 6, 0), ("small", 2, 6), ("held", 3, 8)):
        images, names = pbc_cells(per_class, 32, classes=CLASSES, offset=offset)
        folder = tmp_path / lab
        folder.mkdir()
        split = (["train", "train", "val"] if per_class > 2 else ["train", "val"]) * len(names)
        index = pd.DataFrame(
            {
                "record_id": [f"{lab}:{k}" for k in range(len(names))],
                "domain_index": np.arange(len(names)),
                "canonical_class": names.astype(str),
                "split": split[: len(names)],
            }
        )
        np.save(folder / "images.npy", images)
        index.to_parquet(folder / "index.parquet", index=False)
        folders[lab] = (str(folder / "images.npy"), str(folder / "index.parquet"))
    seen = []
    real_train = leave_one_out.train_on_rows

    def spy(train_images, train_rows, val_images, val_rows, *args):
        seen.append((train_rows.copy(), len(val_rows)))
        return real_train(train_images, train_rows, val_images, val_rows, *args)

    monkeypatch.setattr(leave_one_out, "train_on_rows", spy)
    options = {"preset": "small", **TRAIN_TINY, "iterations": 2}
    labs = ["big", "small", "held"]
    results = {}
    for balance in (False, True):
        results[balance] = leave_one_out.leave_one_lab_out(
            folders,
            "held",
            labs,
            options,
            str(tmp_path / "state"),
            str(tmp_path / f"model-{balance}.pt"),
            str(tmp_path / f"result-{balance}.json"),
            n_boot=20,
            balance=balance,
        )
    (plain, plain_val), (balanced, balanced_val) = seen
    per_lab = {
        name: rows.groupby(["canonical_class", "domain"]).size().unstack()
        for name, rows in (("plain", plain), ("balanced", balanced))
    }
    # big: 4 training images a class, small: 1; balanced, small's one is repeated to 4
    assert (per_lab["plain"]["big"] == 4).all() and (per_lab["plain"]["small"] == 1).all()
    assert (per_lab["balanced"]["small"] == per_lab["balanced"]["big"]).all()
    assert plain_val == balanced_val
    assert results[False]["balance_labs"] is False and results[True]["balance_labs"] is True
    assert json.loads((tmp_path / "result-True.json").read_text())["balance_labs"] is True
    assert results[True]["n_images"] == 3 * len(CLASSES)
