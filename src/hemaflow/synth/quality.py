"""The quality gate on synthetic images.

A synthetic image enters the training set only if

- the real-data classifier (trained on real training images only) assigns it to the class
  it was generated for with at least ``min_confidence``, and
- it is not a near copy of a training image: the perceptual hash finds training images
  within ``copy_max_hamming`` bits and the shift-tolerant thumbnail correlation (the
  dedup stage's second look) of the closest of them reaches ``copy_min_correlation``;
- with ``min_realism`` > 0, its realism score (``RealismScorer``: Kynkäänniemi et al.
  2019's, in the metrics' Inception features, against the class's training images) is at
  least ``min_realism``. At 1 the candidate must lie in the k-NN ball of some training
  image: inside the real manifold that k-NN precision measures. Off (0) by default: it
  costs an Inception pass per candidate that the judge accepts.

Every candidate keeps its scores and, when rejected, the reason.

The gate is only as fair as its judge: ``real_acceptance`` measures, per class, how many
held-out real images of the class (validation images, never training or test images) the
judge itself accepts at ``min_confidence``. A class below ``min_real_acceptance`` is
flagged (the judge is too strict for it: its synthetic images are held to a bar that real
cells miss), never silently given a lower threshold. Asked for, with ``fair_confidence``,
each class gets its own threshold (``fair_threshold``): ``min_confidence`` lowered, never
raised, to the highest value at which ``min_real_acceptance`` of the class's real
validation images still pass, so that the judge is fair by construction (and says how
little it can then tell, in the threshold it reports)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.dedup.phash import phash
from hemaflow.dedup.verify import gray_thumbnails, shift_correlation
from hemaflow.errors import ConfigError

GATE_COLUMNS = (
    "confidence",
    "predicted_class",
    "nearest_hamming",
    "copy_correlation",
    "realism",
    "accepted",
    "reject_reason",
)


@dataclass(frozen=True)
class GateSettings:
    min_confidence: float = 0.5
    copy_max_hamming: int = 8
    copy_min_correlation: float = 0.95
    min_real_acceptance: float = 0.9
    min_realism: float = 0.0
    fair_confidence: bool = False

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> GateSettings:
        known = {
            "min_confidence",
            "copy_max_hamming",
            "copy_min_correlation",
            "min_real_acceptance",
            "min_realism",
            "fair_confidence",
        }
        for key in section:
            if key not in known:
                raise ConfigError(f"synthesis.quality_gate.{key}", "unknown setting")
        settings = cls(**section)
        if not 0.0 <= settings.min_confidence <= 1.0:
            raise ConfigError("synthesis.quality_gate.min_confidence", "must be in [0, 1]")
        if not 0.0 <= settings.min_real_acceptance <= 1.0:
            raise ConfigError("synthesis.quality_gate.min_real_acceptance", "must be in [0, 1]")
        if not settings.min_realism >= 0.0:
            raise ConfigError("synthesis.quality_gate.min_realism", "must be >= 0 (0: off)")
        if not isinstance(settings.fair_confidence, bool):
            raise ConfigError("synthesis.quality_gate.fair_confidence", "must be true or false")
        if not 0 <= settings.copy_max_hamming <= 64:
            raise ConfigError("synthesis.quality_gate.copy_max_hamming", "must be in 0..64")
        return settings


def fair_threshold(confidences: np.ndarray, settings: GateSettings) -> float:
    """A class's confidence threshold. ``min_confidence``, except with ``fair_confidence``:
    then lowered (never raised) to the highest value that at least ``min_real_acceptance``
    of the class's real validation images reach (``confidences``: the judge's confidence
    in the class for each of them). Without such images, ``min_confidence``."""
    values = np.sort(np.asarray(confidences, dtype=np.float64))
    if not settings.fair_confidence or len(values) == 0:
        return settings.min_confidence
    needed = int(np.ceil(settings.min_real_acceptance * len(values) - 1e-9))
    if needed == 0:
        return settings.min_confidence
    return float(min(settings.min_confidence, values[len(values) - needed]))


def class_gate(settings: GateSettings, confidences: np.ndarray) -> GateSettings:
    """The gate of one class: ``settings`` with ``fair_threshold``'s ``min_confidence``."""
    return replace(settings, min_confidence=fair_threshold(confidences, settings))


