"""Apply a stain normalization method to one domain's image cache, following the plan."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.normalize.plan import destination, pair_name

CLASSICAL = ("reinhard", "macenko")


def classical_normalizer(method: str):
    """The class of a classical stain normalization (fit on the target's training
    images, applied image by image)."""
    if method == "reinhard":
        from hemaflow.normalize.reinhard import ReinhardNormalizer

        return ReinhardNormalizer
    if method == "macenko":
        from hemaflow.normalize.macenko import MacenkoNormalizer

        return MacenkoNormalizer
    raise ValueError(f"not a classical normalization method: {method!r}")


log = logging.getLogger(__name__)


def destinations(index: pd.DataFrame, plan: Mapping[str, Any], domain: str) -> np.ndarray:
    """The destination domain of every image of ``domain`` (its own name: left as is)."""
    return np.array([destination(plan, domain, c) for c in index["canonical_class"]], dtype=object)


def model_for(plan: Mapping[str, Any], source: str, target: str) -> tuple[str, str]:
    """(pair name of the trained model, generator key) that maps source onto target."""
    for a, b in plan["pairs"]:
        if (a, b) == (source, target):
            return pair_name(a, b), "G_AB"
        if (a, b) == (target, source):
            return pair_name(a, b), "G_BA"
    raise KeyError(f"the normalization plan has no pair for {source} -> {target}")


def normalize_domain(
    images: np.ndarray,
    index: pd.DataFrame,
    domain: str,
    plan: Mapping[str, Any],
    method: str,
    cyclegan_models: Mapping[str, str] | None = None,
    classical_stats: Mapping[str, str] | None = None,
    device: str | None = None,
    decisions: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Normalized copy of a domain cache, row for row, and an index with the destination
    of each image (``normalized_to``) and the method applied to it (``normalization``:
    ``none`` for the rows left as they are).

    ``cyclegan_models``: pair name -> model path; ``classical_stats``: target domain -> the
    fitted statistics (JSON) of a classical method (reinhard, macenko), with ``cyclegan``
    those of the fallback; ``decisions``: pair name -> the method its images get with
    ``cyclegan`` (``hemaflow.normalize.decide``; a pair not named keeps the CycleGAN).
    The input array is never modified."""
    out = np.array(images, copy=True)
    targets = destinations(index, plan, domain)
    applied = np.full(len(index), "none", dtype=object)
    index = index.assign(normalized_to=[t if t != domain else "" for t in targets])
    if method == "none":
        index["normalized_to"] = ""
        return out, index.assign(normalization=applied)
    for target in sorted({t for t in targets if t != domain}):
        rows = np.flatnonzero(targets == target)
        used = method
        if method == "cyclegan":
            name, key = model_for(plan, domain, target)
            used = (decisions or {}).get(name, "cyclegan")
        if used in CLASSICAL:
            if not classical_stats or target not in classical_stats:
                raise ValueError(f"{domain} -> {target}: no {used} statistics of {target}")
            with open(classical_stats[target]) as handle:
                normalizer = classical_normalizer(used).from_dict(json.load(handle))
            out[rows] = normalizer.transform(images[rows])
        elif used == "cyclegan":
            from hemaflow.normalize.cyclegan import load_cyclegan, translate

            g_ab, g_ba, _ = load_cyclegan(cyclegan_models[name], device=device)
            generator = g_ab if key == "G_AB" else g_ba
            out[rows] = translate(generator, images[rows], device=device)
        else:
            raise ValueError(f"normalization.method: unknown method {method!r}")
        applied[rows] = used
        log.info("%s: %d images -> %s with %s", domain, len(rows), target, used)
    return out, index.assign(normalization=applied)


def normalize_domain_files(
    images_path: str,
    index_path: str,
    plan_path: str,
    domain: str,
    method: str,
    cyclegan_models: Mapping[str, str],
    classical_stats: Mapping[str, str],
    out_images: str,
    out_index: str,
    decision_files: Mapping[str, str] | None = None,
) -> None:
    from hemaflow.normalize.decide import read_decisions

    images = np.load(images_path, mmap_mode="r")
    index = pd.read_parquet(index_path)
    with open(plan_path) as handle:
        plan = json.load(handle)
    out, out_idx = normalize_domain(
        np.asarray(images),
        index,
        domain,
        plan,
        method,
        cyclegan_models,
        classical_stats,
        decisions=read_decisions(decision_files or {}),
    )
    Path(out_images).parent.mkdir(parents=True, exist_ok=True)
    np.save(out_images, out)
    out_idx.to_parquet(out_index, index=False)
