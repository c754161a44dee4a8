"""The normalization plan: target choice, per-class majority, pair orientation."""

import pandas as pd
import pytest

from hemaflow.normalize.apply import model_for
from hemaflow.normalize.plan import destination, make_plan


def _counts(rows):
    return pd.DataFrame(rows, columns=["canonical_class", "domain", "total"])


COUNTS = _counts(
    [
        ["neutrophil", "pbc", 3000],
        ["neutrophil", "tecom", 170],
        ["lymphocyte", "pbc", 100],
        ["lymphocyte", "tecom", 400],
        ["unlabelled", "raabin", 500],
    ]
)


def test_target_policy_maps_every_other_domain_to_the_largest():
    plan = make_plan(COUNTS, "auto", "target")
    assert plan["target"] == "pbc"
    assert plan["pairs"] == [["raabin", "pbc"], ["tecom", "pbc"]]
    assert destination(plan, "tecom", "lymphocyte") == "pbc"
    assert destination(plan, "pbc", "neutrophil") == "pbc"  # the target stays as it is
    assert destination(plan, "raabin", None) == "pbc"


def test_per_class_majority_maps_each_class_to_its_largest_domain():
    plan = make_plan(COUNTS, "auto", "per_class_majority")
    assert destination(plan, "tecom", "neutrophil") == "pbc"
    assert destination(plan, "pbc", "lymphocyte") == "tecom"  # like Barcelona -> Munich
    assert destination(plan, "raabin", None) == "pbc"  # unlabelled: overall target
    # one model per pair, oriented the way most images go (170 tecom vs 100 pbc images)
    assert plan["pairs"] == [["raabin", "pbc"], ["tecom", "pbc"]]
    assert model_for(plan, "tecom", "pbc") == ("tecom_to_pbc", "G_AB")
    assert model_for(plan, "pbc", "tecom") == ("tecom_to_pbc", "G_BA")
    with pytest.raises(KeyError):
        model_for(plan, "raabin", "tecom")


def test_explicit_target_and_errors():
    plan = make_plan(COUNTS, "tecom", "target")
    assert plan["pairs"] == [["pbc", "tecom"], ["raabin", "tecom"]]
    with pytest.raises(ValueError, match="normalization.target"):
        make_plan(COUNTS, "nowhere", "target")
    with pytest.raises(ValueError, match="normalization.direction"):
        make_plan(COUNTS, "auto", "sideways")
