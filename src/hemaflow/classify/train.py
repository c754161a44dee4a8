"""Training the white-blood-cell classifier (REFERENCE.md, "SENet-154-GE classifier"):
SENet-154 with the gather-excite head, its SE-ResNeXt ablation, or a ResNet-18 baseline
(``hemaflow.models.classifier``), on ``hemaflow.train.loop.run_training``.

Each iteration draws a batch (class-balanced by default: classes uniformly, then images
within the class), puts every image under a random symmetry of the square (cells have no
orientation) and, with ``color_jitter``, random brightness, contrast, saturation and hue;
the loss is cross-entropy with label smoothing; AdamW (weight decay on the weights of
convolutions and linear layers only) or SGD with Nesterov momentum, under a cosine or a
step schedule with an optional linear warm-up; float16 autocast + GradScaler on CUDA
only. Every ``eval_every`` iterations (and at the last) the balanced accuracy (mean
per-class recall over the classes present) on the validation images is measured; the
best weights are kept (in the checkpoints too) and the run stops early when the score
did not improve for ``early_stopping_patience`` evaluations. Random draws come from one
numpy Generator and the torch RNG, both checkpointed, so a killed run resumes bit for
bit on CPU. The model file holds the BEST weights."""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.classify.augment import stain_augment
from hemaflow.classify.metrics import summary_metrics
from hemaflow.models.classifier import (
    ARCHITECTURES,
    NORMS,
    SENET154,
    STEM_STRIDES,
    build_classifier,
)
from hemaflow.train.labelled import BalancedRows, check_labelled
from hemaflow.train.loop import (
    ImageSampler,
    atomic_torch_save,
    check_images,
    fingerprint,
    log_device,
    resize_float,
    resize_images,
    resolve_device,
    run_training,
    to_model_range,
    uint8_tensor,
)
from hemaflow.train.options import TrainingOptions

log = logging.getLogger(__name__)

FILE_KIND = "classifier"
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step")
LOSS_COLUMNS = (
    "iteration",
    "loss",
    "accuracy",
    "val_balanced_accuracy",
    "best_val_balanced_accuracy",
    "lr",
    "seconds",
)
# options that may change between a checkpoint and its resumption without changing the run
_RESUMABLE_CHANGES = frozenset({"checkpoint_every", "log_every", "amp"})
# colour jitter: brightness, contrast and saturation factors in [1 - s, 1 + s], hue
# rotated by up to this fraction of a turn (of the chroma plane of YIQ)
JITTER_BRIGHTNESS = 0.2
JITTER_CONTRAST = 0.2
JITTER_SATURATION = 0.2
JITTER_HUE = 0.02
_SEQUENCES = ("stage_blocks", "widths")


# ------------------------------------------------------------------------------- options


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
        {"lr", "weight_decay", "warmup_iterations", "early_stopping_patience", "stain_augment"}
    )
    FRACTIONS: ClassVar[frozenset[str]] = frozenset({"dropout", "label_smoothing", "momentum"})

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
    return build_classifier(options.architecture, n_classes, options)


# ---------------------------------------------------------------------------- pieces


