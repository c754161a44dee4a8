"""Generate a class's synthetic images through the quality gate until it has enough.

Candidates come in seeded batches (one seed per batch, derived from the run seed and the
class), so every accepted image can be regenerated from its generator, checkpoint, seed
and offset. Generation stops when ``n_needed`` images passed the gate or after
``max_candidates_factor * n_needed`` candidates; a shortfall is reported, never hidden."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from hemaflow.progress import Progress
from hemaflow.synth.quality import CopyDetector, GateSettings, RealismScorer, quality_gate

log = logging.getLogger(__name__)

SampleFn = Callable[[int, int], np.ndarray]  # (n, seed) -> uint8 NHWC
ClassifyFn = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC -> (N, classes) probabilities


def batch_seed(seed: int, class_name: str, round_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{class_name}:{round_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def generate_gated(
    sample: SampleFn,
    classify: ClassifyFn,
    class_name: str,
    class_names: list[str],
    n_needed: int,
    copies: CopyDetector,
    settings: GateSettings,
    seed: int,
    batch_size: int = 256,
    max_candidates_factor: float = 3.0,
    realism: RealismScorer | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """(accepted uint8 images, one row per candidate: synthetic_id, seed, offset, gate
    scores, accepted, reject_reason). ``realism``: the class's realism scorer, needed
    when ``settings.min_realism`` > 0."""
    if class_name not in class_names:
        raise ValueError(
            f"class {class_name!r} is not one of the quality classifier's classes "
            f"({', '.join(class_names)})"
        )
    class_index = class_names.index(class_name)
    limit = int(np.ceil(max_candidates_factor * n_needed))
    accepted: list[np.ndarray] = []
    frames: list[pd.DataFrame] = []
    n_accepted = n_candidates = round_index = 0
    progress = Progress(f"generate {class_name}", n_needed, "images", logger=log)
    while n_accepted < n_needed and n_candidates < limit:
        n = min(batch_size, limit - n_candidates, max(n_needed - n_accepted, 1) * 2)
        seed_k = batch_seed(seed, class_name, round_index)
        images = sample(n, seed_k)
        gate = quality_gate(
            images, class_index, classify(images), class_names, copies, settings, realism
        )
        gate.insert(0, "offset", np.arange(n))
        gate.insert(0, "seed", seed_k)
        gate.insert(0, "synthetic_id", [f"synthetic:{class_name}:{seed_k}:{k}" for k in range(n)])
        keep = np.flatnonzero(gate["accepted"].to_numpy())[: n_needed - n_accepted]
        used = np.zeros(n, dtype=bool)
        used[keep] = True
        # accepted beyond the need are not used: mark them so the counts add up
        gate["used"] = used
        accepted.append(images[keep])
        frames.append(gate)
        n_accepted += len(keep)
        n_candidates += n
        round_index += 1
        progress.update(n_accepted, f"{n_candidates} candidates of at most {limit}")
    progress.finish(f"{n_candidates} candidates of at most {limit}")
    candidates = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if n_accepted < n_needed:
        log.warning(
            "%s: only %d of %d synthetic images passed the quality gate after %d candidates",
            class_name,
            n_accepted,
            n_needed,
            n_candidates,
        )
    images = np.concatenate(accepted) if accepted else np.zeros((0, 1, 1, 3), np.uint8)
    return images, candidates


def gate_summary(class_name: str, route: str, n_needed: int, candidates: pd.DataFrame) -> dict:
    """Counts for the report: generated, accepted, used, rejected by reason."""
    reasons = candidates["reject_reason"].value_counts() if len(candidates) else pd.Series()
    return {
        "canonical_class": class_name,
        "route": route,
        "needed": int(n_needed),
        "candidates": int(len(candidates)),
        "accepted": int(candidates["accepted"].sum()) if len(candidates) else 0,
        "used": int(candidates["used"].sum()) if len(candidates) else 0,
        "rejected_low_confidence": int(reasons.get("low_confidence", 0)),
        "rejected_near_copy": int(reasons.get("near_copy_of_training_image", 0)),
        "rejected_low_realism": int(reasons.get("low_realism", 0)),
        "shortfall": int(n_needed - (candidates["used"].sum() if len(candidates) else 0)),
    }
