"""Classifier evaluation metrics: against scikit-learn, a case worked by hand, the bootstrap,
cross-lab class restriction and the confusion-matrix files."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from hemaflow.classify.metrics import (
    _resampled_confusion_matrices,
    bootstrap_ci,
    confusion_matrix,
    evaluation_report,
    per_class_metrics,
    restrict_to_shared_classes,
    summary_metrics,
    write_confusion_matrix,
)

N_CLASSES = 5
NEVER_PREDICTED = 3
ABSENT_FROM_TRUE = 4


def random_predictions(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """5 classes: class 3 occurs in y_true but is never predicted, class 4 is predicted but
    absent from y_true; about 60 % of the predictions are right."""
    rng = np.random.default_rng(seed)
    y_true = rng.choice([0, 1, 2, 3], size=n, p=[0.4, 0.3, 0.2, 0.1])
    wrong = rng.choice([0, 1, 2, 4], size=n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, wrong)
    y_pred[y_pred == NEVER_PREDICTED] = 0
    assert NEVER_PREDICTED not in y_pred and ABSENT_FROM_TRUE not in y_true
    assert ABSENT_FROM_TRUE in y_pred and NEVER_PREDICTED in y_true
    return y_true, y_pred


# --- against scikit-learn -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_scikit_learn(seed: int) -> None:
    y_true, y_pred = random_predictions(seed)
    labels = list(range(N_CLASSES))
    cm = confusion_matrix(y_true, y_pred, N_CLASSES)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y_true, y_pred, labels=labels))

    summary = summary_metrics(y_true, y_pred, N_CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        balanced = skm.balanced_accuracy_score(y_true, y_pred)
    assert summary["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert summary["balanced_accuracy"] == pytest.approx(balanced)
    macro = {"average": "macro", "zero_division": 0}
    assert summary["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, **macro))
    assert summary["macro_sensitivity"] == pytest.approx(skm.recall_score(y_true, y_pred, **macro))
    assert summary["macro_precision"] == pytest.approx(skm.precision_score(y_true, y_pred, **macro))
    # one class is predicted but never true, so the two differ
    assert summary["macro_sensitivity"] < summary["balanced_accuracy"]

    table = per_class_metrics(cm)
    per_class = {"labels": labels, "average": None, "zero_division": np.nan}
    np.testing.assert_allclose(table["sensitivity"], skm.recall_score(y_true, y_pred, **per_class))
    np.testing.assert_allclose(table["precision"], skm.precision_score(y_true, y_pred, **per_class))
    np.testing.assert_allclose(table["f1"], skm.f1_score(y_true, y_pred, **per_class))
    assert np.isnan(table.loc[NEVER_PREDICTED, "precision"])
    assert np.isnan(table.loc[ABSENT_FROM_TRUE, "sensitivity"])

    # specificity from scikit-learn's one-vs-rest matrices [[tn, fp], [fn, tp]]
    one_vs_rest = skm.multilabel_confusion_matrix(y_true, y_pred, labels=labels)
    specificity = one_vs_rest[:, 0, 0] / (one_vs_rest[:, 0, 0] + one_vs_rest[:, 0, 1])
    np.testing.assert_allclose(table["specificity"], specificity)
    assert summary["macro_specificity"] == pytest.approx(specificity.mean())
    np.testing.assert_array_equal(table["support"], np.bincount(y_true, minlength=N_CLASSES))
    np.testing.assert_array_equal(table["predicted"], np.bincount(y_pred, minlength=N_CLASSES))


def test_class_in_neither_is_left_out_of_macro_averages() -> None:
    y_true, y_pred = random_predictions(0)
    padded = summary_metrics(y_true, y_pred, N_CLASSES + 1)  # class 5 occurs nowhere
    assert padded == pytest.approx(summary_metrics(y_true, y_pred, N_CLASSES))
    table = per_class_metrics(confusion_matrix(y_true, y_pred, N_CLASSES + 1))
    assert table.loc[5, ["sensitivity", "precision", "f1"]].isna().all()
    assert table.loc[5, "specificity"] == 1.0


# --- by hand ------------------------------------------------------------------------------


def test_small_case_by_hand() -> None:
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
    # true 0 -> predicted 0, 0, 1, 2 ; true 1 -> 1, 1, 0 ; true 2 -> 2, 2, 1
    expected_cm = np.array([[2, 1, 1], [1, 2, 0], [0, 1, 2]])
    cm = confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, expected_cm)

    # column sums (predicted) 3, 4, 3; row sums (support) 4, 3, 3; 10 images.
    # class 0: TP 2, FN 2, FP 1, TN 10-2-2-1 = 5 -> sens 2/4, spec 5/6, prec 2/3, F1 4/7
    # class 1: TP 2, FN 1, FP 2, TN 10-2-1-2 = 5 -> sens 2/3, spec 5/7, prec 2/4, F1 4/7
    # class 2: TP 2, FN 1, FP 1, TN 10-2-1-1 = 6 -> sens 2/3, spec 6/7, prec 2/3, F1 4/6
    table = per_class_metrics(cm)
    np.testing.assert_array_equal(table["support"], [4, 3, 3])
    np.testing.assert_array_equal(table["predicted"], [3, 4, 3])
    np.testing.assert_allclose(table["sensitivity"], [2 / 4, 2 / 3, 2 / 3])
    np.testing.assert_allclose(table["specificity"], [5 / 6, 5 / 7, 6 / 7])
    np.testing.assert_allclose(table["precision"], [2 / 3, 2 / 4, 2 / 3])
    np.testing.assert_allclose(table["f1"], [4 / 7, 4 / 7, 4 / 6])

    # accuracy 6/10; balanced accuracy (1/2 + 2/3 + 2/3)/3 = 11/18;
    # macro F1 (4/7 + 4/7 + 2/3)/3 = 38/63; macro specificity (5/6 + 5/7 + 6/7)/3 = 101/126;
    # macro precision (2/3 + 1/2 + 2/3)/3 = 11/18
    summary = summary_metrics(y_true, y_pred, 3)
    assert summary["accuracy"] == pytest.approx(0.6)
    assert summary["balanced_accuracy"] == pytest.approx(11 / 18)
    assert summary["macro_sensitivity"] == pytest.approx(11 / 18)
    assert summary["macro_f1"] == pytest.approx(38 / 63)
    assert summary["macro_specificity"] == pytest.approx(101 / 126)
    assert summary["macro_precision"] == pytest.approx(11 / 18)


# --- bootstrap ----------------------------------------------------------------------------


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_contains_point_estimate(seed: int, stratified: bool) -> None:
    y_true, y_pred = random_predictions(seed)
    intervals = bootstrap_ci(y_true, y_pred, N_CLASSES, seed=seed, stratified=stratified)
    point = summary_metrics(y_true, y_pred, N_CLASSES)
    table = per_class_metrics(confusion_matrix(y_true, y_pred, N_CLASSES))
    for name, value in point.items():
        low, high = intervals[name]
        assert low <= value <= high, name
        assert high - low > 0, name
    for name in ("sensitivity", "specificity", "precision"):
        for k in range(N_CLASSES):
            low, high = intervals[f"{name}/{k}"]
            value = table.loc[k, name]
            if np.isnan(value):
                assert np.isnan(low) and np.isnan(high), f"{name}/{k}"
            else:
                assert low <= value <= high, f"{name}/{k}"


def test_bootstrap_perfect_predictions() -> None:
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    for stratified in (True, False):
        intervals = bootstrap_ci(y, y, 4, n_boot=200, stratified=stratified)
        for name, (low, high) in intervals.items():
            assert (low, high) == (1.0, 1.0), name


def test_bootstrap_narrower_with_more_samples() -> None:
    y_true, y_pred = random_predictions(0, n=300)
    small = bootstrap_ci(y_true, y_pred, N_CLASSES, n_boot=500)
    large = bootstrap_ci(np.tile(y_true, 10), np.tile(y_pred, 10), N_CLASSES, n_boot=500)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "sensitivity/0"):
        assert np.diff(large[name])[0] < 0.5 * np.diff(small[name])[0], name


def test_bootstrap_deterministic_by_seed() -> None:
    y_true, y_pred = random_predictions(0)
    first = bootstrap_ci(y_true, y_pred, N_CLASSES, n_boot=300, seed=7)
    again = bootstrap_ci(y_true, y_pred, N_CLASSES, n_boot=300, seed=7)
    other = bootstrap_ci(y_true, y_pred, N_CLASSES, n_boot=300, seed=8)
    assert first.keys() == again.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert any(first[name] != other[name] for name in ("accuracy", "macro_f1"))


def test_stratified_resamples_keep_support() -> None:
    y_true, y_pred = random_predictions(0)
    cm = confusion_matrix(y_true, y_pred, N_CLASSES)
    rng = np.random.default_rng(0)
    stratified = _resampled_confusion_matrices(cm, 50, rng, stratified=True)
    assert stratified.shape == (50, N_CLASSES, N_CLASSES)
    np.testing.assert_array_equal(stratified.sum(axis=2), np.broadcast_to(cm.sum(1), (50, 5)))
    # a cell that is 0 (class 3 never predicted) stays 0
    assert (stratified[:, :, NEVER_PREDICTED] == 0).all()
    pooled = _resampled_confusion_matrices(cm, 50, rng, stratified=False)
    assert (pooled.sum(axis=(1, 2)) == len(y_true)).all()
    assert len(np.unique(pooled[:, 0].sum(axis=1))) > 1  # supports vary


@pytest.mark.parametrize("stratified", [True, False])
def test_bootstrap_matches_resampling_image_indices(stratified: bool) -> None:
    """The multinomial draw of confusion matrices has the distribution of resampling the
    test images' indices; compare the accuracy interval with a direct index bootstrap."""
    y_true, y_pred = random_predictions(3, n=300)
    n_boot = 4000
    rng = np.random.default_rng(123)
    if stratified:
        rows = np.concatenate(
            [
                rng.choice(np.flatnonzero(y_true == k), size=(n_boot, (y_true == k).sum()))
                for k in np.unique(y_true)
            ],
            axis=1,
        )
    else:
        rows = rng.integers(0, len(y_true), size=(n_boot, len(y_true)))
    accuracies = (y_true[rows] == y_pred[rows]).mean(axis=1)
    direct = np.percentile(accuracies, [2.5, 97.5])
    intervals = bootstrap_ci(y_true, y_pred, N_CLASSES, n_boot=n_boot, stratified=stratified)
    np.testing.assert_allclose(intervals["accuracy"], direct, atol=0.012)


