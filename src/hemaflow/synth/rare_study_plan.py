"""The rare-class study's plan: its arms, settings, file paths, cut and run keys.

What the study is, without running anything: the arms and the generators each one adds,
:class:`RareStudySettings` (checked on construction, built from a workflow config by
:func:`settings_from_config`, or the smoke-run ``QUICK`` changes), the paths of a run's
result and models, the seeded cut of the rare classes (:func:`cut_pool`), the key a run's
result is stored under (what it depends on), and the padding target with each
generator's share of it. The runs are in :mod:`hemaflow.synth.rare_study`; the tables,
chart and verdict in :mod:`hemaflow.synth.rare_study_report`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow import smoke
from hemaflow.errors import ConfigError
from hemaflow.synth.pool import build_pool, train_counts
from hemaflow.synth.quality import GateSettings

ARMS = ("none", "cwgan", "fewshot", "both")
# the generators whose images an arm adds, in the order its share is split
ARM_GENERATORS: dict[str, tuple[str, ...]] = {
    "none": (),
    "cwgan": ("cwgan",),
    "fewshot": ("fewshot",),
    "both": ("cwgan", "fewshot"),
}
ARM_LABELS = {
    "none": "no synthesis",
    "cwgan": "C-WGAN-GP",
    "fewshot": "few-shot GAN",
    "both": "both (half each)",
}
_SEQUENCES = ("classes", "levels", "seeds", "arms")


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RareStudySettings:
    """What the study is. ``classes``: the classes cut; ``levels``: training images left
    to each; ``target``: training images of a cut class after padding (``largest``: the
    largest class's count, the workflow's ``synthesis.target``; or a number);
    ``large_min``: the few-shot GAN meta-trains on the classes with more training images
    than this. The option sections are ``{"preset": ..., **overrides}`` of the classifier
    (``hemaflow.classify``), the real-data classifier (the C-WGAN-GP's third player), the
    C-WGAN-GP and the few-shot GAN; their ``seed`` is replaced by the run's seed.
    ``classifier_repeats``: classifiers trained per arm, level and seed on the same
    training set, each with its own seed (:func:`classifier_seed`); the report averages
    them per seed, so that a lift measures the training set rather than one classifier's
    draw."""

    classes: tuple[str, ...] = ("basophil", "monocyte")
    levels: tuple[int, ...] = (50, 20)
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARMS
    target: int | str = "largest"
    large_min: int = 1000
    classifier: dict = field(default_factory=lambda: {"preset": "small"})
    real_classifier: dict = field(default_factory=lambda: {"preset": "cpu"})
    cwgan: dict = field(default_factory=lambda: {"preset": "cpu"})
    fewshot: dict = field(default_factory=lambda: {"preset": "cpu"})
    quality_gate: dict = field(default_factory=dict)
    max_candidates_factor: float = 3.0
    synthetic_share: float = 1.0
    n_boot: int = 1000
    bootstrap_seed: int = 0
    classifier_repeats: int = 1

    def __post_init__(self) -> None:
        for name in _SEQUENCES:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ConfigError(
                "rare_study.classes", f"expected distinct classes, got {self.classes}"
            )
        for name in ("levels", "seeds"):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise ConfigError(f"rare_study.{name}", f"expected a list of ints, got {values}")
        if min(self.levels) < 1:
            raise ConfigError("rare_study.levels", f"every level must be >= 1, got {self.levels}")
        unknown = [arm for arm in self.arms if arm not in ARMS]
        if not self.arms or unknown:
            raise ConfigError("rare_study.arms", f"expected some of {ARMS}, got {self.arms}")
        if self.target != "largest" and not (
            isinstance(self.target, int) and not isinstance(self.target, bool) and self.target > 0
        ):
            raise ConfigError(
                "rare_study.target", f"expected 'largest' or a positive count, got {self.target!r}"
            )
        share = self.synthetic_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise ConfigError(
                "rare_study.synthetic_share", f"expected a number in (0, 1], got {share!r}"
            )
        repeats = self.classifier_repeats
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ConfigError(
                "rare_study.classifier_repeats", f"expected an int >= 1, got {repeats!r}"
            )
        GateSettings.from_config(self.quality_gate)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RareStudySettings:
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(f"rare_study.{key}", f"unknown setting (known: {sorted(known)})")
        return cls(**dict(values))

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for name in _SEQUENCES:
            values[name] = list(values[name])
        return values

    def with_changes(self, **changes: Any) -> RareStudySettings:
        return RareStudySettings.from_dict({**self.as_dict(), **changes})


def settings_from_config(config: Mapping[str, Any]) -> RareStudySettings:
    """The study of a validated workflow config: its ``rare_study`` section with the
    options of ``synthesis`` (generators, real-data classifier, gate, ``large_min``),
    ``classifier`` and the bootstrap of ``evaluation``."""
    study, synthesis = config["rare_study"], config["synthesis"]
    return RareStudySettings(
        classes=tuple(study["classes"]),
        levels=tuple(study["levels"]),
        seeds=tuple(study["seeds"]),
        arms=tuple(study["arms"]),
        target=study["target"],
        classifier_repeats=study["classifier_repeats"],
        large_min=synthesis["large_min"],
        classifier=dict(config["classifier"]),
        real_classifier=dict(synthesis["classifier"]),
        cwgan=dict(synthesis["cwgan"]),
        fewshot=dict(synthesis["fewshot"]),
        quality_gate=dict(synthesis["quality_gate"]),
        max_candidates_factor=float(synthesis["max_candidates_factor"]),
        synthetic_share=float(synthesis["max_synthetic_share"]),
        n_boot=config["evaluation"]["n_boot"],
        bootstrap_seed=config["evaluation"]["seed"],
    )


# A smoke run (hemaflow.smoke): networks and schedules far too small to learn anything,
# every step of every arm in seconds; the gate lets every candidate through (none would
# pass).
QUICK: dict[str, Any] = {
    "classifier": smoke.CLASSIFIER,
    "real_classifier": smoke.REAL_CLASSIFIER,
    "cwgan": smoke.CWGAN,
    "fewshot": smoke.FEWSHOT,
    "quality_gate": {"min_confidence": 0.0},
    "n_boot": 50,
}


# ------------------------------------------------------------------------ where things go


# a repeat's classifier seed: the run's seed plus this times the repeat
REPEAT_SEED_STEP = 1000


def run_name(arm: str, repeat: int = 0) -> str:
    """A run of one (level, seed): its arm, and for ``repeat`` > 0 which further
    classifier of that arm (``fewshot.repeat2``)."""
    return arm if repeat == 0 else f"{arm}.repeat{repeat}"


def study_runs(settings: RareStudySettings) -> list[tuple[str, str, int]]:
    """(name, arm, repeat) of every run of one (level, seed), repeat by repeat."""
    return [
        (run_name(arm, repeat), arm, repeat)
        for repeat in range(settings.classifier_repeats)
        for arm in settings.arms
    ]


def classifier_seed(seed: int, repeat: int) -> int:
    """The seed of the arm classifier ``repeat`` of a run of ``seed``: the run's seed for
    the first (the cut, the generators and the generation keep the run's seed in every
    repeat)."""
    return seed + REPEAT_SEED_STEP * repeat


def result_path(out_dir: str | Path, arm: str, level: int, seed: int, repeat: int = 0) -> Path:
    return (
        Path(out_dir) / "runs" / f"level{level}" / f"seed{seed}" / f"{run_name(arm, repeat)}.json"
    )


def models_dir(out_dir: str | Path, level: int, seed: int) -> Path:
    return Path(out_dir) / "models" / f"level{level}" / f"seed{seed}"


def meta_model_path(out_dir: str | Path, seed: int) -> Path:
    return Path(out_dir) / "models" / f"seed{seed}" / "fewshot_meta.pt"


def study_dir_of(level_seed_file: str | Path) -> Path:
    """The study's folder from a file of one (level, seed):
    ``{out_dir}/runs/level{L}/seed{S}/{file}``."""
    path = Path(level_seed_file)
    if path.parent.parent.parent.name != "runs":
        raise ValueError(f"{path}: not in a study's runs/level*/seed*/ folder")
    return path.parents[3]


# -------------------------------------------------------------------------- data, keys


def cut_pool(
    images: np.ndarray,
    index: pd.DataFrame,
    domain: str,
    classes: Sequence[str],
    level: int,
    seed: int,
) -> tuple[np.ndarray, pd.DataFrame]:
    """The domain's labelled images with each of ``classes`` cut to ``level`` training
    images (``synthesis.pool.build_pool``; the rest of their training rows ``held_out``)."""
    have = index.loc[index["split"] == "train", "canonical_class"].value_counts()
    for name in classes:
        count = int(have.get(name, 0))
        if count == 0:
            raise ConfigError("rare_study.classes", f"{name!r} has no training images in {domain}")
        if level >= count:
            raise ConfigError(
                "rare_study.levels",
                f"{level} is not below the {count} training images of {name} in {domain}: "
                "nothing would be cut",
            )
    return build_pool({domain: (images, index)}, {name: level for name in classes}, seed)


def pool_digest(pool: pd.DataFrame) -> str:
    """Which images are in which split: part of every run's key."""
    rows = sorted(
        f"{r}\t{c}\t{s}"
        for r, c, s in zip(pool["record_id"], pool["canonical_class"], pool["split"], strict=True)
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def run_key(
    settings: RareStudySettings, arm: str, level: int, seed: int, digest: str, repeat: int = 0
) -> str:
    """What a run's result depends on: changing anything else (another arm's generator,
    the list of seeds, the number of repeats) does not rerun it."""
    from hemaflow.config import canonical_json

    parts: dict[str, Any] = {
        "arm": arm,
        "level": level,
        "seed": seed,
        "data": digest,
        "classes": sorted(settings.classes),
        "classifier": settings.classifier,
        "n_boot": settings.n_boot,
        "bootstrap_seed": settings.bootstrap_seed,
    }
    if repeat:  # keeps the keys of runs made before repeats existed
        parts["repeat"] = repeat
    generators = ARM_GENERATORS[arm]
    if generators:
        parts |= {
            "target": settings.target,
            "quality_gate": settings.quality_gate,
            "max_candidates_factor": settings.max_candidates_factor,
        }
        if settings.synthetic_share != 1.0:  # keeps the keys of runs made before the option
            parts["synthetic_share"] = settings.synthetic_share
    for generator in generators:
        parts |= _generator_options(settings, generator)
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:16]


def _generator_options(settings: RareStudySettings, generator: str) -> dict[str, Any]:
    """The settings a generator's training depends on (part of its arms' keys and of its
    model key)."""
    if generator == "cwgan":
        return {"cwgan": settings.cwgan, "real_classifier": settings.real_classifier}
    return {"fewshot": settings.fewshot, "large_min": settings.large_min}


def model_key(settings: RareStudySettings, model: str, level: int, seed: int, digest: str) -> str:
    """What a model of one (level, seed) depends on: ``none`` (the baseline classifier,
    also the gate's judge) its arm's key; a generator (``cwgan``, ``fewshot``) the data,
    the cut and its own options, not the gate's or another arm's, so that a run with
    another gate reuses it."""
    from hemaflow.config import canonical_json

    if model == "none":
        return run_key(settings, "none", level, seed, digest)
    parts: dict[str, Any] = {
        "model": model,
        "level": level,
        "seed": seed,
        "data": digest,
        "classes": sorted(settings.classes),
        **_generator_options(settings, model),
    }
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:16]


def read_result(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with open(path) as handle:
        return json.load(handle)


def seeded(section: Mapping[str, Any], seed: int) -> dict:
    return {**section, "seed": seed}


def padding_target(settings: RareStudySettings, pool: pd.DataFrame) -> int:
    if settings.target == "largest":
        return max(train_counts(pool).values())
    return int(settings.target)


def shares(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` near-equal shares, the larger first."""
    if parts == 0:
        return []
    base, extra = divmod(n, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]
