"""The synthesis stage's steps, from files to files (called by the workflow scripts).

pool -> routes (checkpoint) -> real-data classifier -> C-WGAN-GP (one model over the
classes routed to it) and few-shot GAN (meta-trained on the large classes, adapted per
rare class) -> gated generation per class -> per-class quality on validation images
(against the route's quality targets) -> balanced training set (padded with synthetic
images where the targets were met, real images repeated where they were not), per-class
metrics on held-out images for the report. The gate's judge is checked on real
validation images of every class (``gate_real_acceptance_stage``). The measuring steps
(quality on validation images, held-out metrics, quality curves) are in
:mod:`hemaflow.synth.metric_stages`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.json_file import write_json
from hemaflow.synth.balance import build_balanced, synthetic_cap, synthetic_rows
from hemaflow.synth.evaluate import VALIDATION_SPLITS
from hemaflow.synth.generate import gate_summary, generate_gated
from hemaflow.synth.pool import build_pool, class_images, labelled_train, train_counts
from hemaflow.synth.quality import (
    JUDGE_TOO_STRICT,
    JUDGE_UNCHECKED,
    REALISM_K,
    CopyDetector,
    GateSettings,
    RealismScorer,
    class_gate,
    real_acceptance,
)
from hemaflow.synth.routing import generating, meta_training_classes, route_table
from hemaflow.synth.targets import SAMPLING, SYNTHETIC, balancing_table
from hemaflow.train.state import EXTENDABLE, keyed_state_dir, list_checkpoints

log = logging.getLogger(__name__)


def read_pool(images_path: str, index_path: str) -> tuple[np.ndarray, pd.DataFrame]:
    return np.load(images_path, mmap_mode="r"), pd.read_parquet(index_path)


def pool_state_dir(
    root: str,
    kind: str,
    name: str,
    options: Mapping | Any,
    pool: pd.DataFrame,
    classes,
    unkeyed: Iterable[str] = (),
) -> Path:
    """The resumable state of a model trained on the pool's training rows of ``classes``
    (``keyed_state_dir``: keyed by options and those rows' record ids). ``options`` may
    be a dataclass of options; those named in ``unkeyed`` are left out of the key, so
    that a run whose only change is one of them resumes the same state."""
    if is_dataclass(options):
        options = asdict(options)
    skipped = set(unkeyed)
    key = {k: v for k, v in options.items() if k not in skipped}
    rows = pool[(pool["split"] == "train") & pool["canonical_class"].isin(list(classes))]
    return keyed_state_dir(root, kind, name, key, rows["record_id"])


def cwgan_state_dir(root: str, options, pool: pd.DataFrame, classes) -> Path:
    """The C-WGAN-GP's resumable state: keyed like ``pool_state_dir`` by its options
    except ``iterations`` and ``snapshots``, so that a user who raises
    ``synthesis.cwgan.iterations`` after a run trains that run on from where it stopped
    (``train_cwgan`` resumes a finished run asked for more steps). Where that folder
    holds a checkpoint past the iterations asked for (a user lowered them), the run
    starts in a folder keyed by every option, the length included, and the longer
    run's state is left as it is."""
    shared = pool_state_dir(root, "cwgan", "cwgan", options, pool, classes, EXTENDABLE)
    checkpoints = list_checkpoints(shared)
    if checkpoints and checkpoints[-1][0] > options.iterations:
        own = pool_state_dir(root, "cwgan", "cwgan", options, pool, classes)
        log.info(
            "C-WGAN-GP: %s holds a run at iteration %d, past the %d asked for; this "
            "shorter run keeps its state in %s",
            shared,
            checkpoints[-1][0],
            options.iterations,
            own,
        )
        return own
    return shared


def fewshot_meta_state_dir(root: str, options, pool: pd.DataFrame, classes) -> Path:
    """The few-shot GAN's meta-training state: keyed like ``pool_state_dir`` by its
    options except the adaptation's (``ADAPT_ONLY``), so that a user who changes one of
    those adapts the meta model already trained instead of training another."""
    from hemaflow.synth.fewshot import ADAPT_ONLY

    return pool_state_dir(root, "fewshot", "meta", options, pool, classes, ADAPT_ONLY)


# ----------------------------------------------------------------------------- pool, routes


def write_pool(
    caches: Mapping[str, tuple[str, str]],
    subsample: Mapping[str, int],
    seed: int,
    out_images: str,
    out_index: str,
) -> pd.DataFrame:
    """``caches``: domain -> (images.npy, index.parquet) of the normalized caches."""
    loaded = {
        domain: (np.load(images, mmap_mode="r"), pd.read_parquet(index))
        for domain, (images, index) in caches.items()
    }
    images, pool = build_pool(loaded, subsample, seed)
    np.save(out_images, images)
    pool.to_parquet(out_index, index=False)
    log.info("synthesis pool: %d labelled images from %s", len(pool), ", ".join(sorted(caches)))
    return pool


def write_routes(pool_index: str, settings: Mapping[str, Any], out_routes: str) -> pd.DataFrame:
    pool = pd.read_parquet(pool_index)
    table = route_table(train_counts(pool), settings)
    table.to_csv(out_routes, index=False)
    for row in table.itertuples():
        log.info(
            "%s: %d training images -> %s, %d to generate %s",
            row.canonical_class,
            row.count,
            row.route,
            row.to_generate,
            f"({row.reason})" if row.reason else "",
        )
    return table


def read_routes(path: str) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def write_variant_routes(routes_csv: str, variant: str, out_csv: str) -> pd.DataFrame:
    """The route table of a synthesis ablation variant (``routing.ablate_routes``)."""
    from hemaflow.synth.routing import ablate_routes

    table = ablate_routes(read_routes(routes_csv), variant)
    table.to_csv(out_csv, index=False)
    return table


# ---------------------------------------------------------------------------------- training


def train_classifier_stage(
    pool_images: str,
    pool_index: str,
    options_section: Mapping[str, Any],
    state_root: str,
    out_model: str,
    out_losses: str,
    out_summary: str,
) -> dict:
    """The real-data classifier over every class with training images (real train split
    only): the C-WGAN-GP's third player and the quality gate's judge."""
    from hemaflow.synth.real_classifier import RealClassifierOptions, train_real_classifier

    images, pool = read_pool(pool_images, pool_index)
    classes = sorted(c for c, n in train_counts(pool).items() if n > 0)
    train_images, labels = labelled_train(images, pool, classes)
    options = RealClassifierOptions.from_config(options_section)
    state = pool_state_dir(state_root, "classifier", "real", options_section, pool, classes)
    summary = train_real_classifier(
        train_images, labels, classes, options, state, out_model, log_csv=out_losses
    )
    write_json(summary, out_summary)
    return summary


def train_cwgan_stage(
    pool_images: str,
    pool_index: str,
    routes_csv: str,
    classifier: str,
    options_section: Mapping[str, Any],
    state_root: str,
    out_model: str,
    out_losses: str,
    out_summary: str,
) -> dict:
    """One C-WGAN-GP over every class routed to it that needs images."""
    from hemaflow.synth.cwgan import CWGANOptions, train_cwgan

    images, pool = read_pool(pool_images, pool_index)
    classes = generating(read_routes(routes_csv), "cwgan")
    if not classes:
        raise ValueError(f"{routes_csv}: no class is routed to cwgan with images to generate")
    train_images, labels = labelled_train(images, pool, classes)
    options = CWGANOptions.from_config(options_section)
    state = cwgan_state_dir(state_root, options, pool, classes)
    log.info("C-WGAN-GP over %s (%d training images)", ", ".join(classes), len(train_images))
    summary = train_cwgan(
        train_images, labels, classes, classifier, options, state, out_model, log_csv=out_losses
    )
    write_json(summary, out_summary)
    return summary


def train_fewshot_meta_stage(
    pool_images: str,
    pool_index: str,
    routes_csv: str,
    large_min: int,
    options_section: Mapping[str, Any],
    state_root: str,
    out_model: str,
    out_losses: str,
    out_summary: str,
) -> dict:
    """Meta-train the few-shot GAN on tasks from the large classes."""
    from hemaflow.synth.fewshot import FewShotOptions, train_fewshot_meta

    images, pool = read_pool(pool_images, pool_index)
    classes = meta_training_classes(read_routes(routes_csv), large_min)
    if not classes:
        raise ValueError(
            f"few-shot meta-training needs large classes (more than synthesis.large_min = "
            f"{large_min} training images); {routes_csv} has none"
        )
    train_images, labels = labelled_train(images, pool, classes)
    options = FewShotOptions.from_config(options_section)
    state = fewshot_meta_state_dir(state_root, options, pool, classes)
    log.info("few-shot meta-training on tasks from %s", ", ".join(classes))
    summary = train_fewshot_meta(
        train_images, labels, classes, options, state, out_model, log_csv=out_losses
    )
    write_json(summary, out_summary)
    return summary


def adapt_fewshot_stage(
    meta_model: str,
    pool_images: str,
    pool_index: str,
    class_name: str,
    options_section: Mapping[str, Any],
    state_root: str,
    out_model: str,
    out_losses: str,
    out_summary: str,
) -> dict:
    """Adapt the meta-learned GAN to one rare class's few training images."""
    from hemaflow.synth.fewshot import FewShotOptions
    from hemaflow.synth.fewshot_adapt import adapt_fewshot

    images, pool = read_pool(pool_images, pool_index)
    class_train = class_images(images, pool, class_name, ["train"])
    options = FewShotOptions.from_config(options_section)
    state = pool_state_dir(
        state_root, "fewshot", f"adapt-{class_name}", options_section, pool, [class_name]
    )
    log.info("adapting the few-shot GAN to %s (%d images)", class_name, len(class_train))
    summary = adapt_fewshot(meta_model, class_train, options, state, out_model, log_csv=out_losses)
    write_json(summary, out_summary)
    return summary


def train_gate_classifier_stage(
    pool_images: str,
    pool_index: str,
    options_section: Mapping[str, Any],
    state_root: str,
    out_model: str,
    out_losses: str,
    out_summary: str,
) -> dict:
    """The quality gate's judge: the white-blood-cell classifier (``hemaflow.classify``)
    trained on the pool's real training images, early stopping on its real validation
    images. It is not the C-WGAN-GP's third player: a generator trained to satisfy one
    classifier would pass that classifier's gate whatever it draws."""
    from hemaflow.classify.train import ClassifierOptions, train_classifier

    images, pool = read_pool(pool_images, pool_index)
    classes = sorted(c for c, n in train_counts(pool).items() if n > 0)
    train_images, labels = labelled_train(images, pool, classes)
    val = pool[(pool["split"] == "val") & pool["canonical_class"].isin(classes)]
    lookup = {name: k for k, name in enumerate(classes)}
    options = ClassifierOptions.from_config(options_section)
    state = pool_state_dir(state_root, "classifier", "gate", options_section, pool, classes)
    summary = train_classifier(
        train_images,
        labels,
        np.asarray(images)[val["pool_index"].to_numpy()],
        val["canonical_class"].map(lookup).to_numpy(dtype=np.int64),
        classes,
        options,
        state,
        out_model,
        log_csv=out_losses,
    )
    write_json(summary, out_summary)
    return summary


def gate_real_acceptance_stage(
    classifier_path: str,
    pool_images: str,
    pool_index: str,
    gate_section: Mapping[str, Any],
    out_csv: str,
) -> pd.DataFrame:
    """Is the gate fair? The share of each class's real validation images (val and
    held_out, never train or test) that the gate's judge accepts at ``min_confidence``.
    A class below ``min_real_acceptance`` gets a warning here and a flag in the table
    (and in the balancing table and the report); nothing is lowered."""
    from hemaflow.classify.predict import load_classifier, predict_proba

    net, class_names, _ = load_classifier(classifier_path)
    gate = GateSettings.from_config(gate_section)
    images, pool = read_pool(pool_images, pool_index)
    rows = pool[pool["split"].isin(VALIDATION_SPLITS) & pool["canonical_class"].isin(class_names)]
    real = np.asarray(images)[rows["pool_index"].to_numpy()]
    probabilities = predict_proba(net, real)
    realism = None
    if gate.min_realism > 0:  # each class's real images against its training images' balls
        from hemaflow.metrics import InceptionFeatures

        features = InceptionFeatures().features
        realism = np.full(len(rows), np.nan)
        for name in class_names:
            mine = (rows["canonical_class"] == name).to_numpy()
            if mine.any():
                scorer = RealismScorer(class_images(images, pool, name, ["train"]), features)
                realism[mine] = scorer.scores(real[mine])
    table = real_acceptance(
        probabilities, rows["canonical_class"].to_numpy(), class_names, gate, realism
    )
    table.to_csv(out_csv, index=False)
    for row in table.itertuples():
        if row.verdict == JUDGE_UNCHECKED:
            log.warning(
                "gate judge: %s has no real validation images (%s): its fairness is not checked",
                row.canonical_class,
                " or ".join(VALIDATION_SPLITS),
            )
        elif row.verdict == JUDGE_TOO_STRICT:
            log.warning(
                "gate judge too strict for %s: it accepts only %d of %d real validation "
                "images (%.0f%% < synthesis.quality_gate.min_real_acceptance %.0f%%) at "
                "min_confidence %g. The gate is NOT lowered: the class's synthetic images "
                "face a bar that its real cells miss, so its acceptance understates its "
                "generator. Improve synthesis.gate_classifier, lower "
                "synthesis.quality_gate.min_confidence deliberately, or set "
                "synthesis.quality_gate.fair_confidence.",
                row.canonical_class,
                row.accepted,
                row.real_images,
                100 * row.acceptance,
                100 * gate.min_real_acceptance,
                row.min_confidence,  # the class's own with fair_confidence
            )
        else:
            log.info(
                "gate judge accepts %d of %d real validation images of %s (%.0f%%)",
                row.accepted,
                row.real_images,
                row.canonical_class,
                100 * row.acceptance,
            )
    return table


# -------------------------------------------------------------------------------- generation


def class_sampler(route: str, model_path: str, class_name: str):
    """(n, seed) -> uint8 images of ``class_name`` from the route's model file."""
    if route == "cwgan":
        from hemaflow.synth.cwgan import generate_cwgan, load_cwgan

        generator, names, _ = load_cwgan(model_path)
        if class_name not in names:
            raise ValueError(f"{model_path}: the C-WGAN-GP was not trained on {class_name!r}")
        index = names.index(class_name)
        return lambda n, seed: generate_cwgan(generator, index, n, seed)
    if route == "fewshot":
        from hemaflow.synth.fewshot_adapt import generate_fewshot, load_fewshot

        generator, code, _ = load_fewshot(model_path)
        return lambda n, seed: generate_fewshot(generator, code, n, seed)
    raise ValueError(f"route {route!r} has no generator")


def generate_class(
    class_name: str,
    route: str,
    model_path: str,
    judge: Any,
    judge_classes: Sequence[str],
    class_train_images: np.ndarray,
    gate: GateSettings,
    n_needed: int,
    seed: int,
    max_candidates_factor: float,
    size: int,
) -> tuple[np.ndarray, pd.DataFrame]:
    """``n_needed`` images of ``class_name`` from the route's model through the quality
    gate: (accepted images at ``size`` px, one row per candidate). ``judge``: a
    classifier from ``hemaflow.classify`` trained on real images only, independent of the
    C-WGAN-GP's third player (which the generator is trained to satisfy); the near-copy
    check compares with the class's training images."""
    from hemaflow.classify.predict import predict_proba

    copies = CopyDetector(class_train_images, gate.copy_max_hamming)
    realism = None
    if gate.min_realism > 0:
        from hemaflow.metrics import InceptionFeatures

        realism = RealismScorer(class_train_images, InceptionFeatures().features)
        if not realism.usable:
            log.warning(
                "%s: %d training images, too few for realism balls (k = %d): the gate "
                "leaves realism unjudged",
                class_name,
                len(class_train_images),
                REALISM_K,
            )
    # a generator may work at a lower resolution than the data: judged and stored at the
    # data's size
    from hemaflow.train.loop import resize_images

    sample = class_sampler(route, model_path, class_name)
    accepted, candidates = generate_gated(
        lambda n, seed: resize_images(sample(n, seed), size),
        lambda batch: predict_proba(judge, batch),
        class_name,
        list(judge_classes),
        n_needed,
        copies,
        gate,
        seed,
        max_candidates_factor=max_candidates_factor,
        realism=realism,
    )
    if len(accepted) == 0:
        accepted = np.zeros((0, size, size, 3), np.uint8)
    return accepted, candidates


def gate_for_class(
    gate: GateSettings,
    judge: Any,
    judge_classes: Sequence[str],
    class_name: str,
    real_images: np.ndarray,
) -> GateSettings:
    """The gate of one class: with ``fair_confidence``, its threshold lowered to what the
    judge gives ``real_images`` (the class's real validation images; ``fair_threshold``);
    otherwise ``gate`` itself."""
    if not gate.fair_confidence or class_name not in judge_classes or len(real_images) == 0:
        return gate
    from hemaflow.classify.predict import predict_proba

    confidences = predict_proba(judge, real_images)[:, list(judge_classes).index(class_name)]
    fair = class_gate(gate, confidences)
    log.info(
        "%s: the gate's confidence threshold is %.3g (min_confidence %g; the judge gives "
        "%.0f%% of %d real validation images at least that)",
        class_name,
        fair.min_confidence,
        gate.min_confidence,
        100 * float(np.mean(confidences >= fair.min_confidence)),
        len(confidences),
    )
    return fair


def generate_stage(
    class_name: str,
    routes_csv: str,
    model_path: str,
    classifier_path: str,
    pool_images: str,
    pool_index: str,
    gate_section: Mapping[str, Any],
    seed: int,
    max_candidates_factor: float,
    out_images: str,
    out_candidates: str,
    out_summary: str,
    route: str | None = None,
) -> dict:
    """Generate ``class_name`` through the quality gate up to its target count, with the
    generator of its route (or of ``route``, for the ablation's few-shot-for-all)."""
    from hemaflow.classify.predict import load_classifier

    routes = read_routes(routes_csv).set_index("canonical_class")
    n_needed = int(routes.loc[class_name, "to_generate"])
    route = route or routes.loc[class_name, "route"]
    images, pool = read_pool(pool_images, pool_index)
    net, classifier_classes, _ = load_classifier(classifier_path)
    gate = gate_for_class(
        GateSettings.from_config(gate_section),
        net,
        classifier_classes,
        class_name,
        class_images(images, pool, class_name, list(VALIDATION_SPLITS)),
    )
    accepted, candidates = generate_class(
        class_name,
        route,
        model_path,
        net,
        classifier_classes,
        class_images(images, pool, class_name, ["train"]),
        gate,
        n_needed,
        seed,
        max_candidates_factor,
        images.shape[1],
    )
    np.save(out_images, accepted)
    candidates.to_parquet(out_candidates, index=False)
    summary = gate_summary(class_name, route, n_needed, candidates)
    summary["model"] = model_path
    summary["min_confidence"] = gate.min_confidence
    write_json(summary, out_summary)
    log.info("%s: %s", class_name, summary)
    return summary


# ---------------------------------------------------------------------------------- balanced


def balanced_stage(
    pool_images: str,
    pool_index: str,
    routes_csv: str,
    samples: Mapping[str, tuple[str, str, str, str]],
    gate_summaries: Sequence[str],
    judge_csv: str,
    targets_section: Mapping[str, Any],
    require_quality: bool,
    out_images: str,
    out_manifest: str,
    out_gate: str,
    out_balancing: str,
    seed: int = 0,
    max_synthetic_share: float = 1.0,
) -> pd.DataFrame:
    """``samples``: class -> (images.npy, candidates.parquet, model path,
    validation_metrics.json). A class whose generator met its route's quality targets
    (or every generated class, without ``require_quality``) is padded with its used
    synthetic images, at most ``max_synthetic_share`` of its rows after balancing (the
    rest of its padding repeats its real training images); a class that missed them gets
    ``to_generate`` repeated real training rows instead. The decision per class is
    written to ``out_balancing``, with the gate judge's verdict on the class's real
    images (``judge_csv``, from ``gate_real_acceptance_stage``)."""
    images, pool = read_pool(pool_images, pool_index)
    routes = read_routes(routes_csv)
    quality = {}
    for name, (_, _, _, quality_path) in samples.items():
        with open(quality_path) as handle:
            quality[name] = json.load(handle)
    judge = pd.read_csv(judge_csv)
    missing = sorted(set(samples) - set(judge["canonical_class"]))
    if missing:
        raise ValueError(f"{judge_csv}: no row for the generated classes {missing}")
    table = balancing_table(routes, quality, targets_section, require_quality, judge)
    decided = table.set_index("canonical_class")
    route_of = routes.set_index("canonical_class")["route"]
    synthetic, oversample = {}, {}
    for name, (images_path, candidates_path, model_path, _) in samples.items():
        if decided.loc[name, "balanced_by"] == SYNTHETIC:
            candidates = pd.read_parquet(candidates_path)
            rows = synthetic_rows(name, route_of[name], model_path, candidates)
            to_generate = int(decided.loc[name, "to_generate"])
            target = int(decided.loc[name, "count"]) + to_generate
            cap = synthetic_cap(to_generate, target, max_synthetic_share)
            synthetic[name] = (np.load(images_path)[:cap], rows.iloc[:cap])
            if to_generate > cap:
                oversample[name] = to_generate - cap
        elif decided.loc[name, "balanced_by"] == SAMPLING:
            oversample[name] = int(decided.loc[name, "to_generate"])
    balanced, manifest = build_balanced(images, pool, synthetic, oversample=oversample, seed=seed)
    np.save(out_images, balanced)
    manifest.to_parquet(out_manifest, index=False)
    made = manifest.groupby(["canonical_class", "origin"]).size()
    table["synthetic_used"] = [int(made.get((n, "synthetic"), 0)) for n in table["canonical_class"]]
    table["oversampled"] = [int(made.get((n, "oversampled"), 0)) for n in table["canonical_class"]]
    table.to_csv(out_balancing, index=False)
    for row in table.itertuples():
        if row.balanced_by == SAMPLING:
            log.warning(
                "%s (%s): quality targets missed (%s): balanced by sampling, %d real "
                "training images repeated, no synthetic image used",
                row.canonical_class,
                row.route,
                row.missed,
                row.oversampled,
            )
        elif row.balanced_by == SYNTHETIC:
            log.info(
                "%s (%s): %s, %d synthetic images used, %d real training images repeated",
                row.canonical_class,
                row.route,
                row.reason,
                row.synthetic_used,
                row.oversampled,
            )
        if row.judge_verdict == JUDGE_TOO_STRICT:
            log.warning("%s: %s", row.canonical_class, row.reason)
    gates = []
    for path in gate_summaries:
        with open(path) as handle:
            gates.append(json.load(handle))
    gate = pd.DataFrame(gates)
    gate.to_csv(out_gate, index=False)
    counts = manifest.groupby(["canonical_class", "origin"]).size().unstack(fill_value=0)
    log.info("balanced training set:\n%s", counts.to_string())
    return manifest
