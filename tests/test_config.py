"""Config validation: defaults filled, and every error names its key."""

import copy

import pytest
import yaml

from hemaflow.config import canonical_json, load_config, validate_config
from hemaflow.errors import ConfigError

from .realdata import REPO, require_shared_datasets


@pytest.fixture
def shared_datasets():
    return require_shared_datasets()


@pytest.fixture
def raw_config(shared_datasets):
    with open(REPO / "config" / "config.yaml") as handle:
        config = yaml.safe_load(handle)
    config["data_root"] = str(shared_datasets)
    return config


def test_default_config_validates_and_fills_defaults(raw_config):
    config = validate_config(copy.deepcopy(raw_config))
    assert config["ingest"]["max_image_pixels"] == 40_000_000
    assert config["results_dir"] == "results"
    assert config["datasets"]["pbc"]["labelled"] is True
    assert config["datasets"]["raabin_frames"]["labelled"] is False
    # layout defaults are filled per layout only
    assert config["datasets"]["bccd"]["multi_label_separator"] == ","
    assert "box_margin" not in config["datasets"]["pbc"]


def test_minimal_config_gets_all_section_defaults(shared_datasets):
    config = validate_config(
        {
            "data_root": str(shared_datasets),
            "datasets": {"z": {"path": "zheng_tecom", "domain": "z", "layout": "imagefolder"}},
            # its one folder is its one label (checked against the map at parse time)
            "class_map": {"z": {"Dataset 1": None}},
        }
    )
    assert config["dedup"] == {
        "near_threshold": 8,
        "near_min_correlation": 0.95,
        "dihedral": True,
        "dihedral_min_correlation": 0.985,
        "contained_in": [],
        "contained_min_correlation": 0.93,
        "conflict_policy": "drop",
    }
    assert config["split"]["train"] == 0.7
    assert config["subgroup"]["unmapped"] == "error"


@pytest.mark.parametrize(
    ("mutate", "key", "reason"),
    [
        (lambda c: c.update(unknown_key=1), "unknown_key", "unknown key"),
        (lambda c: c["datasets"]["pbc"].update(layuot="x"), "datasets.pbc.layuot", "unknown key"),
        (lambda c: c.update(image_size="big"), "image_size", "wrong type"),
        (lambda c: c["datasets"]["pbc"].update(layout="zip"), "datasets.pbc.layout", "not one of"),
        (
            lambda c: c["datasets"]["pbc"].update(path="no_such"),
            "datasets.pbc.path",
            "does not exist",
        ),
        (lambda c: c["datasets"]["bccd"].pop("csv"), "datasets.bccd.csv", "required by layout"),
        (
            lambda c: c["datasets"]["bccd"].update(csv="x.csv"),
            "datasets.bccd.csv",
            "does not exist",
        ),
        (lambda c: c["datasets"]["pbc"].pop("domain"), "datasets.pbc.domain", "required"),
        (lambda c: c["dedup"].update(near_threshold=40), "dedup.near_threshold", "40"),
        (
            lambda c: c["dedup"].update(conflict_policy="vote"),
            "dedup.conflict_policy",
            "not one of",
        ),
        (lambda c: c["split"].update(test=0.5), "split", "sum to 1"),
        (lambda c: c["class_map"].update(nope={}), "class_map.nope", "names no dataset"),
        (lambda c: c["class_map"].pop("pbc"), "class_map.pbc", "no class map"),
        (lambda c: c.update(data_root="/no/such/root"), "data_root", "does not exist"),
        (
            lambda c: c["datasets"]["pbc"].update(box_margin=0.1),
            "datasets.pbc.box_margin",
            "not used by layout",
        ),
        (
            lambda c: c["datasets"]["pbc"].update(fine_label_regex="^([A-Z]+)_"),
            "datasets.pbc.fine_label_regex",
            "(?P<fine>",
        ),
    ],
)
def test_config_errors_name_the_key(raw_config, mutate, key, reason):
    mutate(raw_config)
    with pytest.raises(ConfigError) as caught:
        validate_config(raw_config)
    assert caught.value.key == key
    assert reason in str(caught.value)
    assert f"'{key}'" in str(caught.value)


def test_load_config_reports_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_canonical_json_is_order_independent():
    assert canonical_json({"b": 1, "a": {"y": 2, "x": 1}}) == canonical_json(
        {"a": {"x": 1, "y": 2}, "b": 1}
    )


def test_synthesis_defaults_and_checks(raw_config):
    from hemaflow.errors import ConfigError

    default_config = validate_config(copy.deepcopy(raw_config))
    synthesis = default_config["synthesis"]
    assert synthesis["large_min"] == 1000 and synthesis["fewshot_max"] == 100
    assert synthesis["mid_route"] == "cwgan" and synthesis["target"] == "largest"
    bad = dict(default_config, synthesis={**synthesis, "fewshot_max": 5000})
    with pytest.raises(ConfigError, match=r"synthesis\.fewshot_max"):
        validate_config(bad)
    bad = dict(default_config, synthesis={**synthesis, "subsample": {"basofil": 50}})
    with pytest.raises(ConfigError, match=r"synthesis\.subsample\.basofil"):
        validate_config(bad)
    # the quality curve: sizes and whether the default target builds it
    assert synthesis["curve"] == {
        "images_per_class": 100,
        "real_per_class": 200,
        "in_default_target": False,
    }
    for key, value in (("images_per_class", 1), ("real_per_class", "many"), ("imags", 5)):
        bad = dict(default_config, synthesis={**synthesis, "curve": {key: value}})
        with pytest.raises(ConfigError, match=r"synthesis\.curve"):
            validate_config(bad)


