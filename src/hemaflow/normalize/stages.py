"""The normalization stage's steps, from files to files (called by workflow scripts)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.normalize.plan import make_plan
from hemaflow.train.state import keyed_state_dir

log = logging.getLogger(__name__)


def write_plan(counts_csv: str, settings: Mapping[str, Any], out_plan: str) -> dict:
    plan = make_plan(pd.read_csv(counts_csv), settings["target"], settings["direction"])
    plan["method"] = settings["method"]
    with open(out_plan, "w") as handle:
        json.dump(plan, handle, indent=2)
    log.info("normalization plan: target %s, pairs %s", plan["target"], plan["pairs"])
    return plan


def load_split(images_path: str, index_path: str, splits: tuple[str, ...]) -> np.ndarray:
    """The cached images of a domain that belong to ``splits``."""
    index = pd.read_parquet(index_path)
    rows = index.loc[index["split"].isin(splits), "domain_index"].to_numpy()
    return np.asarray(np.load(images_path, mmap_mode="r")[np.sort(rows)])


def training_state_dir(root: str, pair: str, options: Mapping[str, Any], *indexes: str) -> Path:
    """The resumable state of a pair's CycleGAN, keyed by its options and the train-split
    record ids of each domain (``keyed_state_dir``)."""
    groups = []
    for path in indexes:
        index = pd.read_parquet(path)
        groups.append(index.loc[index["split"] == "train", "record_id"])
    return keyed_state_dir(root, "cyclegan", pair, options, *groups)


def train_pair(
    source_images: str,
    source_index: str,
    target_images: str,
    target_index: str,
    options_section: Mapping[str, Any],
    pair: str,
    state_root: str,
    out_model: str,
    out_losses: str,
    out_summary: str,
) -> dict:
    """Train the CycleGAN of one domain pair on the train split only."""
    from hemaflow.train.cyclegan import CycleGANOptions, train_cyclegan

    options = CycleGANOptions.from_config(dict(options_section))
    images_a = load_split(source_images, source_index, ("train",))
    images_b = load_split(target_images, target_index, ("train",))
    state_dir = training_state_dir(state_root, pair, options_section, source_index, target_index)
    log.info(
        "%s: %d + %d training images, state in %s", pair, len(images_a), len(images_b), state_dir
    )
    summary = train_cyclegan(
        images_a,
        images_b,
        options,
        state_dir=state_dir,
        out_model=Path(out_model),
        log_csv=Path(out_losses),
    )
    with open(out_summary, "w") as handle:
        json.dump(summary, handle, indent=2, default=str)
    return summary


def fit_reinhard(target_images: str, target_index: str, out_stats: str) -> dict:
    """Reinhard statistics of a target domain, from its train split."""
    return fit_classical("reinhard", target_images, target_index, out_stats)


def fit_classical(method: str, target_images: str, target_index: str, out_stats: str) -> dict:
    """A classical normalization's statistics of a target domain (Reinhard's LAB mean and
    spread, Macenko's stain vectors), from its train split."""
    from hemaflow.normalize.apply import classical_normalizer

    normalizer = classical_normalizer(method)()
    normalizer.fit(load_split(target_images, target_index, ("train",)))
    stats = normalizer.to_dict()
    with open(out_stats, "w") as handle:
        json.dump(stats, handle, indent=2)
    return stats