def image_hashes(images: np.ndarray) -> np.ndarray:
    return np.array([phash(image) for image in images], dtype=np.uint64)


class CopyDetector:
    """Nearest training images of a class by perceptual hash, verified by correlation."""

    def __init__(self, train_images: np.ndarray, max_hamming: int, chunk: int = 256):
        self.train_images = np.asarray(train_images)
        self.hashes = image_hashes(self.train_images)
        self.thumbs = gray_thumbnails(self.train_images) if len(self.train_images) else None
        self.max_hamming = max_hamming
        self.chunk = chunk

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Hamming distance to the nearest training image, best thumbnail correlation
        with any training image within ``max_hamming`` bits, 0 if none)."""
        n = len(images)
        nearest = np.full(n, 64, dtype=np.int64)
        correlation = np.zeros(n, dtype=np.float32)
        if n == 0 or len(self.hashes) == 0:
            return nearest, correlation
        hashes = image_hashes(images)
        thumbs = gray_thumbnails(np.asarray(images))
        for start in range(0, n, self.chunk):
            block = hashes[start : start + self.chunk]
            distance = np.bitwise_count(block[:, None] ^ self.hashes[None, :]).astype(np.int64)
            nearest[start : start + len(block)] = distance.min(axis=1)
            rows, cols = np.nonzero(distance <= self.max_hamming)
            if len(rows):
                scores = shift_correlation(thumbs[start + rows], self.thumbs[cols])
                best = np.zeros(len(block), dtype=np.float32)
                np.maximum.at(best, rows, scores)
                correlation[start : start + len(block)] = best
        return nearest, correlation


#: neighbours of the realism score's balls: those of the k-NN precision metric
REALISM_K = 3


class RealismScorer:
    """Realism scores of images against a class's training images in the feature space
    of ``features`` (images -> (N, D) array; the metrics' Inception features in the
    workflow): ``hemaflow.metrics.fid.realism_scores`` with the training images' k-NN
    radii (k = ``REALISM_K``). A class with at most k training images has no balls: its
    scores are NaN and the gate does not judge realism (``usable`` is False)."""

    def __init__(self, train_images: np.ndarray, features: Callable[[np.ndarray], np.ndarray]):
        from hemaflow.metrics.fid import knn_radii

        self.features = features
        self.usable = len(train_images) > REALISM_K
        if self.usable:
            self.train = np.asarray(features(np.asarray(train_images)), dtype=np.float64)
            self.radii = knn_radii(self.train, REALISM_K)

    def scores(self, images: np.ndarray) -> np.ndarray:
        from hemaflow.metrics.fid import realism_scores

        if not self.usable or len(images) == 0:
            return np.full(len(images), np.nan)
        return realism_scores(self.train, self.radii, self.features(np.asarray(images)))


def quality_gate(
    images: np.ndarray,
    class_index: int,
    probabilities: np.ndarray,
    class_names: list[str],
    copies: CopyDetector,
    settings: GateSettings,
    realism: RealismScorer | None = None,
) -> pd.DataFrame:
    """One row per candidate image (columns GATE_COLUMNS). ``realism`` scores the
    candidates that pass the judge and the near-copy check when ``settings.min_realism``
    > 0 (required then); the others' ``realism`` is NaN."""
    if settings.min_realism > 0 and realism is None:
        raise ValueError("quality_gate: min_realism > 0 needs a RealismScorer (realism)")
    if len(probabilities) != len(images):
        raise ValueError(
            f"quality_gate: {len(images)} images but {len(probabilities)} probability rows"
        )
    confidence = probabilities[:, class_index] if len(images) else np.zeros(0)
    predicted = (
        np.asarray(class_names, dtype=object)[probabilities.argmax(axis=1)]
        if len(images)
        else np.zeros(0, dtype=object)
    )
    nearest, correlation = copies.scores(images)
    low = confidence < settings.min_confidence
    copied = correlation >= settings.copy_min_correlation
    scores = np.full(len(images), np.nan)
    unreal = np.zeros(len(images), dtype=bool)
    if settings.min_realism > 0 and realism.usable:  # a scorer is required then
        judged = np.flatnonzero(~(low | copied))
        scores[judged] = realism.scores(np.asarray(images)[judged])
        unreal[judged] = scores[judged] < settings.min_realism
    reasons = np.where(
        copied,
        "near_copy_of_training_image",
        np.where(low, "low_confidence", np.where(unreal, "low_realism", "")),
    )
    return pd.DataFrame(
        {
            "confidence": confidence.astype(np.float64),
            "predicted_class": predicted,
            "nearest_hamming": nearest,
            "copy_correlation": correlation.astype(np.float64),
            "realism": scores,
            "accepted": ~(low | copied | unreal),
            "reject_reason": reasons,
        }
    )


