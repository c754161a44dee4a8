"""The options of a classifier run (``ClassifierOptions``), its presets, and the network
they describe (``build_network``). Training is in ``hemaflow.classify.train``, inference
in ``hemaflow.classify.predict``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from hemaflow.models.classifier import (
    ARCHITECTURES,
    NORMS,
    SENET154,
    STEM_STRIDES,
    build_classifier,
)
from hemaflow.train.options import TrainingOptions

FILE_KIND = "classifier"
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step")
_SEQUENCES = ("stage_blocks", "widths")


@dataclass(frozen=True)
class ClassifierOptions(TrainingOptions):
    """Everything that defines a classifier run. Defaults are the ``senet154_ge`` preset:
    SENet-154 (stage blocks (3, 8, 36, 3), widths 256..2048, cardinality 64, base width 4,
    stem 64-64-128 with stride 4) with the gather-excite head at 224 px, dropout 0.2,
    label smoothing 0.1, and the paper's 200 epochs of 256 iterations (51,200
    iterations; one evaluation per epoch).

    ``architecture``: ``senet_ge`` (sizes below; ``gather_excite=False`` is the plain
    SE-ResNeXt) or ``resnet18`` (only image_size, norm and dropout apply).
    ``stage_blocks`` / ``widths``: one entry per stage (lists in YAML). ``stem_stride``:
    4 (SENet-154), 2 (no max pool) or 1 (no stride either). ``optimizer``: ``adamw``
    (``lr``, ``weight_decay``) or ``sgd`` (Nesterov, ``momentum``). ``schedule``:
    ``cosine`` (to 0 at ``iterations``) or ``step`` (times ``step_gamma`` every
    ``step_every`` iterations), after ``warmup_iterations`` of linear warm-up.
    ``early_stopping_patience``: evaluations without improvement before stopping (0:
    never). ``amp`` (float16 autocast + GradScaler) is used only on CUDA."""

    architecture: str = "senet_ge"
    image_size: int = 224
    stage_blocks: tuple[int, ...] = SENET154["stage_blocks"]
    widths: tuple[int, ...] = SENET154["widths"]
    cardinality: int = SENET154["cardinality"]
    base_width: int = SENET154["base_width"]
    stem_width: int = SENET154["stem_width"]
    stem_stride: int = 4
    reduction: int = 16
    norm: str = "batch"
    gather_excite: bool = True
    dropout: float = 0.2
    label_smoothing: float = 0.1
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup_iterations: int = 1_000
    step_every: int = 15_000
    step_gamma: float = 0.1
    batch_size: int = 32
    iterations: int = 51_200
    eval_every: int = 256
    early_stopping_patience: int = 20
    color_jitter: bool = False
    stain_augment: float = 0.0
    scale_augment: float = 0.0
    grayscale_augment: float = 0.0
    class_balanced: bool = True
    checkpoint_every: int = 2_560
    log_every: int = 100
    seed: int = 0
    amp: bool = True

    KIND: ClassVar[str] = "classifier"
    DEFAULT_PRESET: ClassVar[str] = "small"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "architecture": ARCHITECTURES,
        "norm": NORMS,
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
    }
    POSITIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "cardinality",
            "base_width",
            "stem_width",
            "reduction",
            "step_every",
            "batch_size",
            "iterations",
            "eval_every",
            "checkpoint_every",
            "log_every",
        }
    )
    NON_NEGATIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "lr",
            "weight_decay",
            "warmup_iterations",
            "early_stopping_patience",
            "stain_augment",
            "scale_augment",
        }
    )
    FRACTIONS: ClassVar[frozenset[str]] = frozenset(
        {"dropout", "label_smoothing", "momentum", "grayscale_augment"}
    )

    def __post_init__(self) -> None:
        # YAML gives lists: stored as tuples (hashable, equal to a checkpoint's)
        for name in _SEQUENCES:
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        super().__post_init__()
        if len(self.stage_blocks) != len(self.widths):
            raise ValueError(
                f"{self.KIND} options 'stage_blocks' and 'widths' must have one entry per "
                f"stage each, got {len(self.stage_blocks)} and {len(self.widths)}"
            )

    def check_field(self, name: str, value: Any) -> str | None:
        if name in _SEQUENCES:
            if (
                not isinstance(value, tuple)
                or not value
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
            ):
                return "expected a non-empty list of ints >= 1"
            return None
        if name == "image_size" and value < 16:
            return "must be >= 16"
        if name == "stem_stride" and value not in STEM_STRIDES:
            return "must be 1, 2 or 4"
        if name == "step_gamma" and not 0.0 < value <= 1.0:
            return "must be in (0, 1]"
        return super().check_field(name, value)


PRESETS: dict[str, ClassifierOptions] = {
    # 64 px, a small SENet-GE: stage blocks (1, 1, 1, 1), widths 32..256, cardinality 8,
    # base width 2, stem 16-16-32 with stride 2 (last maps 4x4), ~0.5 M parameters.
    # Batch 32: measured 0.13 s per training iteration on one CPU thread of the 2-core
    # machine (~250 images/s: sampling, forward, backward, AdamW; the network alone
    # ~0.1 s), so 3000 iterations (~96k images) take about 7 minutes, plus one
    # evaluation every 100 iterations.
    "small": ClassifierOptions(
        architecture="senet_ge",
        image_size=64,
        stage_blocks=(1, 1, 1, 1),
        widths=(32, 64, 128, 256),
        cardinality=8,
        base_width=2,
        stem_width=16,
        stem_stride=2,
        lr=2e-3,
        weight_decay=0.05,
        warmup_iterations=100,
        batch_size=32,
        iterations=3_000,
        eval_every=100,
        early_stopping_patience=10,
        checkpoint_every=250,
        log_every=25,
    ),
    # the paper's SENet-154-GE: 224 px (or the config's size as an override), 200 epochs
    # of 256 iterations, evaluation every epoch; GPU (on one CPU thread, 7.9 s per
    # iteration of 32 images even at 64 px)
    "senet154_ge": ClassifierOptions(),
    # ResNet-18 baseline at 64 px (small-image stem: 3x3 stride 1, no max pool); GPU
    # (about 2.4 GFLOPs per 64 px image forward; 8.4 s per iteration of 64 images on one
    # CPU thread)
    "resnet18": ClassifierOptions(
        architecture="resnet18",
        image_size=64,
        dropout=0.2,
        lr=1e-3,
        weight_decay=0.05,
        warmup_iterations=500,
        batch_size=64,
        iterations=20_000,
        eval_every=250,
        early_stopping_patience=20,
        checkpoint_every=1_000,
        log_every=100,
    ),
}
ClassifierOptions.PRESETS = PRESETS


def build_network(options: ClassifierOptions, n_classes: int) -> nn.Module:
    """The classifier of ``options``, its weights in the channels-last layout: every
    convolution then runs channels-last (oneDNN's and cuDNN's faster path; the outputs
    equal the default layout's to float rounding). A bare training step of the ``small``
    preset, batch 32 on one CPU thread: 0.22 s against 0.29 (``bench/bench_layout.py``);
    the real training step on the main job's images is no faster in either layout
    (docs/benchmarks.md), so this buys speed only where oneDNN or cuDNN find it."""
    net = build_classifier(options.architecture, n_classes, options)
    return net.to(memory_format=torch.channels_last)
