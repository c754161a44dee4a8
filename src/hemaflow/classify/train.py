"""Training the white-blood-cell classifier (REFERENCE.md, "SENet-154-GE classifier"):
SENet-154 with the gather-excite head, its SE-ResNeXt ablation, or a ResNet-18 baseline
(``hemaflow.models.classifier``), on ``hemaflow.train.loop.train_and_save``. The options
are in ``hemaflow.classify.options``, inference in ``hemaflow.classify.predict``.

Each iteration draws a batch (class-balanced by default: classes uniformly, then images
within the class), puts every image under a random symmetry of the square (cells have no
orientation) and, with ``color_jitter`` (``hemaflow.classify.augment``), random
brightness, contrast, saturation and hue;
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
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.classify.augment import (
    color_jitter,
    grayscale_augment,
    scale_augment,
    stain_augment,
)
from hemaflow.classify.metrics import summary_metrics
from hemaflow.classify.options import FILE_KIND, ClassifierOptions, build_network
from hemaflow.classify.predict import class_probabilities
from hemaflow.train.amp import MixedPrecision
from hemaflow.train.labelled import BalancedRows, check_labelled
from hemaflow.train.loop import (
    ImageSampler,
    check_images,
    fingerprint,
    resize_images,
    seed_everything,
    train_and_save,
    training_device,
    uint8_tensor,
)

log = logging.getLogger(__name__)

LOSS_COLUMNS = (
    "iteration",
    "loss",
    "accuracy",
    "val_balanced_accuracy",
    "best_val_balanced_accuracy",
    "lr",
    "seconds",
)


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


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of the fraction predicted right
    (``hemaflow.classify.metrics``)."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if len(labels) == 0:
        return float("nan")
    n_classes = int(max(labels.max(), predicted.max())) + 1
    return summary_metrics(labels, predicted, n_classes)["balanced_accuracy"]


# ------------------------------------------------------------------------------ the model


class ClassifierModel(MixedPrecision):
    """The network, its optimizer, schedule and gradient scaler, the validation record
    (best score and weights, evaluations since the best) and one training iteration."""

    SCALERS = ("scaler",)

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
        self.init_amp(device, options.amp)
        self.rng = rng
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
        probabilities = class_probabilities(self.net, self.val_images, 256, False, self.use_amp)
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
        if o.scale_augment > 0:
            images = scale_augment(images, self.rng, o.scale_augment)
        if o.grayscale_augment > 0:
            images = grayscale_augment(images, self.rng, o.grayscale_augment)
        targets = torch.from_numpy(np.asarray(classes, np.int64)).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.net(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=o.label_smoothing)
        self.optimizer_step(loss, self.optimizer, self.scaler)
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
            **self.scaler_state(),
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
        self.load_scaler_state(state)
        self.step = int(state["step"])
        self.best_score = float(state["best_score"])
        self.best_step = int(state["best_step"])
        best = state["best_state"]
        self.best_state = None if best is None else {k: v.to(self.device) for k, v in best.items()}
        self.evals_since_best = int(state["evals_since_best"])
        self.history = [list(row) for row in state["history"]]


# ---------------------------------------------------------------------------- training


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
    atomically. Returns ``train_and_save``'s summary plus best_val_balanced_accuracy,
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
    torch_device = training_device(device, "classifier training")
    images = resize_images(images, options.image_size)
    val_images = resize_images(val_images, options.image_size)
    rng = seed_everything(options.seed)
    model = ClassifierModel(
        options, len(names), torch_device, rng, images, labels, val_images, val_labels
    )

    def model_file(summary: Mapping[str, Any]) -> dict[str, Any]:
        if model.best_state is None:  # cannot happen: the last iteration evaluates
            raise RuntimeError(f"{where}: training completed without a validation evaluation")
        return {
            "kind": FILE_KIND,
            "options": asdict(options),
            "class_names": names,
            "state_dict": {k: v.cpu() for k, v in model.best_state.items()},
            "best_val_balanced_accuracy": model.best_score,
            "best_iteration": model.best_step,
            "iterations": summary["iterations"],
            "stopped_early": summary["stopped_early"],
            "evaluations": copy.deepcopy(model.history),
        }

    return train_and_save(
        model,
        kind=FILE_KIND,
        options=options,
        run_options={**asdict(options), "class_names": names},
        total_iterations=options.iterations,
        data_fingerprint=fingerprint(images, labels, val_images, val_labels),
        rng=rng,
        device=torch_device,
        state_dir=state_dir,
        out_model=out_model,
        log_csv=log_csv,
        loss_columns=LOSS_COLUMNS,
        lr_of=lambda: model.optimizer.param_groups[0]["lr"],
        max_iterations_this_run=max_iterations_this_run,
        summary_extra=lambda: {
            "best_val_balanced_accuracy": model.best_score if model.history else None,
            "best_iteration": model.best_step if model.history else None,
            "evaluations": copy.deepcopy(model.history),
        },
        model_file=model_file,
    )
