"""The rare-class study: does synthesis lift the sensitivity of classes made rare beyond
what the classifier's own remedies (class-balanced batches, random symmetries of the
square) already give?

One lab's cache. The ``classes`` are cut to ``level`` training images each (a seeded
choice; their other training images are held out and never used); every other class
keeps all of its training images. For each level and seed, each arm trains the same
classifier (``classifier`` options, early stopping on the validation split) on:

- ``none``: the real training images only: the baseline;
- ``cwgan``: plus gated C-WGAN-GP images of each cut class, up to ``target`` images in
  all; the C-WGAN-GP is trained over every class, the cut classes at their cut counts,
  guided by its real-data classifier (third player) trained on the same images;
- ``fewshot``: plus gated images of the few-shot GAN, meta-trained on the large classes
  (not cut, more than ``large_min`` training images: the same images at every level, so
  meta-trained once per seed) and adapted to each cut class's training images;
- ``both``: each cut class's synthetic images half from each generator (the first
  ceil(n/2) accepted C-WGAN-GP images, the first floor(n/2) few-shot ones). The
  workflow's route-by-size rule would send every cut class (fewer than
  ``synthesis.fewshot_max`` images) to the few-shot GAN, which is arm ``fewshot`` again.

The quality gate's judge is the ``none`` arm's classifier: trained on real images only,
independent of the C-WGAN-GP's third player, as in the workflow. A generator's gated
images are made once per (level, seed) and shared by the arms that use it.

Nothing is chosen on the test split: the number of synthetic images (``target``) and
every option are fixed in advance, early stopping watches the validation split (which
the cut leaves whole). Each (arm, level, seed) run writes its result JSON (test-split
sensitivity of every cut class and balanced accuracy, with stratified bootstrap 95 %
intervals) and is skipped when that JSON exists with the same settings key. The seed
changes the cut, every generator's and classifier's seed and the generation seed; a
seed's cuts are nested (its 20 images are among its 50). Tables, chart and the verdict:
``hemaflow.synth.rare_study_report``."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow import smoke
from hemaflow.errors import ConfigError
from hemaflow.json_file import write_json
from hemaflow.synth.balance import build_balanced, synthetic_rows
from hemaflow.synth.generate import gate_summary
from hemaflow.synth.pool import build_pool, class_images, labelled_train, train_counts
from hemaflow.synth.quality import GateSettings
from hemaflow.synth.stages import generate_class, pool_state_dir, read_pool

log = logging.getLogger(__name__)

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
    C-WGAN-GP and the few-shot GAN; their ``seed`` is replaced by the run's seed."""

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
    n_boot: int = 1000
    bootstrap_seed: int = 0

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
        large_min=synthesis["large_min"],
        classifier=dict(config["classifier"]),
        real_classifier=dict(synthesis["classifier"]),
        cwgan=dict(synthesis["cwgan"]),
        fewshot=dict(synthesis["fewshot"]),
        quality_gate=dict(synthesis["quality_gate"]),
        max_candidates_factor=float(synthesis["max_candidates_factor"]),
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


def result_path(out_dir: str | Path, arm: str, level: int, seed: int) -> Path:
    return Path(out_dir) / "runs" / f"level{level}" / f"seed{seed}" / f"{arm}.json"


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


def run_key(settings: RareStudySettings, arm: str, level: int, seed: int, digest: str) -> str:
    """What a run's result depends on: changing anything else (another arm's generator,
    the list of seeds) does not rerun it."""
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
    generators = ARM_GENERATORS[arm]
    if generators:
        parts |= {
            "target": settings.target,
            "quality_gate": settings.quality_gate,
            "max_candidates_factor": settings.max_candidates_factor,
        }
    if "cwgan" in generators:
        parts |= {"cwgan": settings.cwgan, "real_classifier": settings.real_classifier}
    if "fewshot" in generators:
        parts |= {"fewshot": settings.fewshot, "large_min": settings.large_min}
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


# --------------------------------------------------------------------------- generators


def meta_classes(pool: pd.DataFrame, settings: RareStudySettings) -> list[str]:
    counts = train_counts(pool)
    return sorted(
        name
        for name, n in counts.items()
        if n > settings.large_min and name not in settings.classes
    )