def test_bootstrap_is_fast() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 8, 5000)
    y_pred = np.where(rng.random(5000) < 0.8, y_true, rng.integers(0, 8, 5000))
    start = time.perf_counter()
    bootstrap_ci(y_true, y_pred, 8, n_boot=1000)
    assert time.perf_counter() - start < 2.0


# --- report and files ---------------------------------------------------------------------


def test_evaluation_report() -> None:
    y_true, y_pred = random_predictions(1)
    names = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
    summary, per_class, cm = evaluation_report(y_true, y_pred, names, n_boot=200, seed=0)
    np.testing.assert_array_equal(cm, confusion_matrix(y_true, y_pred, 5))
    point = summary_metrics(y_true, y_pred, 5)
    intervals = bootstrap_ci(y_true, y_pred, 5, n_boot=200, seed=0)
    for name, value in point.items():
        assert summary[name] == value
        assert (summary[f"{name}_low"], summary[f"{name}_high"]) == intervals[name]
    assert summary["n_images"] == len(y_true)
    assert per_class.index.tolist() == names
    assert per_class.index.name == "canonical_class"
    for name in ("sensitivity", "specificity", "precision"):
        assert {f"{name}_low", f"{name}_high"} <= set(per_class.columns)
        assert per_class[f"{name}_low"].tolist() == pytest.approx(
            [intervals[f"{name}/{k}"][0] for k in range(5)], nan_ok=True
        )
    np.testing.assert_allclose(
        per_class[["sensitivity", "f1"]].to_numpy(),
        per_class_metrics(cm)[["sensitivity", "f1"]].to_numpy(),
    )


