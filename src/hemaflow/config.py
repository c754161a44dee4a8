"""Load and validate the hemaflow configuration.

The JSON schema (``schemas/config.schema.yaml``) types every key and carries its default;
:func:`validate_config` fills those defaults in and then checks what a schema cannot say
(a dataset's folder exists, its layout has the keys it needs, the class map names known
datasets), so that a bad config stops before any job runs with a message naming the key.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from hemaflow.data.layouts import format_filename
from hemaflow.data.listing import LayoutError
from hemaflow.errors import ConfigError

SCHEMA_PATH = Path(str(resources.files("hemaflow") / "schemas" / "config.schema.yaml"))

LAYOUT_REQUIRED = {
    "imagefolder": (),
    "csv": ("csv", "id_column", "label_column"),
    "yolo": ("images_dir", "labels_dir"),
}
LAYOUT_KEYS = {
    "imagefolder": {"fine_label_regex", "crop", "cell_crop_factor", "cell_reference"},
    "csv": {
        "csv",
        "images_dir",
        "id_column",
        "label_column",
        "filename_pattern",
        "label_codes",
        "multi_label_separator",
        "crop",
        "cell_crop_factor",
        "cell_reference",
    },
    "yolo": {"images_dir", "labels_dir", "box_class", "box_margin"},
}
COMMON_KEYS = {
    "path",
    "domain",
    "layout",
    "labelled",
    "include",
    "exclude",
    "frame_sizes",
    "group_regex",
}
# Defaults that depend on the layout, so they cannot live in the schema.
LAYOUT_DEFAULTS = {
    "imagefolder": {"crop": "center", "cell_crop_factor": 2.0, "cell_reference": "auto"},
    "csv": {
        "crop": "center",
        "cell_crop_factor": 2.0,
        "cell_reference": "auto",
        "images_dir": ".",
        "filename_pattern": "%s",
        "label_codes": {},
        "multi_label_separator": ",",
    },
    "yolo": {"images_dir": "images", "labels_dir": "labels", "box_class": 0, "box_margin": 0.15},
}


def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH) as handle:
        return yaml.safe_load(handle)


def _with_defaults(validator_class):
    """A validator that writes each property's ``default`` into the instance first."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _error_key(error: jsonschema.ValidationError) -> str:
    path = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:
            return ".".join(path + [extra[0]])
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        return ".".join(path + [missing]) if missing else ".".join(path)
    return ".".join(path) or "<root>"


