"""Per domain pair: keep the CycleGAN, or fall back to a classical normalization.

A CycleGAN can map a lab's images further from the target's appearance than Reinhard's
colour transfer does (raabin -> pbc at the cpu budget). The pair then falls back
(``normalization.fallback``) when the CycleGAN's KID to the target is higher than the
fallback's. The choice is made on the validation split only: the source lab's validation
images, translated both ways, against the target lab's validation images. The test split,
on which ``hemaflow.normalize.evaluate`` reports the pair, never enters the choice.

A decision covers the pair's model in both directions; it is measured in the pair's own
orientation (the plan's, the way most images go)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hemaflow.json_file import write_json
from hemaflow.normalize.evaluate import sample_split

log = logging.getLogger(__name__)

FALLBACKS = ("none", "reinhard", "macenko")
DECISION_SPLITS = ("val",)
# KID needs two feature vectors per set; fewer validation images leave nothing to decide on
MIN_DECISION_IMAGES = 2

Transform = Callable[[np.ndarray], np.ndarray]


def _kid(features: Transform, real: np.ndarray, fake: np.ndarray, seed: int) -> dict[str, float]:
    from hemaflow.metrics import compute_metrics

    return compute_metrics("kid", real_features=real, fake_features=features(fake), seed=seed)


def _record(
    method: str, fallback: str, split: str | None, source_images: int, target_images: int
) -> dict[str, Any]:
    """A decision's fields, the KIDs not yet measured."""
    return {
        "method": method,
        "fallback": fallback,
        "split": split,
        "source_images": source_images,
        "target_images": target_images,
        "kid_cyclegan": None,
        "kid_std_cyclegan": None,
        "kid_fallback": None,
        "kid_std_fallback": None,
    }


def _write(decision: dict[str, Any], out_json: str) -> None:
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    write_json(decision, out_json)
    log.info("%s: %s", decision["pair"], decision["rule"])


def decide_pair(
    source_val: np.ndarray,
    target_val: np.ndarray,
    cyclegan: Transform,
    fallback: str,
    fallback_transform: Transform | None,
    features: Transform | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The method a pair's images get: ``cyclegan``, or ``fallback`` when the CycleGAN's
    KID (``hemaflow.metrics`` registry) to ``target_val`` is higher than the fallback's.

    ``source_val``/``target_val``: validation images of the source and target domains;
    ``cyclegan``/``fallback_transform``: source images -> images in the target's
    appearance; ``features``: images -> feature vectors (default: Inception-v3, as FID)."""
    if fallback not in FALLBACKS:
        raise ValueError(f"normalization.fallback: {fallback!r} not in {FALLBACKS}")
    decision = _record(
        "cyclegan", fallback, "+".join(DECISION_SPLITS), len(source_val), len(target_val)
    )
    if fallback == "none":
        decision["rule"] = "normalization.fallback is none: the CycleGAN, always"
        return decision
    if min(len(source_val), len(target_val)) < MIN_DECISION_IMAGES:
        decision["rule"] = (
            f"fewer than {MIN_DECISION_IMAGES} validation images in the source or the "
            "target: nothing to decide on, the CycleGAN is kept"
        )
        return decision
    if fallback_transform is None:
        raise ValueError(f"fallback {fallback!r}: no fitted normalization to compare with")
    if features is None:
        from hemaflow.metrics.inception import InceptionFeatures

        features = InceptionFeatures().features
    target_features = features(target_val)
    for name, transform in (("cyclegan", cyclegan), ("fallback", fallback_transform)):
        kid = _kid(features, target_features, transform(source_val), seed)
        decision[f"kid_{name}"], decision[f"kid_std_{name}"] = kid["kid"], kid["kid_std"]
    worse = decision["kid_cyclegan"] > decision["kid_fallback"]
    if worse:
        decision["method"] = fallback
    decision["rule"] = (
        f"KID to the target's validation images: CycleGAN {decision['kid_cyclegan']:.4f} "
        f"{'>' if worse else '<='} {fallback} {decision['kid_fallback']:.4f}, so "
        f"{decision['method']} (the pair falls back when the CycleGAN's KID is higher)"
    )
    return decision


def _never_translated(images: np.ndarray) -> np.ndarray:
    raise AssertionError("fallback none: nothing is translated to decide")


def _cyclegan_transform(model_path: str) -> Transform:
    """The pair's generator in its own orientation (G_AB: source -> target)."""
    from hemaflow.normalize.cyclegan import load_cyclegan, translate

    g_ab, _, _ = load_cyclegan(model_path)
    return lambda images: translate(g_ab, images)


def decide_pair_files(
    source: str,
    target: str,
    source_images: str,
    source_index: str,
    target_images: str,
    target_index: str,
    model_path: str | None,
    fallback: str,
    fallback_stats: str | None,
    out_json: str,
    max_images: int = 500,
    seed: int = 0,
    features: Transform | None = None,
) -> dict[str, Any]:
    """Decide the pair ``source_to_target`` from the domain caches (validation rows only),
    its CycleGAN model and the fallback's statistics fitted on the target; write JSON.
    ``features``: as in :func:`decide_pair` (default Inception-v3)."""
    from hemaflow.normalize.apply import classical_normalizer

    source_val = target_val = np.zeros((0, 1, 1, 3), np.uint8)
    cyclegan: Transform = _never_translated
    fallback_transform: Transform | None = None
    if fallback != "none":
        source_val, _ = sample_split(source_images, source_index, DECISION_SPLITS, max_images, seed)
        target_val, _ = sample_split(
            target_images, target_index, DECISION_SPLITS, max_images, seed + 1
        )
        if not model_path or not fallback_stats:
            raise ValueError(
                f"{source}_to_{target}: deciding on fallback {fallback!r} needs the CycleGAN "
                "model and the fallback's statistics"
            )
        cyclegan = _cyclegan_transform(model_path)
        with open(fallback_stats) as handle:
            fallback_transform = (
                classical_normalizer(fallback).from_dict(json.load(handle)).transform
            )
    decision = {
        "pair": f"{source}_to_{target}",
        "source": source,
        "target": target,
        **decide_pair(
            source_val, target_val, cyclegan, fallback, fallback_transform, features, seed
        ),
    }
    _write(decision, out_json)
    return decision


def decide_without_cyclegan(source: str, target: str, fallback: str, out_json: str) -> dict:
    """The decision of a pair that trains no CycleGAN: its source lab has no cell-type
    labels and ``normalization.unlabelled`` is ``fallback`` (its translated images would
    feed only the report), so its images get the fallback; written like any decision."""
    if fallback not in FALLBACKS[1:]:
        raise ValueError(
            f"{source}_to_{target}: a pair without a CycleGAN needs normalization.fallback "
            f"reinhard or macenko, got {fallback!r}"
        )
    decision = {
        "pair": f"{source}_to_{target}",
        "source": source,
        "target": target,
        **_record(fallback, fallback, None, 0, 0),
        "rule": (
            f"{source} has no cell-type labels and normalization.unlabelled is fallback: "
            f"no CycleGAN trained, its images get {fallback}"
        ),
    }
    _write(decision, out_json)
    return decision


def read_decisions(paths: Mapping[str, str]) -> dict[str, str]:
    """pair name -> the method its images get, from decision files (pair name -> path)."""
    methods = {}
    for pair, path in paths.items():
        with open(path) as handle:
            decision = json.load(handle)
        method = decision.get("method")
        if method != "cyclegan" and method not in FALLBACKS[1:]:
            raise ValueError(f"{path}: 'method' is {method!r}, not cyclegan or a fallback")
        methods[pair] = method
    return methods