class LRSchedule:
    """LR factor per iteration: linear warm-up over ``warmup`` iterations, then cosine
    from 1 to 0 at ``total`` or times ``gamma`` every ``step_every`` iterations. A class,
    not a lambda, so that ``LambdaLR.state_dict`` can store it."""

    def __init__(self, kind: str, total: int, warmup: int, step_every: int, gamma: float):
        self.kind = kind
        self.total = total
        self.warmup = warmup
        self.step_every = step_every
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        after = step - self.warmup
        if self.kind == "cosine":
            progress = min(1.0, after / max(1, self.total - self.warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.gamma ** (after // self.step_every)


_LUMA = (0.299, 0.587, 0.114)


def color_jitter(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue per image of a [-1, 1] NCHW batch
    (factors from ``rng``); the result is clamped to [-1, 1]."""
    n = batch.shape[0]
    draws = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(4, n)).astype(np.float32))
    draws = draws.to(batch.device).view(4, n, 1, 1, 1)
    brightness = 1.0 + JITTER_BRIGHTNESS * draws[0]
    contrast = 1.0 + JITTER_CONTRAST * draws[1]
    saturation = 1.0 + JITTER_SATURATION * draws[2]
    angle = 2.0 * math.pi * JITTER_HUE * draws[3]
    luma = torch.tensor(_LUMA, device=batch.device).view(1, 3, 1, 1)

    x = (batch.float() + 1.0) * 0.5
    x = (x * brightness).clamp(0.0, 1.0)
    mean = (x * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0.0, 1.0)
    gray = (x * luma).sum(dim=1, keepdim=True)
    x = ((x - gray) * saturation + gray).clamp(0.0, 1.0)
    # hue: rotate the chroma (I, Q) of YIQ
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    i = 0.596 * r - 0.274 * g - 0.322 * b
    q = 0.211 * r - 0.523 * g + 0.312 * b
    cos, sin = torch.cos(angle), torch.sin(angle)
    i, q = i * cos - q * sin, i * sin + q * cos
    x = torch.cat(
        [
            y + 0.956 * i + 0.621 * q,
            y - 0.272 * i - 0.647 * q,
            y - 1.106 * i + 1.703 * q,
        ],
        dim=1,
    )
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).to(batch.dtype)


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of the fraction predicted right
    (``hemaflow.classify.metrics``)."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if len(labels) == 0:
        return float("nan")
    n_classes = int(max(labels.max(), predicted.max())) + 1
    return summary_metrics(labels, predicted, n_classes)["balanced_accuracy"]


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


def _symmetry(batch: torch.Tensor, symmetry: int) -> torch.Tensor:
    """NCHW batch under one of the 8 symmetries of the square (as ``random_symmetries``)."""
    out = torch.rot90(batch, symmetry % 4, dims=(2, 3))
    return torch.flip(out, dims=(3,)) if symmetry >= 4 else out


@torch.no_grad()
def _probabilities(
    net: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int, tta: bool, amp: bool
) -> torch.Tensor:
    """Softmax of ``net`` on uint8 NHWC images (an array, or a tensor on any device),
    resized to ``net.image_size``, in eval mode (the mode is restored); on the CPU."""
    device = next(net.parameters()).device
    size = net.image_size
    out = torch.empty((len(images), net.n_outputs), dtype=torch.float32)
    was_training = net.training
    net.eval()
    try:
        for begin in range(0, len(images), batch_size):
            chunk = images[begin : begin + batch_size]
            if isinstance(chunk, np.ndarray):
                chunk = uint8_tensor(chunk)
            chunk = chunk.to(device)
            chunk = resize_float(to_model_range(chunk), (size, size))
            total = torch.zeros((len(chunk), net.n_outputs), device=device)
            for symmetry in range(8) if tta else (0,):
                with _autocast(device, amp):
                    logits = net(_symmetry(chunk, symmetry))
                total += torch.softmax(logits.float(), dim=1)
            out[begin : begin + len(chunk)] = (total / (8 if tta else 1)).cpu()
    finally:
        net.train(was_training)
    return out


# ------------------------------------------------------------------------------ the model


class ClassifierModel:
    """The network, its optimizer, schedule and gradient scaler, the validation record
    (best score and weights, evaluations since the best) and one training iteration."""

    def __init__(
        self,
        options: ClassifierOptions,
        n_classes: int,
        device: torch.device,
        rng: np.random.Generator,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        val_images: np.ndarray,
        val_labels: np.ndarray,
    ):
        self.options = options
        self.device = device
        self.rng = rng
        self.use_amp = options.amp and device.type == "cuda"
        self.net = build_network(options, n_classes).to(device)
        decay, no_decay = [], []
        for parameter in self.net.parameters():
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
        groups = [
            {"params": decay, "weight_decay": options.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if options.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=options.lr)
        else:
            self.optimizer = torch.optim.SGD(
                groups, lr=options.lr, momentum=options.momentum, nesterov=options.momentum > 0
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            LRSchedule(
                options.schedule,
                options.iterations,
                options.warmup_iterations,
                options.step_every,
                options.step_gamma,
            ),
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.sampler = ImageSampler(train_images, device)
        self.train_labels = np.asarray(train_labels, np.int64)
        self.balanced = BalancedRows(self.train_labels, n_classes)
        self.val_images = uint8_tensor(val_images).to(device)
        self.val_labels = np.asarray(val_labels, np.int64)
        self.step = 0
        self.best_score = -1.0
        self.best_step = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.evals_since_best = 0
        self.history: list[list[float]] = []  # [iteration, balanced accuracy]

    def modules(self) -> list[nn.Module]:
        return [self.net]

    def should_stop(self) -> bool:
        patience = self.options.early_stopping_patience
        return patience > 0 and self.evals_since_best >= patience

    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        if o.class_balanced:
            return self.balanced.draw(self.rng, o.batch_size)
        rows = self.rng.integers(0, len(self.train_labels), size=o.batch_size)
        return rows, self.train_labels[rows]

    def evaluate(self) -> float:
        """Balanced accuracy on the validation images; updates the best weights."""
        probabilities = _probabilities(self.net, self.val_images, 256, False, self.use_amp)
        score = balanced_accuracy(probabilities.argmax(dim=1).numpy(), self.val_labels)
        self.history.append([self.step, score])
        if score > self.best_score:
            self.best_score, self.best_step, self.evals_since_best = score, self.step, 0
            self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        else:
            self.evals_since_best += 1
        log.info(
            "classifier: iteration %d  val balanced accuracy %.4f  (best %.4f at %d)",
            self.step,
            score,
            self.best_score,
            self.best_step,
        )
        return score

    def train_iteration(self) -> dict[str, Any]:
        o = self.options
        rows, classes = self._draw()
        images = self.sampler.sample_rows(self.rng, rows)
        if o.color_jitter:
            images = color_jitter(images, self.rng)
        if o.stain_augment > 0:
            images = stain_augment(images, self.rng, o.stain_augment)
        targets = torch.from_numpy(np.asarray(classes, np.int64)).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(self.device, self.use_amp):
            logits = self.net(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=o.label_smoothing)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.step += 1
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
        score = float("nan")
        if self.step % o.eval_every == 0 or self.step == o.iterations:
            score = self.evaluate()
        return {
            "loss": loss.detach(),
            "accuracy": accuracy,
            "val_balanced_accuracy": score,
            "best_val_balanced_accuracy": self.best_score if self.history else float("nan"),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "step": self.step,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_state": self.best_state,
            "evals_since_best": self.evals_since_best,
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_score = float(state["best_score"])
        self.best_step = int(state["best_step"])
        best = state["best_state"]
        self.best_state = None if best is None else {k: v.to(self.device) for k, v in best.items()}
        self.evals_since_best = int(state["evals_since_best"])
        self.history = [list(row) for row in state["history"]]


# ---------------------------------------------------------------------------- training


def _seed_everything(seed: int) -> np.random.Generator:
    """Seed before building: a fresh run's initial weights come from this state."""
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed)


def _check_validation(
    images: np.ndarray, labels: np.ndarray, n_classes: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images with as many integer labels in [0, n_classes); classes may be
    missing (the balanced accuracy averages over those present), not all images."""
    images = check_images(images, f"{where}: val_images")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: val_labels must be a 1-D integer array indexing class_names, "
            f"got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(f"{where}: {len(labels)} val_labels for {len(images)} val_images")
    if not len(labels):
        raise ValueError(f"{where}: val_images is empty (early stopping needs them)")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(
            f"{where}: val_labels out of range: they index class_names (0..{n_classes - 1}), "
            f"got values from {labels.min()} to {labels.max()}"
        )
    return images, labels.astype(np.int64)


def train_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    class_names: Sequence[str],
    options: ClassifierOptions,
    state_dir: str | Path,
    out_model: str | Path,
    log_csv: str | Path | None = None,
    device: str | torch.device | None = None,
    max_iterations_this_run: int | None = None,
) -> dict[str, Any]:
    """Train the classifier of ``options`` on uint8 NHWC images (labels index
    ``class_names``; every class needs training images; resized to
    ``options.image_size`` if needed), choosing the weights by balanced accuracy on the
    validation images and stopping early (see the module docstring).

    Checkpoints go to ``state_dir`` every ``options.checkpoint_every`` iterations (and at
    the end); a run finding one there resumes from it, and one written with other
    options, classes or images is refused. The run stops after
    ``max_iterations_this_run`` iterations if given (as if killed: no model written);
    otherwise it writes ``out_model`` (options, class_names, the best weights, best
    validation balanced accuracy and its iteration, iterations, evaluation history)
    atomically. Returns ``run_training``'s summary plus best_val_balanced_accuracy,
    best_iteration, evaluations ([iteration, score] rows) and amp."""
    where = "train_classifier"
    if not isinstance(options, ClassifierOptions):
        raise ValueError(f"{where}: options must be ClassifierOptions, got {type(options)}")
    images, labels, names = check_labelled(train_images, train_labels, class_names, where)
    val_images, val_labels = _check_validation(val_images, val_labels, len(names), where)
    if max_iterations_this_run is not None and (
        isinstance(max_iterations_this_run, bool)
        or not isinstance(max_iterations_this_run, int)
        or max_iterations_this_run < 0
    ):
        raise ValueError(
            f"{where}: max_iterations_this_run must be None or an int >= 0, "
            f"got {max_iterations_this_run!r}"
        )
    state_dir, out_model = Path(state_dir), Path(out_model)
    torch_device = resolve_device(device)
    log_device(torch_device, "classifier training")
    images = resize_images(images, options.image_size)
    val_images = resize_images(val_images, options.image_size)

    rng = _seed_everything(options.seed)
    model = ClassifierModel(
        options, len(names), torch_device, rng, images, labels, val_images, val_labels
    )
    summary = run_training(
        model,
        kind=FILE_KIND,
        options={**asdict(options), "class_names": names},
        total_iterations=options.iterations,
        data_fingerprint=fingerprint(images, labels, val_images, val_labels),
        rng=rng,
        state_dir=state_dir,
        checkpoint_every=options.checkpoint_every,
        log_every=options.log_every,
        log_csv=log_csv,
        loss_columns=LOSS_COLUMNS,
        device=torch_device,
        max_iterations_this_run=max_iterations_this_run,
        lr_of=lambda: model.optimizer.param_groups[0]["lr"],
        resumable_changes=_RESUMABLE_CHANGES,
    )
    summary.update(
        amp=model.use_amp,
        best_val_balanced_accuracy=model.best_score if model.history else None,
        best_iteration=model.best_step if model.history else None,
        evaluations=copy.deepcopy(model.history),
    )
    if not summary["completed"]:
        return summary
    if model.best_state is None:  # cannot happen: the last iteration evaluates
        raise RuntimeError(f"{where}: training completed without a validation evaluation")
    atomic_torch_save(
        {
            "kind": FILE_KIND,
            "options": asdict(options),
            "class_names": names,
            "state_dict": {k: v.cpu() for k, v in model.best_state.items()},
            "best_val_balanced_accuracy": model.best_score,
            "best_iteration": model.best_step,
            "iterations": summary["iterations"],
            "stopped_early": summary["stopped_early"],
            "evaluations": copy.deepcopy(model.history),
        },
        out_model,
    )
    log.info(
        "wrote %s after %d iterations (best val balanced accuracy %.4f at %d)",
        out_model,
        summary["iterations"],
        model.best_score,
        model.best_step,
    )
    return summary


# ------------------------------------------------------------------------------ inference


def load_classifier(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[nn.Module, list[str], ClassifierOptions]:
    """The classifier (best weights, eval mode, on ``device``; default CUDA if available),
    its class names and options, from a file written by ``train_classifier``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier model file {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("kind") != FILE_KIND:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a {FILE_KIND} model file (kind {found!r})")
    try:
        options = ClassifierOptions.from_dict(payload["options"])
        names = list(payload["class_names"])
        net = build_network(options, len(names))
        net.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a usable {FILE_KIND} model file ({exc})") from exc
    return net.to(resolve_device(device)).eval(), names, options


def predict_proba(
    net: nn.Module, images_uint8: np.ndarray, batch_size: int = 256, tta: bool = False
) -> np.ndarray:
    """Class probabilities (float32, shape (N, n_classes), rows summing to 1) of uint8
    NHWC images, resized to the network's ``image_size``; eval mode, no gradients,
    float32, on the net's device. ``tta``: the mean of the probabilities over the 8
    symmetries of the square."""
    where = "predict_proba"
    images = check_images(images_uint8, f"{where}: images_uint8")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(tta, bool):
        raise ValueError(f"{where}: tta must be True or False, got {tta!r}")
    if not hasattr(net, "image_size") or not hasattr(net, "n_outputs"):
        raise ValueError(f"{where}: net must be a classifier from build_classifier")
    return _probabilities(net, images, batch_size, tta, False).numpy()