def _error_reason(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"unknown key (allowed here: {', '.join(allowed)})"
    if error.validator == "required":
        return "required key is missing"
    if error.validator == "type":
        return f"wrong type: expected {error.validator_value}, got {json.dumps(error.instance)}"
    if error.validator == "enum":
        return f"{json.dumps(error.instance)} is not one of {error.validator_value}"
    return error.message


def validate_schema(config: dict[str, Any]) -> dict[str, Any]:
    """Validate against the JSON schema in place, filling defaults; raise ConfigError."""
    validator = _DefaultingValidator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        raise ConfigError(_error_key(first), _error_reason(first))
    return config


def resolve_data_root(config: Mapping[str, Any], base_dir: str | Path = ".") -> Path:
    root = Path(config["data_root"]).expanduser()
    return root if root.is_absolute() else (Path(base_dir) / root)


def check_semantics(config: dict[str, Any], base_dir: str | Path = ".") -> None:
    """Checks a JSON schema cannot express; each error names the key."""
    data_root = resolve_data_root(config, base_dir)
    if not data_root.is_dir():
        raise ConfigError("data_root", f"folder {str(data_root)!r} does not exist")
    for name, spec in config["datasets"].items():
        key = f"datasets.{name}"
        layout = spec["layout"]
        for default_key, default_value in LAYOUT_DEFAULTS[layout].items():
            spec.setdefault(default_key, copy.deepcopy(default_value))
        for required in LAYOUT_REQUIRED[layout]:
            if required not in spec:
                raise ConfigError(f"{key}.{required}", f"required by layout '{layout}'")
        for extra in sorted(set(spec) - COMMON_KEYS - LAYOUT_KEYS[layout]):
            raise ConfigError(f"{key}.{extra}", f"not used by layout '{layout}'")
        root = data_root / spec["path"]
        if not root.is_dir():
            raise ConfigError(f"{key}.path", f"dataset folder {str(root)!r} does not exist")
        if layout == "csv":
            table = root / spec["csv"]
            if not table.is_file():
                raise ConfigError(f"{key}.csv", f"label table {str(table)!r} does not exist")
        if layout in ("csv", "yolo"):
            images = root / spec["images_dir"]
            if not images.is_dir():
                raise ConfigError(f"{key}.images_dir", f"folder {str(images)!r} does not exist")
        if layout == "yolo":
            labels = root / spec["labels_dir"]
            if not labels.is_dir():
                raise ConfigError(f"{key}.labels_dir", f"folder {str(labels)!r} does not exist")
        if "fine_label_regex" in spec:
            try:
                pattern = re.compile(spec["fine_label_regex"])
            except re.error as exc:
                raise ConfigError(f"{key}.fine_label_regex", f"invalid regex: {exc}") from None
            if "fine" not in pattern.groupindex:
                raise ConfigError(f"{key}.fine_label_regex", "needs a named group (?P<fine>...)")
        if "group_regex" in spec:
            try:
                re.compile(spec["group_regex"])
            except re.error as exc:
                raise ConfigError(f"{key}.group_regex", f"invalid regex: {exc}") from None
        if layout == "csv":
            try:
                format_filename(spec["filename_pattern"], "1")
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{key}.filename_pattern", f"bad printf pattern: {exc}") from None
    for number, pair in enumerate(config["dedup"]["contained_in"]):
        for role in ("crops", "frames"):
            if pair[role] not in config["datasets"]:
                raise ConfigError(
                    f"dedup.contained_in.{number}.{role}", f"{pair[role]!r} is not a dataset"
                )
    for name in config["class_map"]:
        if name not in config["datasets"]:
            raise ConfigError(f"class_map.{name}", "names no dataset in 'datasets'")
    for name, spec in config["datasets"].items():
        if spec["labelled"] and name not in config["class_map"]:
            raise ConfigError(
                f"class_map.{name}",
                "labelled dataset has no class map (add one, or set "
                f"datasets.{name}.labelled: false)",
            )
    if config["subgroup"]["unmapped"] == "error":
        check_class_map_coverage(config, data_root)
    domains = {spec["domain"] for spec in config["datasets"].values()}
    target = config["normalization"]["target"]
    if target != "auto" and target not in domains:
        raise ConfigError(
            "normalization.target", f"{target!r} is not a domain ({', '.join(sorted(domains))})"
        )
    if "preset" not in config["normalization"]["cyclegan"]:
        config["normalization"]["cyclegan"]["preset"] = "cpu"
    synthesis = config["synthesis"]
    if synthesis["fewshot_max"] > synthesis["large_min"] + 1:
        raise ConfigError(
            "synthesis.fewshot_max",
            f"{synthesis['fewshot_max']} is above large_min ({synthesis['large_min']}) + 1: "
            "the routes would overlap",
        )
    classes = {
        c for mapping in config["class_map"].values() for c in mapping.values() if c is not None
    }
    for name in synthesis["subsample"]:
        if name not in classes:
            raise ConfigError(
                f"synthesis.subsample.{name}",
                f"not a canonical class of the class map ({', '.join(sorted(classes))})",
            )
    for section in ("classifier", "cwgan", "fewshot"):
        synthesis[section].setdefault("preset", "cpu")
    config["classifier"].setdefault("preset", "small")
    synthesis["gate_classifier"].setdefault("preset", "small")
    labelled = sorted({spec["domain"] for spec in config["datasets"].values() if spec["labelled"]})
    train_domain = config["cross_lab"]["train_domain"]
    if train_domain != "auto" and train_domain not in labelled:
        raise ConfigError(
            "cross_lab.train_domain",
            f"{train_domain!r} is not a labelled domain ({', '.join(labelled)})",
        )
    if config["rare_study"]["in_default_target"]:
        check_rare_study(config)
    ratios = config["split"]
    total = ratios["train"] + ratios["val"] + ratios["test"]
    if abs(total - 1.0) > 1e-6:
        raise ConfigError("split", f"train + val + test must sum to 1, got {total:g}")
    if ratios["train"] <= 0:
        raise ConfigError("split.train", "must be positive")


def check_rare_study(config: Mapping[str, Any]) -> None:
    """The rare-class study's domain is labelled and its classes are classes of that
    domain. Checked with the config when the default target builds the study, else when
    the `rare_class_study` target is asked for (a config without pbc need not change the
    study's defaults to run anything else)."""
    study = config["rare_study"]
    domain = study["domain"]
    datasets = [
        name
        for name, spec in config["datasets"].items()
        if spec["domain"] == domain and spec.get("labelled", True)
    ]
    if not datasets:
        labelled = sorted(
            {s["domain"] for s in config["datasets"].values() if s.get("labelled", True)}
        )
        raise ConfigError(
            "rare_study.domain", f"{domain!r} is not a labelled domain ({', '.join(labelled)})"
        )
    classes = {
        c for name in datasets for c in config["class_map"].get(name, {}).values() if c is not None
    }
    for name in study["classes"]:
        if name not in classes:
            raise ConfigError(
                "rare_study.classes",
                f"{name!r} is not a class of domain {domain} ({', '.join(sorted(classes))})",
            )


def check_class_map_coverage(config: dict[str, Any], data_root: Path) -> None:
    """Every label that the labelled datasets' listings give is in the class map (or
    mapped to null); a ConfigError names every missing label of every dataset."""
    from hemaflow.labels import labels_missing_from_class_map

    try:
        missing = labels_missing_from_class_map(config, data_root)
    except LayoutError as exc:
        raise ConfigError("datasets", f"cannot list a dataset: {exc}") from None
    if missing:
        listing = "; ".join(
            f"{dataset}: {', '.join(repr(label) for label in labels)}"
            for dataset, labels in sorted(missing.items())
        )
        key = f"class_map.{next(iter(missing))}" if len(missing) == 1 else "class_map"
        raise ConfigError(
            key,
            f"labels not covered (add them, map them to null, or set "
            f"subgroup.unmapped: drop): {listing}",
        )


def validate_config(config: dict[str, Any], base_dir: str | Path = ".") -> dict[str, Any]:
    """Schema (with defaults) then semantic checks; returns the same, completed dict."""
    validate_schema(config)
    check_semantics(config, base_dir)
    return config


def load_config(path: str | Path, base_dir: str | Path = ".") -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    path = Path(path)
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {str(path)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("<file>", f"{str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError("<root>", f"{str(path)!r} must hold a mapping")
    return validate_config(config, base_dir)


def canonical_json(value: Any) -> str:
    """Sorted, compact JSON: equal configs give equal strings (stable rule params)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