def test_rare_study_defaults_and_checks(raw_config):
    """The rare-class study's section: defaults, and its domain and classes checked when
    the default target builds it (else when the target is asked for)."""
    from hemaflow.config import check_rare_study
    from hemaflow.synth.rare_study_plan import settings_from_config

    config = validate_config(copy.deepcopy(raw_config))
    study = config["rare_study"]
    assert study == {
        "in_default_target": False,
        "domain": "pbc",
        "classes": ["basophil", "monocyte"],
        "levels": [50, 20],
        "seeds": [0, 1, 2],
        "arms": ["none", "cwgan", "fewshot", "both"],
        "target": "largest",
        "classifier_repeats": 1,
    }
    settings = settings_from_config(config)
    assert settings.classifier_repeats == 1
    raised = copy.deepcopy(raw_config)
    raised["rare_study"] = {"classifier_repeats": 3}
    assert settings_from_config(validate_config(raised)).classifier_repeats == 3
    raised["rare_study"] = {"classifier_repeats": 0}
    with pytest.raises(ConfigError, match="classifier_repeats"):
        validate_config(raised)
    assert settings.cwgan == config["synthesis"]["cwgan"]
    assert settings.classifier == config["classifier"]
    assert settings.large_min == config["synthesis"]["large_min"]
    assert settings.n_boot == config["evaluation"]["n_boot"]
    check_rare_study(config)
    for change, key in (
        ({"domain": "raabin"}, "rare_study.domain"),  # not labelled
        ({"domain": "zheng_tecom", "classes": ["platelet"]}, "rare_study.classes"),
    ):
        bad = copy.deepcopy(raw_config)
        bad["rare_study"] = {"in_default_target": True, **change}
        with pytest.raises(ConfigError) as caught:
            validate_config(bad)
        assert caught.value.key == key
        # not built by default: the config stands, the target would refuse it
        bad["rare_study"]["in_default_target"] = False
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_rare_study(validate_config(bad))
    bad = copy.deepcopy(raw_config)
    bad["rare_study"] = {"arms": ["none", "gan"]}
    with pytest.raises(ConfigError, match=r"rare_study\.arms"):
        validate_config(bad)


def test_quality_gate_and_quality_target_keys(raw_config):
    """Issue 16's keys: defaults (the issue's targets, a judge that accepts 90 % of real
    validation images, quality required) and errors that name the key."""
    config = validate_config(copy.deepcopy(raw_config))
    synthesis = config["synthesis"]
    assert synthesis["require_quality"] is True
    assert synthesis["quality_gate"]["min_real_acceptance"] == 0.9
    assert synthesis["quality_gate"]["fair_confidence"] is False
    assert synthesis["quality_targets"] == {
        "cwgan": {
            "precision": 0.5,
            "recall": 0.2,
            "kid": 0.15,
            "diversity_ratio": None,
            "acceptance": 0.6,
        },
        "fewshot": {
            "precision": 0.3,
            "recall": None,
            "kid": 0.25,
            "diversity_ratio": 0.8,
            "acceptance": 0.4,
        },
    }
    # a user's partial targets keep the other defaults; null switches a target off
    raw = copy.deepcopy(raw_config)
    raw["synthesis"] = {"quality_targets": {"fewshot": {"kid": 0.3, "precision": None}}}
    fewshot = validate_config(raw)["synthesis"]["quality_targets"]["fewshot"]
    assert fewshot["kid"] == 0.3 and fewshot["precision"] is None and fewshot["acceptance"] == 0.4
    for section, key in (
        ({"require_quality": "yes"}, "synthesis.require_quality"),
        ({"quality_gate": {"fair_confidence": "yes"}}, "synthesis.quality_gate.fair_confidence"),
        (
            {"quality_gate": {"min_real_acceptance": 1.2}},
            "synthesis.quality_gate.min_real_acceptance",
        ),
        (
            {"quality_targets": {"cwgan": {"precision": 2}}},
            "synthesis.quality_targets.cwgan.precision",
        ),
        ({"quality_targets": {"cwgan": {"fid": 10}}}, "synthesis.quality_targets.cwgan.fid"),
        ({"quality_targets": {"none": {}}}, "synthesis.quality_targets.none"),
        ({"quality_targets": {"fewshot": {"kid": -0.1}}}, "synthesis.quality_targets.fewshot.kid"),
    ):
        raw = copy.deepcopy(raw_config)
        raw["synthesis"] = section
        with pytest.raises(ConfigError) as caught:
            validate_config(raw)
        assert caught.value.key == key, (section, str(caught.value))