REAL_ACCEPTANCE_COLUMNS = (
    "canonical_class",
    "real_images",
    "accepted",
    "acceptance",
    "realism_acceptance",
    "min_confidence",
    "min_real_acceptance",
    "verdict",
)
#: verdicts of the judge on a class's real held-out images
JUDGE_FAIR, JUDGE_TOO_STRICT, JUDGE_UNCHECKED = "fair", "too_strict", "no_validation_images"


def real_acceptance(
    probabilities: np.ndarray,
    true_classes: Sequence[str],
    class_names: Sequence[str],
    settings: GateSettings,
    realism: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per class of the judge (``class_names``, the columns of ``probabilities``): how
    many of its real held-out images (rows whose ``true_classes`` is the class) the judge
    gives at least ``min_confidence`` for that class (with ``fair_confidence``, the class's
    ``fair_threshold``, in the ``min_confidence`` column), and the verdict: ``fair`` (at least
    ``min_real_acceptance``), ``too_strict`` or ``no_validation_images``. With
    ``min_realism`` > 0, ``realism`` holds each row's realism score against its class's
    training images (NaN: not judged): ``realism_acceptance`` is the share at least
    ``min_realism``, ``accepted`` counts the images that pass both checks (the whole
    gate), and the verdict is of that."""
    true_classes = np.asarray(true_classes, dtype=object)
    if len(probabilities) != len(true_classes):
        raise ValueError(
            f"real_acceptance: {len(true_classes)} images but {len(probabilities)} probability rows"
        )
    rows = []
    for k, name in enumerate(class_names):
        mine = true_classes == name
        n = int(mine.sum())
        own = probabilities[mine, k] if n else np.zeros(0)
        threshold = fair_threshold(own, settings)
        passed = own >= threshold
        realism_acceptance = float("nan")
        if settings.min_realism > 0 and realism is not None and n:
            scores = np.asarray(realism, dtype=np.float64)[mine]
            real_enough = np.isnan(scores) | (scores >= settings.min_realism)
            realism_acceptance = float(real_enough.mean())
            passed = passed & real_enough
        accepted = int(passed.sum())
        acceptance = accepted / n if n else float("nan")
        if n == 0:
            verdict = JUDGE_UNCHECKED
        elif acceptance >= settings.min_real_acceptance:
            verdict = JUDGE_FAIR
        else:
            verdict = JUDGE_TOO_STRICT
        rows.append(
            {
                "canonical_class": name,
                "real_images": n,
                "accepted": accepted,
                "acceptance": acceptance,
                "realism_acceptance": realism_acceptance,
                "min_confidence": threshold,
                "min_real_acceptance": settings.min_real_acceptance,
                "verdict": verdict,
            }
        )
    return pd.DataFrame(rows, columns=list(REAL_ACCEPTANCE_COLUMNS))