def test_write_confusion_matrix(tmp_path) -> None:
    names = ["neutrophil", "lymphocyte", "monocyte"]
    cm = np.array([[40, 3, 1], [2, 25, 0], [0, 0, 0]])  # monocyte: no true images
    csv_path, png_path = tmp_path / "cm.csv", tmp_path / "cm.png"
    write_confusion_matrix(cm, names, csv_path, png_path, title="test lab")
    table = pd.read_csv(csv_path, index_col=0)
    assert table.index.tolist() == names
    assert table.columns.tolist() == names
    np.testing.assert_array_equal(table.to_numpy(), cm)
    data = png_path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000


# --- cross-lab ----------------------------------------------------------------------------


def test_restrict_to_shared_classes() -> None:
    model_classes = ["neutrophil", "lymphocyte", "monocyte", "blast"]
    shared = ["monocyte", "neutrophil"]
    y_true_names = ["neutrophil", "lymphocyte", "monocyte", "blast", "monocyte"]
    probabilities = np.array(
        [
            [0.2, 0.1, 0.1, 0.6],  # neutrophil; blast is out, neutrophil 0.2 > monocyte 0.1
            [0.1, 0.8, 0.05, 0.05],  # lymphocyte: not shared, dropped
            [0.3, 0.0, 0.5, 0.2],  # monocyte -> monocyte
            [0.1, 0.1, 0.1, 0.7],  # blast: dropped
            [0.05, 0.9, 0.04, 0.01],  # monocyte; lymphocyte is out, neutrophil 0.05 > 0.04
        ]
    )
    y_true, y_pred, classes = restrict_to_shared_classes(
        y_true_names, probabilities, model_classes, shared
    )
    assert classes == shared
    np.testing.assert_array_equal(y_true, [1, 0, 0])
    np.testing.assert_array_equal(y_pred, [1, 0, 1])
    assert summary_metrics(y_true, y_pred, len(classes))["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((["a"], [[1.0, 0.0]], ["a", "b"], ["c"]), "shared_classes"),
        ((["a"], [[1.0, 0.0, 0.0]], ["a", "b"], ["a"]), "probabilities"),
        ((["a"], [[-0.1, 1.1]], ["a", "b"], ["a"]), "probabilities"),
        ((["b"], [[0.5, 0.5]], ["a", "b"], ["a"]), "y_true_names"),
        ((["a"], [[0.5, 0.5]], ["a", "a"], ["a"]), "model_classes"),
        ((["a"], [[0.5, 0.5]], ["a", "b"], []), "class_names"),
    ],
)
def test_restrict_to_shared_classes_validates(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        restrict_to_shared_classes(*arguments)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y_true", "y_pred", "n_classes", "error", "message"),
    [
        ([], [], 3, ValueError, "y_true is empty"),
        ([0, 1], [0], 3, ValueError, "differ in length"),
        ([0, 3], [0, 1], 3, ValueError, "y_true holds labels outside"),
        ([0, 1], [0, -1], 3, ValueError, "y_pred holds labels outside"),
        ([[0, 1]], [[0, 1]], 3, ValueError, "y_true must be 1-D"),
        ([0.0, 1.0], [0, 1], 3, TypeError, "y_true must hold integer"),
        ([0, 1], [0, 1], 0, ValueError, "n_classes"),
        ([0, 1], [0, 1], 2.0, TypeError, "n_classes"),
    ],
)
def test_label_validation(y_true, y_pred, n_classes, error, message) -> None:
    with pytest.raises(error, match=message):
        confusion_matrix(y_true, y_pred, n_classes)


