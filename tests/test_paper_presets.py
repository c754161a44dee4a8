"""The ``paper`` presets at full size, on the CPU: every trainer runs two iterations of
its paper preset (the preset's networks and image size; only the batch size and the
schedule are overridden) through its real training entry point on real cells, writes
its model file, and the file loads back and generates or predicts.

The GPU runs would otherwise be the first to build these networks at their size, feed
them their image size and round-trip them through a model file. The per-iteration costs
(one CPU thread, batch 2) are in docs/benchmarks.md ("On the CPU: the paper presets in
the test suite"); the time per iteration on a GPU comes from bench/bench_gpu_presets.py."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hemaflow.classify.options import PRESETS as CLASSIFIER_PRESETS
from hemaflow.classify.predict import load_classifier, predict_proba
from hemaflow.classify.train import train_classifier
from hemaflow.normalize.cyclegan import load_cyclegan, translate
from hemaflow.synth import fewshot_adapt
from hemaflow.synth.cwgan import CWGAN_PRESETS, generate_cwgan, load_cwgan, train_cwgan
from hemaflow.synth.fewshot import PRESETS as FEWSHOT_PRESETS
from hemaflow.synth.fewshot import train_fewshot_meta
from hemaflow.synth.fewshot_adapt import adapt_fewshot, generate_fewshot, load_fewshot
from hemaflow.synth.real_classifier import (
    CLASSIFIER_PRESETS as REAL_CLASSIFIER_PRESETS,
)
from hemaflow.synth.real_classifier import (
    classify,
    load_real_classifier,
    train_real_classifier,
)
from hemaflow.train.cyclegan import PRESETS as CYCLEGAN_PRESETS
from hemaflow.train.cyclegan import train_cyclegan
from hemaflow.train.loop import list_checkpoints
from tests.realdata import load_square_cells, pbc_cells, require_shared_datasets

# what a test may change in a paper preset: how many images a step sees and how long the
# run is, never the networks, the image size or the losses
SCHEDULE = frozenset(
    {
        "batch_size",
        "iterations",
        "decay_iterations",
        "meta_iterations",
        "adapt_iterations",
        "checkpoint_every",
        "log_every",
        "eval_every",
    }
)
CLASSES = ["eosinophil", "lymphocyte", "neutrophil"]


def paper(presets: dict, name: str = "paper", **schedule):
    """The preset ``name`` with only schedule options changed (checked)."""
    changed = set(schedule) - SCHEDULE
    assert not changed, f"not a schedule option: {sorted(changed)}"
    return presets[name].with_overrides(schedule)


def labelled(per_class: int, size: int, classes=CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Real pbc cells at ``size`` px with integer labels indexing ``classes``."""
    images, names = pbc_cells(per_class, size, classes=classes)
    return images, np.array([classes.index(n) for n in names], np.int64)