def train_study_meta(
    images: np.ndarray,
    index: pd.DataFrame,
    domain: str,
    settings: RareStudySettings,
    seed: int,
    out_model: str | Path,
    state_root: str | Path,
) -> dict:
    """Meta-train the few-shot GAN of ``seed`` on the large classes (the cut does not touch
    them: one model serves every level)."""
    from hemaflow.synth.fewshot import FewShotOptions, train_fewshot_meta

    images, pool = build_pool({domain: (images, index)})
    classes = meta_classes(pool, settings)
    if not classes:
        raise ConfigError(
            "rare_study.large_min",
            f"no class of {domain} outside the cut has more than {settings.large_min} "
            "training images: nothing to meta-train the few-shot GAN on",
        )
    section = seeded(settings.fewshot, seed)
    out_model = Path(out_model)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    x, y = labelled_train(images, pool, classes)
    log.info("few-shot meta-training (seed %d) on %s", seed, ", ".join(classes))
    return train_fewshot_meta(
        x,
        y,
        classes,
        FewShotOptions.from_config(section),
        pool_state_dir(str(state_root), "fewshot", f"rare-meta-seed{seed}", section, pool, classes),
        out_model,
        log_csv=out_model.with_suffix(".losses.csv"),
    )


class GeneratedImages:
    """Gated synthetic images per (generator, cut class) of one (level, seed), made once
    and shared by the arms; ``take`` gives an arm its share."""

    def __init__(self) -> None:
        self.samples: dict[tuple[str, str], tuple[np.ndarray, pd.DataFrame, str]] = {}
        self.summaries: list[dict] = []

    def add(self, generator, name, images, candidates, model_path, n_needed) -> None:
        self.samples[(generator, name)] = (images, candidates, str(model_path))
        summary = gate_summary(name, generator, n_needed, candidates)
        self.summaries.append({**summary, "model": str(model_path)})
        log.info("%s images of %s: %s", generator, name, summary)

    def take(self, generator: str, name: str, n: int) -> tuple[np.ndarray, pd.DataFrame]:
        """The first ``n`` accepted images and their balanced-set rows."""
        images, candidates, model_path = self.samples[(generator, name)]
        if len(candidates):
            used = np.flatnonzero(candidates["used"].to_numpy())[:n]
            candidates = candidates.assign(used=False)
            candidates.iloc[used, candidates.columns.get_loc("used")] = True
        return images[:n], synthetic_rows(name, generator, model_path, candidates)

    def arm_set(self, arm: str, needs: Mapping[str, int]) -> dict:
        """class -> (images, rows) of ``arm`` (``build_balanced``'s ``synthetic``)."""
        synthetic = {}
        for name, need in needs.items():
            generators = ARM_GENERATORS[arm]
            parts = [
                self.take(g, name, n) for g, n in zip(generators, shares(need, len(generators)))
            ]
            if parts:
                synthetic[name] = (
                    np.concatenate([images for images, _ in parts]),
                    pd.concat([rows for _, rows in parts], ignore_index=True),
                )
        return synthetic


def _cwgan_images(images, pool, settings, seed, folder, state_root, generated, judge, needs):
    """Train the third player and the C-WGAN-GP on the cut pool, then generate."""
    from hemaflow.synth.cwgan import CWGANOptions, train_cwgan
    from hemaflow.synth.real_classifier import RealClassifierOptions, train_real_classifier

    classes = sorted(c for c, n in train_counts(pool).items() if n > 0)
    x, y = labelled_train(images, pool, classes)
    section = seeded(settings.real_classifier, seed)
    third_player = folder / "cwgan_classifier.pt"
    train_real_classifier(
        x,
        y,
        classes,
        RealClassifierOptions.from_config(section),
        pool_state_dir(str(state_root), "classifier", "rare-real", section, pool, classes),
        third_player,
        log_csv=folder / "cwgan_classifier_losses.csv",
    )
    section = seeded(settings.cwgan, seed)
    model = folder / "cwgan.pt"
    log.info("C-WGAN-GP over %s (%d training images)", ", ".join(classes), len(x))
    train_cwgan(
        x,
        y,
        classes,
        third_player,
        CWGANOptions.from_config(section),
        pool_state_dir(str(state_root), "cwgan", "rare-cwgan", section, pool, classes),
        model,
        log_csv=folder / "cwgan_losses.csv",
    )
    models = {name: model for name in needs}
    _generate(images, pool, settings, seed, "cwgan", models, generated, judge, needs)


