"""The rare-class study: does synthesis lift the sensitivity of classes made rare beyond
what the classifier's own remedies (class-balanced batches, random symmetries of the
square) already give?

One lab's cache. The ``classes`` are cut to ``level`` training images each (a seeded
choice; their other training images are held out and never used); every other class
keeps all of its training images. For each level and seed, each arm trains the same
classifier (``classifier`` options, early stopping on the validation split) on:

- ``none``: the real training images only: the baseline;
- ``cwgan``: plus gated C-WGAN-GP images of each cut class, up to ``target`` images in
  all (at most ``synthetic_share`` of them synthetic, the rest of the padding the class's
  real images repeated; 1.0 by default: synthetic only); the C-WGAN-GP is trained over
  every class, the cut classes at their cut counts, guided by its real-data classifier
  (third player) trained on the same images;
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
seed's cuts are nested (its 20 images are among its 50). With ``classifier_repeats``
above 1, each arm also trains further classifiers (``arm.repeatR.json``) on the same
training set (the same gated images) with other classifier seeds, so that the report can
average out the classifier's own seed-to-seed noise. The arms, settings, paths, cut
and run keys: ``hemaflow.synth.rare_study_plan``; tables, chart and the verdict:
``hemaflow.synth.rare_study_report``. This module holds the runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.errors import ConfigError
from hemaflow.json_file import write_json
from hemaflow.synth.balance import build_balanced, synthetic_cap, synthetic_rows
from hemaflow.synth.generate import gate_summary
from hemaflow.synth.pool import build_pool, class_images, labelled_train, train_counts
from hemaflow.synth.quality import GateSettings
from hemaflow.synth.rare_study_plan import (
    ARM_GENERATORS,
    ARMS,
    RareStudySettings,
    classifier_seed,
    cut_pool,
    meta_model_path,
    model_key,
    models_dir,
    padding_target,
    pool_digest,
    read_result,
    result_path,
    run_key,
    seeded,
    shares,
    study_runs,
)
from hemaflow.synth.stages import gate_for_class, generate_class, pool_state_dir, read_pool

log = logging.getLogger(__name__)


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

    def add(self, generator, name, images, candidates, model_path, n_needed, threshold) -> None:
        self.samples[(generator, name)] = (images, candidates, str(model_path))
        summary = gate_summary(name, generator, n_needed, candidates)
        self.summaries.append(
            {**summary, "model": str(model_path), "min_confidence": float(threshold)}
        )
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
    _generate(
        images,
        pool,
        settings,
        seed,
        "cwgan",
        generator_models(folder, "cwgan", needs),
        generated,
        judge,
        needs,
    )


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
            generator_models(folder, "fewshot", [name])[name],
            log_csv=folder / f"fewshot_{name}_losses.csv",
        )
    _generate(
        images,
        pool,
        settings,
        seed,
        "fewshot",
        generator_models(folder, "fewshot", needs),
        generated,
        judge,
        needs,
    )


def generator_models(folder: Path, generator: str, classes) -> dict[str, Path]:
    """cut class -> the model file that generates it: one C-WGAN-GP for every class, one
    adapted few-shot GAN per class."""
    if generator == "cwgan":
        return {name: folder / "cwgan.pt" for name in classes}
    return {name: folder / f"fewshot_{name}.pt" for name in classes}


def finished_models(
    settings: RareStudySettings, pool: pd.DataFrame, level: int, seed: int, out_dir: str | Path
) -> set[str]:
    """What a finished run of this (level, seed) already trained with the current
    settings: ``none`` (the baseline classifier, also the gate's judge) and the
    generators (``cwgan``, ``fewshot``). A model counts when the result JSON of an arm
    that used it, asked for now or not, records the ``model_keys`` these settings give it
    (``model_key``: a generator's does not depend on the gate), or, in a JSON written
    before those were recorded, has the run key these settings give. Each one counts only
    while its model files are there and no newer than that JSON (a later run with other
    settings, stopped before its JSON, may have overwritten them). Such models are used
    as they are: neither retrained nor resumed (their checkpoints are keyed by the
    library version too, so a new version would otherwise train them again from the
    start)."""
    digest = pool_digest(pool)
    folder = models_dir(out_dir, level, seed)
    found: set[str] = set()
    for arm in ARMS:
        path = result_path(out_dir, arm, level, seed)
        previous = read_result(path)
        if previous is None:
            continue
        parts = ("none", *ARM_GENERATORS[arm])
        if "model_keys" in previous:
            recorded = previous["model_keys"]
            parts = tuple(
                p for p in parts if recorded.get(p) == model_key(settings, p, level, seed, digest)
            )
        elif previous.get("key") != run_key(settings, arm, level, seed, digest):
            continue
        written = path.stat().st_mtime
        for part in parts:
            if part == "none":
                files = [folder / "none" / "model.pt"]
            else:
                files = list(generator_models(folder, part, settings.classes).values())
            if all(f.is_file() and f.stat().st_mtime <= written for f in files):
                found.add(part)
    return found


def _generate(images, pool, settings, seed, generator, models, generated, judge, needs):
    """Each cut class's ``needs`` images through the quality gate (``judge``: the
    baseline classifier and its classes)."""
    net, judge_classes = judge
    base = GateSettings.from_config(settings.quality_gate)
    for name, need in needs.items():
        # with fair_confidence, the class's threshold comes from the validation split
        # (the cut's held-out training images are never used)
        real = class_images(images, pool, name, ["val"]) if base.fair_confidence else images[:0]
        gate = gate_for_class(base, net, judge_classes, name, real)
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
        generated.add(
            generator, name, accepted, candidates, models[name], need, gate.min_confidence
        )


# ------------------------------------------------------------------------ one (level, seed)


def _train_arm(
    images, pool, settings, level, seed, folder, state_root, arm, synthetic, oversample, repeat
):
    """The arm's classifier ``repeat`` (its seed: ``classifier_seed``) on the real
    training rows plus ``synthetic`` and the ``oversample`` repeated real rows
    (class -> count)."""
    from hemaflow.classify.stages import train_on_rows

    train_images, manifest = build_balanced(
        images, pool, synthetic, oversample=oversample, seed=seed
    )
    val = pool[pool["split"] == "val"].reset_index(drop=True)
    where = folder / arm if repeat == 0 else folder / arm / f"repeat{repeat}"
    model = where / "model.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    log.info(
        "arm %s: classifier on %d real + %d synthetic images (repeat %d, seed %d)",
        arm,
        int((manifest["origin"] == "real").sum()),
        int((manifest["origin"] == "synthetic").sum()),
        repeat,
        classifier_seed(seed, repeat),
    )
    suffix = "" if repeat == 0 else f"-repeat{repeat}"
    summary = train_on_rows(
        train_images,
        manifest,
        np.asarray(images)[val["pool_index"].to_numpy()],
        val,
        seeded(settings.classifier, classifier_seed(seed, repeat)),
        str(state_root),
        f"rare-{arm}-level{level}-seed{seed}{suffix}",
        str(model),
        str(where / "losses.csv"),
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
            "oversampled": int((rows["origin"] == "oversampled").sum()),
            **{f"synthetic_{g}": int((rows["generator"] == g).sum()) for g in ("cwgan", "fewshot")},
        }
    return counts


def pending_arms(
    settings: RareStudySettings, pool: pd.DataFrame, level: int, seed: int, out_dir: str | Path
) -> tuple[dict[str, str], dict[str, dict]]:
    """(name -> key of every run to do, name -> result of every run already done); a
    run's name is its arm, ``arm.repeatR`` for its further classifiers
    (``rare_study_plan.run_name``)."""
    digest = pool_digest(pool)
    todo, done = {}, {}
    for name, arm, repeat in study_runs(settings):
        key = run_key(settings, arm, level, seed, digest, repeat)
        path = result_path(out_dir, arm, level, seed, repeat)
        previous = read_result(path)
        if previous is not None and previous.get("key") == key:
            log.info("%s: done with these settings, skipped", path)
            done[name] = previous
            continue
        if previous is not None:
            log.info("%s: written with other settings, run again", path)
        todo[name] = key
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
    """Every run of one (level, seed) on the domain's cache (``images``, ``index``): the
    result dicts, in the order of ``study_runs`` (each arm's first classifier, then its
    repeats). Generators are trained (or resumed
    from their checkpoints under ``state_root``) only when an arm that needs them has no
    result yet. ``meta_model``: the few-shot GAN meta-trained for this seed
    (``train_study_meta``); None trains it here, under ``out_dir/models/seed{seed}``."""
    cut_images, pool = cut_pool(images, index, domain, settings.classes, level, seed)
    todo, results = pending_arms(settings, pool, level, seed, out_dir)
    runs = study_runs(settings)
    if not todo:
        return [results[name] for name, _, _ in runs]
    folder = models_dir(out_dir, level, seed)
    folder.mkdir(parents=True, exist_ok=True)
    target = padding_target(settings, pool)
    padding = {name: max(0, target - level) for name in settings.classes}
    # at most synthetic_share of a cut class's rows are synthetic; the rest repeat its
    # real images (none at the default 1.0)
    needs = {
        name: synthetic_cap(n, target, settings.synthetic_share) for name, n in padding.items()
    }
    oversample = {
        name: padding[name] - needs[name] for name in padding if padding[name] > needs[name]
    }
    timings: dict[str, float] = {}

    def timed(what: str, run: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = run()
        timings[what] = time.perf_counter() - start
        return value

    train_arm = partial(_train_arm, cut_images, pool, settings, level, seed, folder, state_root)

    # models that a finished run trained with these settings are used as they are
    reuse = finished_models(settings, pool, level, seed, out_dir)
    if reuse:
        log.info("level %d, seed %d: reusing the finished %s", level, seed, sorted(reuse))
    arms = {name: (arm, repeat) for name, arm, repeat in runs}
    digest = pool_digest(pool)
    trained = {}
    generated = GeneratedImages()

    def finish(name: str) -> None:
        """The run's result on the test split, written as soon as its classifier is
        trained (a run stopped later keeps it)."""
        arm, repeat = arms[name]
        model, manifest, summary = trained[name]
        result = {
            "arm": arm,
            "level": level,
            "seed": seed,
            "repeat": repeat,
            "classifier_seed": classifier_seed(seed, repeat),
            "key": todo[name],
            "model_keys": {
                part: model_key(settings, part, level, seed, digest)
                for part in ("none", *ARM_GENERATORS[arm])
            },
            "domain": domain,
            "cut_classes": list(settings.classes),
            "target": target,
            "training_images": _training_counts(manifest, settings.classes),
            "gate": [g for g in generated.summaries if g["route"] in ARM_GENERATORS[arm]],
            "classifier": {
                "model": str(model),
                "seconds": timings[f"classifier {name}"],
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
        path = result_path(out_dir, arm, level, seed, repeat)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(result, path, default=float)
        log.info(
            "%s, level %d, seed %d: test balanced accuracy %.3f, sensitivity %s",
            name,
            level,
            seed,
            result["test"]["balanced_accuracy"],
            {c: round(result["test"]["sensitivity"][c], 3) for c in settings.classes},
        )
        results[name] = result

    # the baseline: arm none, and the quality gate's judge (trained here, never in the
    # loop below, which would pad it)
    if "none" not in reuse or "none" in todo:
        trained["none"] = timed("classifier none", lambda: train_arm("none", {}, None, 0))
        if "none" in todo:
            finish("none")
    wanted = {g for name in todo for g in ARM_GENERATORS[arms[name][0]]}
    if wanted:
        from hemaflow.classify.predict import load_classifier

        net, judge_classes, _ = load_classifier(folder / "none" / "model.pt")
        common = (cut_images, pool, settings, seed, folder, state_root)
        judge = (net, judge_classes)
    for generator in sorted(wanted & reuse):
        models = generator_models(folder, generator, needs)
        timed(
            f"generator {generator}",
            lambda generator=generator, models=models: _generate(
                cut_images, pool, settings, seed, generator, models, generated, judge, needs
            ),
        )
    if "cwgan" in wanted - reuse:
        timed("generator cwgan", lambda: _cwgan_images(*common, generated, judge, needs))
    if "fewshot" in wanted - reuse:
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
    for name in todo:
        if name not in trained:
            arm, repeat = arms[name]
            synthetic = generated.arm_set(arm, needs)
            trained[name] = timed(
                f"classifier {name}",
                # the baseline's repeats are not padded either
                lambda arm=arm, repeat=repeat, synthetic=synthetic: train_arm(
                    arm, synthetic, None if arm == "none" else oversample, repeat
                ),
            )
            finish(name)
    write_json({"gate": generated.summaries, "seconds": timings}, folder / "generators.json")
    return [results[name] for name, _, _ in runs]


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