@pytest.fixture
def memory_tmp_path(tmp_path: Path) -> Iterator[Path]:
    """A temporary folder in memory (/dev/shm) when there is room, else ``tmp_path``.
    The paper networks' checkpoints are large (SENet-154-GE: weights, AdamW's two
    moments and the best weights, 1.8 GB; the CycleGAN's 1 GB) and the development
    machine's disk writes them at about 60 MB/s: half a minute per checkpoint, for a
    test about the networks, not the disk. The files take the same path through
    ``atomic_torch_save`` (fsync, rename) either way."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shutil.disk_usage(shm).free < 6 * 2**30:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="hemaflow-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _finite(summary: dict) -> bool:
    return all(np.isfinite(v) for v in summary["final_losses"].values())


def _parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ------------------------------------------------------------ C-WGAN-GP and its classifier


@pytest.fixture(scope="module")
def real_classifier(tmp_path_factory) -> dict:
    """The C-WGAN-GP's real-data classifier, paper preset (64 px, width 64, blocks
    (2, 4, 4)), two steps of 2 images; the C-WGAN-GP test uses it."""
    root = tmp_path_factory.mktemp("real_classifier")
    options = paper(
        REAL_CLASSIFIER_PRESETS, batch_size=2, iterations=2, checkpoint_every=2, log_every=1
    )
    images, labels = labelled(2, options.image_size)
    summary = train_real_classifier(
        images, labels, CLASSES, options, root / "state", root / "model.pt"
    )
    return {"root": root, "options": options, "summary": summary, "images": images}


def test_real_classifier_paper_preset_trains_and_classifies(real_classifier):
    summary, options = real_classifier["summary"], real_classifier["options"]
    assert summary["completed"] and summary["iterations"] == 2 and _finite(summary)
    net, names, loaded = load_real_classifier(real_classifier["root"] / "model.pt", "cpu")
    assert names == CLASSES and loaded == options
    assert (net.image_size, options.width, options.blocks) == (64, 64, (2, 4, 4))
    probabilities = classify(net, real_classifier["images"][:2])
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_cwgan_paper_preset_trains_and_generates(real_classifier, tmp_path):
    options = paper(CWGAN_PRESETS, batch_size=2, iterations=2, checkpoint_every=2, log_every=1)
    assert (options.architecture, options.width, options.n_critic) == ("residual", 64, 5)
    images, labels = labelled(2, options.image_size, CLASSES[:2])
    summary = train_cwgan(
        images,
        labels,
        CLASSES[:2],
        real_classifier["root"] / "model.pt",
        options,
        tmp_path / "state",
        tmp_path / "model.pt",
    )
    assert summary["completed"] and summary["iterations"] == 2 and _finite(summary)
    assert [step for step, _ in list_checkpoints(tmp_path / "state")] == [2]
    generator, names, loaded = load_cwgan(tmp_path / "model.pt", "cpu")
    assert names == CLASSES[:2] and loaded == options
    assert (generator.image_size, generator.width) == (64, 64)
    assert _parameters(generator) > 10e6  # the FC layer to 64 x 32 x 32 alone has 10.5 M
    fakes = generate_cwgan(generator, 1, 2, seed=0)
    assert fakes.shape == (2, 64, 64, 3) and fakes.dtype == np.uint8


# ---------------------------------------------------------------------------- few-shot GAN


def test_fewshot_paper_preset_meta_trains_adapts_and_generates(tmp_path, monkeypatch):
    options = paper(
        FEWSHOT_PRESETS,
        batch_size=2,
        meta_iterations=2,
        adapt_iterations=2,
        checkpoint_every=2,
        log_every=1,
    )
    assert (options.image_size, options.width, options.shots, options.inner_steps) == (
        128,
        32,
        10,
        5,
    )
    # meta-training tasks need `shots` (10) images per class
    images, labels = labelled(options.shots, options.image_size, CLASSES[:2])
    meta = train_fewshot_meta(
        images, labels, CLASSES[:2], options, tmp_path / "meta_state", tmp_path / "meta.pt"
    )
    assert meta["completed"] and meta["iterations"] == 2 and _finite(meta)

    rare, _ = pbc_cells(4, options.image_size, classes=["basophil"])
    # the model file re-estimates the generator's batch-norm statistics from 8 batches
    # of 64 noise draws: 512 images at 128 px, half a minute on one CPU thread. One
    # batch of 4 takes the same code path.
    monkeypatch.setattr(
        fewshot_adapt,
        "recalibrate_batch_norm",
        functools.partial(fewshot_adapt.recalibrate_batch_norm, batches=1, batch_size=4),
    )
    adapted = adapt_fewshot(
        tmp_path / "meta.pt", rare, options, tmp_path / "adapt_state", tmp_path / "adapted.pt"
    )
    assert adapted["completed"] and adapted["iterations"] == 2 and _finite(adapted)
    generator, code, loaded = load_fewshot(tmp_path / "adapted.pt", "cpu")
    assert loaded == options and code.shape == (options.code_dim,)
    assert (generator.image_size, generator.width) == (128, 32)
    fakes = generate_fewshot(generator, code, 2, seed=0)
    assert fakes.shape == (2, 128, 128, 3) and fakes.dtype == np.uint8


# -------------------------------------------------------------------------------- CycleGAN


def test_cyclegan_paper_preset_trains_and_translates(memory_tmp_path):
    tmp_path = memory_tmp_path
    options = paper(
        CYCLEGAN_PRESETS,
        batch_size=2,
        iterations=1,
        decay_iterations=1,
        checkpoint_every=2,
        log_every=1,
    )
    assert (options.image_size, options.generator, options.ngf, options.ndf) == (
        128,
        "unet",
        64,
        64,
    )
    zheng = sorted((require_shared_datasets() / "zheng_tecom" / "Dataset 1").glob("*.bmp"))
    images_a = load_square_cells(zheng[:4], options.image_size)
    images_b, _ = pbc_cells(1, options.image_size, classes=CLASSES + ["basophil"])
    summary = train_cyclegan(images_a, images_b, options, tmp_path / "state", tmp_path / "model.pt")
    assert summary["completed"] and summary["iterations"] == 2 and _finite(summary)
    g_ab, g_ba, loaded = load_cyclegan(tmp_path / "model.pt", "cpu")
    assert loaded == options and g_ab.image_size == 128
    assert _parameters(g_ab) > 40e6  # the 128 px U-Net with ngf 64
    for generator, images in ((g_ab, images_a), (g_ba, images_b)):
        out = translate(generator, images[:2])
        assert out.shape == (2, 128, 128, 3) and out.dtype == np.uint8


# ------------------------------------------------------------------------------ classifier


def test_senet154_ge_preset_trains_and_predicts(memory_tmp_path):
    """SENet-154-GE at 224 px: 5 s per iteration of 2 images on one quiet CPU thread (up
    to 16 on a busy machine), so two iterations, a validation pass and a 1.8 GB checkpoint
    are the bulk of this file's time."""
    tmp_path = memory_tmp_path
    options = paper(
        CLASSIFIER_PRESETS,
        "senet154_ge",
        batch_size=2,
        iterations=2,
        eval_every=2,
        checkpoint_every=2,
        log_every=1,
    )
    assert dataclasses.asdict(options) | {
        "batch_size": 32,
        "iterations": 51_200,
        "eval_every": 256,
        "checkpoint_every": 2_560,
        "log_every": 100,
    } == dataclasses.asdict(CLASSIFIER_PRESETS["senet154_ge"])
    images, labels = labelled(1, options.image_size)
    summary = train_classifier(
        images, labels, images, labels, CLASSES, options, tmp_path / "state", tmp_path / "m.pt"
    )
    assert summary["completed"] and summary["iterations"] == 2
    assert np.isfinite(summary["final_losses"]["loss"])
    assert [row[0] for row in summary["evaluations"]] == [2]
    net, names, loaded = load_classifier(tmp_path / "m.pt", "cpu")
    assert names == CLASSES and loaded == options and net.image_size == 224
    assert _parameters(net) > 100e6
    probabilities = predict_proba(net, images[:2])
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