def _fewshot_images(
    images, pool, settings, seed, folder, state_root, meta, generated, judge, needs
):
    """Adapt the meta-learned few-shot GAN to each cut class, then generate."""
    from hemaflow.synth.fewshot import FewShotOptions
    from hemaflow.synth.fewshot_adapt import adapt_fewshot

    section = seeded(settings.fewshot, seed)
    for name in needs:
        log.info("adapting the few-shot GAN to %s", name)
        adapt_fewshot(
            meta,
            class_images(images, pool, name, ["train"]),
            FewShotOptions.from_config(section),
            pool_state_dir(str(state_root), "fewshot", f"rare-adapt-{name}", section, pool, [name]),
            folder / f"fewshot_{name}.pt",
            log_csv=folder / f"fewshot_{name}_losses.csv",
        )
    models = {name: folder / f"fewshot_{name}.pt" for name in needs}
    _generate(images, pool, settings, seed, "fewshot", models, generated, judge, needs)


def _generate(images, pool, settings, seed, generator, models, generated, judge, needs):
    """Each cut class's ``needs`` images through the quality gate (``judge``: the
    baseline classifier and its classes)."""
    net, judge_classes = judge
    gate = GateSettings.from_config(settings.quality_gate)
    for name, need in needs.items():
        accepted, candidates = generate_class(
            name,
            generator,
            str(models[name]),
            net,
            judge_classes,
            class_images(images, pool, name, ["train"]),
            gate,
            need,
            seed,
            settings.max_candidates_factor,
            images.shape[1],
        )
        generated.add(generator, name, accepted, candidates, models[name], need)


# ------------------------------------------------------------------------ one (level, seed)


def _train_arm(arm, images, pool, synthetic, settings, level, seed, folder, state_root):
    """The arm's classifier on the real training rows plus ``synthetic``."""
    from hemaflow.classify.stages import train_on_rows

    train_images, manifest = build_balanced(images, pool, synthetic)
    val = pool[pool["split"] == "val"].reset_index(drop=True)
    model = folder / arm / "model.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    log.info(
        "arm %s: classifier on %d real + %d synthetic images",
        arm,
        int((manifest["origin"] == "real").sum()),
        int((manifest["origin"] == "synthetic").sum()),
    )
    summary = train_on_rows(
        train_images,
        manifest,
        np.asarray(images)[val["pool_index"].to_numpy()],
        val,
        seeded(settings.classifier, seed),
        str(state_root),
        f"rare-{arm}-level{level}-seed{seed}",
        str(model),
        str(folder / arm / "losses.csv"),
    )
    return model, manifest, summary


def _evaluate(model: Path, images: np.ndarray, pool: pd.DataFrame, settings) -> dict:
    """The model on the real TEST split (the only use of it)."""
    from hemaflow.classify.predict import load_classifier
    from hemaflow.classify.stages import lab_evaluation

    net, classes, _ = load_classifier(model)
    test = pool[pool["split"] == "test"].reset_index(drop=True)
    test_images = np.asarray(images)[test["pool_index"].to_numpy()]
    return lab_evaluation(
        net, list(classes), test_images, test, settings.n_boot, settings.bootstrap_seed
    )


def _training_counts(manifest: pd.DataFrame, classes: Sequence[str]) -> dict:
    counts = {}
    for name in classes:
        rows = manifest[manifest["canonical_class"] == name]
        counts[name] = {
            "real": int((rows["origin"] == "real").sum()),
            **{f"synthetic_{g}": int((rows["generator"] == g).sum()) for g in ("cwgan", "fewshot")},
        }
    return counts


def pending_arms(
    settings: RareStudySettings, pool: pd.DataFrame, level: int, seed: int, out_dir: str | Path
) -> tuple[dict[str, str], dict[str, dict]]:
    """(arm -> key of every arm to run, arm -> result of every arm already done)."""
    digest = pool_digest(pool)
    todo, done = {}, {}
    for arm in settings.arms:
        key = run_key(settings, arm, level, seed, digest)
        path = result_path(out_dir, arm, level, seed)
        previous = read_result(path)
        if previous is not None and previous.get("key") == key:
            log.info("%s: done with these settings, skipped", path)
            done[arm] = previous
            continue
        if previous is not None:
            log.info("%s: written with other settings, run again", path)
        todo[arm] = key
    return todo, done