def test_other_validation(tmp_path) -> None:
    with pytest.raises(ValueError, match="cm must be a non-empty square"):
        per_class_metrics(np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="cm holds no predictions"):
        per_class_metrics(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([0, 1], [0, 1], 2, n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([0, 1], [0, 1], 2, alpha=1.5)
    with pytest.raises(ValueError, match="class_names"):
        evaluation_report([0, 1], [0, 1], ["a", "a"], n_boot=10, seed=0)
    with pytest.raises(ValueError, match="class_names has 1 names"):
        write_confusion_matrix(
            np.eye(2, dtype=int), ["a"], tmp_path / "x.csv", tmp_path / "x.png", ""
        )


def test_ablation_table_and_chart_from_evaluations(tmp_path):
    from hemaflow.classify.ablation import ablation_stage, classifier_options_for, variant_settings
    from hemaflow.classify.metrics import evaluation_report

    classes = ["basophil", "eosinophil", "neutrophil"]
    truth = np.array([0] * 10 + [1] * 10 + [2] * 10)
    paths = {}
    for variant, wrong in (("full", 2), ("no_fewshot", 6)):
        predicted = truth.copy()
        predicted[:wrong] = 2  # basophils missed
        summary, per_class, _ = evaluation_report(truth, predicted, classes, 50, 0)
        s, p = tmp_path / f"{variant}.json", tmp_path / f"{variant}.csv"
        s.write_text(json.dumps(summary))
        per_class.to_csv(p)
        paths[variant] = (str(s), str(p))
    table = ablation_stage(
        list(paths),
        [v[0] for v in paths.values()],
        [v[1] for v in paths.values()],
        str(tmp_path / "table.csv"),
        str(tmp_path / "chart.png"),
    )
    assert list(table["variant"]) == ["full", "no_fewshot"]
    assert table["sensitivity_basophil"].tolist() == [0.8, 0.4]
    assert table["balanced_accuracy_vs_full"].iloc[1] < 0 == table["balanced_accuracy_vs_full"][0]
    assert (tmp_path / "chart.png").stat().st_size > 5_000
    assert variant_settings("no_normalization", "cyclegan") == ("none", "routed", None)
    assert variant_settings("full", "reinhard") == ("reinhard", "routed", None)
    assert classifier_options_for({"preset": "small"}, "no_ge") == {
        "preset": "small",
        "gather_excite": False,
    }
    with pytest.raises(ValueError, match="ablation variant"):
        variant_settings("no_dedup", "none")
