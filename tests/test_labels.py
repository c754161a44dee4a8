"""Class map lookups and the unmapped-label error."""

import pandas as pd
import pytest

from hemaflow.errors import UnmappedLabelsError
from hemaflow.labels import UNMAPPED, canonical_classes, lookup_class, unmapped_labels

CLASS_MAP = {
    "BNE": "neutrophil",
    "neutrophil": "neutrophil",
    "MY": "immature_granulocyte",
    "ig": "immature_granulocyte",
    "junk": None,
}


@pytest.mark.parametrize(
    ("fine", "source", "expected"),
    [
        ("BNE", "neutrophil", "neutrophil"),
        ("MY", "ig", "immature_granulocyte"),
        ("PMY", "ig", "immature_granulocyte"),  # fine label unknown: source label decides
        (None, "junk", None),  # mapped to null on purpose
        (None, "smudge", UNMAPPED),
        (None, None, None),
    ],
)
def test_lookup_prefers_fine_then_source(fine, source, expected):
    assert lookup_class(CLASS_MAP, fine, source) == expected


def test_canonical_classes_and_unmapped_listing():
    config = {
        "datasets": {"a": {"labelled": True}, "u": {"labelled": False}},
        "class_map": {"a": CLASS_MAP},
    }
    manifest = pd.DataFrame(
        {
            "dataset": ["a", "a", "a", "u", "a"],
            "fine_label": ["BNE", None, "XX", None, None],
            "source_label": ["neutrophil", "smudge", "blast", "anything", "smudge"],
        }
    )
    classes = canonical_classes(manifest, config)
    assert classes.tolist() == ["neutrophil", UNMAPPED, UNMAPPED, None, UNMAPPED]
    missing = unmapped_labels(manifest, classes)
    assert missing == {"a": ["blast (fine label XX)", "smudge"]}
    message = str(UnmappedLabelsError(missing))
    assert "'smudge'" in message and "class_map" in message and "'blast (fine label XX)'" in message