def run_level_seed(
    images: np.ndarray,
    index: pd.DataFrame,
    domain: str,
    settings: RareStudySettings,
    level: int,
    seed: int,
    out_dir: str | Path,
    state_root: str | Path,
    meta_model: str | Path | None = None,
) -> list[dict]:
    """Every arm of one (level, seed) on the domain's cache (``images``, ``index``): the
    result dicts, in the order of ``settings.arms``. Generators are trained (or resumed
    from their checkpoints under ``state_root``) only when an arm that needs them has no
    result yet. ``meta_model``: the few-shot GAN meta-trained for this seed
    (``train_study_meta``); None trains it here, under ``out_dir/models/seed{seed}``."""
    cut_images, pool = cut_pool(images, index, domain, settings.classes, level, seed)
    todo, results = pending_arms(settings, pool, level, seed, out_dir)
    if not todo:
        return [results[arm] for arm in settings.arms]
    folder = models_dir(out_dir, level, seed)
    folder.mkdir(parents=True, exist_ok=True)
    target = padding_target(settings, pool)
    needs = {name: max(0, target - level) for name in settings.classes}
    timings: dict[str, float] = {}

    def timed(what: str, run: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = run()
        timings[what] = time.perf_counter() - start
        return value

    # the baseline: arm none, and the quality gate's judge
    trained = {
        "none": timed(
            "classifier none",
            lambda: _train_arm(
                "none", cut_images, pool, {}, settings, level, seed, folder, state_root
            ),
        )
    }
    generated = GeneratedImages()
    wanted = {g for arm in todo for g in ARM_GENERATORS[arm]}
    if wanted:
        from hemaflow.classify.predict import load_classifier

        net, judge_classes, _ = load_classifier(trained["none"][0])
        common = (cut_images, pool, settings, seed, folder, state_root)
        judge = (net, judge_classes)
    if "cwgan" in wanted:
        timed("generator cwgan", lambda: _cwgan_images(*common, generated, judge, needs))
    if "fewshot" in wanted:
        if meta_model is None:
            meta_model = meta_model_path(out_dir, seed)
            timed(
                "fewshot meta-training",
                lambda: train_study_meta(
                    images, index, domain, settings, seed, meta_model, state_root
                ),
            )
        timed(
            "generator fewshot",
            lambda: _fewshot_images(*common, meta_model, generated, judge, needs),
        )
    for arm in todo:
        if arm not in trained:
            synthetic = generated.arm_set(arm, needs)
            trained[arm] = timed(
                f"classifier {arm}",
                lambda arm=arm, synthetic=synthetic: _train_arm(
                    arm, cut_images, pool, synthetic, settings, level, seed, folder, state_root
                ),
            )
    write_json({"gate": generated.summaries, "seconds": timings}, folder / "generators.json")

    for arm, key in todo.items():
        model, manifest, summary = trained[arm]
        result = {
            "arm": arm,
            "level": level,
            "seed": seed,
            "key": key,
            "domain": domain,
            "cut_classes": list(settings.classes),
            "target": target,
            "training_images": _training_counts(manifest, settings.classes),
            "gate": [g for g in generated.summaries if g["route"] in ARM_GENERATORS[arm]],
            "classifier": {
                "model": str(model),
                "seconds": timings[f"classifier {arm}"],
                **{
                    k: summary.get(k)
                    for k in (
                        "iterations",
                        "stopped_early",
                        "best_iteration",
                        "best_val_balanced_accuracy",
                    )
                },
            },
            "test": _evaluate(model, cut_images, pool, settings),
        }
        path = result_path(out_dir, arm, level, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(result, path, default=float)
        log.info(
            "%s, level %d, seed %d: test balanced accuracy %.3f, sensitivity %s",
            arm,
            level,
            seed,
            result["test"]["balanced_accuracy"],
            {c: round(result["test"]["sensitivity"][c], 3) for c in settings.classes},
        )
        results[arm] = result
    return [results[arm] for arm in settings.arms]


# --------------------------------------------------------------------------- the study


def run_study(
    images_path: str | Path,
    index_path: str | Path,
    domain: str,
    settings: RareStudySettings,
    out_dir: str | Path,
    state_root: str | Path,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Every (arm, level, seed) run (resumable), then the tables, markdown and chart in
    ``out_dir`` (``rare_study_report.write_report``). Returns the run results."""
    from hemaflow.synth.rare_study_report import write_report

    images, index = read_pool(str(images_path), str(index_path))
    results = []
    for seed in settings.seeds:
        for level in settings.levels:
            start = time.perf_counter()
            results += run_level_seed(
                images, index, domain, settings, level, seed, out_dir, state_root
            )
            if progress is not None:
                progress(f"level {level}, seed {seed}: {time.perf_counter() - start:.0f} s")
    write_report(results, settings, out_dir)
    return results
