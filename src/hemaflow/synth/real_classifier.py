"""The real-data classifier that gives the C-WGAN-GP its class feedback (REFERENCE.md,
"C-WGAN-GP for classes with more than 1000 images"): the critic's residual body with one
logit per class, trained on real images only with class-balanced batches, then frozen
while the GAN trains (``hemaflow.synth.cwgan``). Runs on
``hemaflow.train.loop.train_and_save`` like every trainer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.models.cwgan import ResidualClassifier
from hemaflow.train.amp import MixedPrecision
from hemaflow.train.labelled import BalancedRows, check_labelled
from hemaflow.train.loop import (
    ImageSampler,
    check_images,
    fingerprint,
    resize_float,
    resize_images,
    resolve_device,
    seed_everything,
    to_model_range,
    train_and_save,
    training_device,
    uint8_tensor,
)
from hemaflow.train.model_file import read_model_file
from hemaflow.train.options import TrainingOptions

CLASSIFIER_LOSS_COLUMNS = ("iteration", "loss", "accuracy", "lr", "seconds")
CLASSIFIER_FILE_KIND = "real_classifier"


def check_image_size(value: int) -> str | None:
    # the critic's stride-2 stem must leave at least its final 8x8 map
    if value < 16 or value & (value - 1):
        return "must be a power of two >= 16"
    return None


@dataclass(frozen=True)
class RealClassifierOptions(TrainingOptions):
    """The real-data classifier that gives the C-WGAN-GP its class feedback: the critic's
    residual body with one logit per class, dropout before the last layer, cross-entropy
    with label smoothing, Adam (``lr``, L2 ``weight_decay``), class-balanced batches."""

    image_size: int = 64
    width: int = 64
    blocks_1: int = 2
    blocks_2: int = 4
    blocks_3: int = 4
    dropout: float = 0.2
    label_smoothing: float = 0.1
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1e-4
    batch_size: int = 64
    iterations: int = 20_000
    checkpoint_every: int = 1_000
    log_every: int = 100
    seed: int = 0
    amp: bool = True

    KIND: ClassVar[str] = "real_classifier"
    POSITIVE: ClassVar[frozenset[str]] = frozenset(
        {"width", "lr", "batch_size", "iterations", "checkpoint_every", "log_every"}
    )
    NON_NEGATIVE: ClassVar[frozenset[str]] = frozenset(
        {"blocks_1", "blocks_2", "blocks_3", "weight_decay"}
    )
    FRACTIONS: ClassVar[frozenset[str]] = frozenset(
        {"dropout", "label_smoothing", "beta1", "beta2"}
    )

    def check_field(self, name: str, value: Any) -> str | None:
        if name == "image_size":
            return check_image_size(value)
        return super().check_field(name, value)

    @property
    def blocks(self) -> tuple[int, int, int]:
        return (self.blocks_1, self.blocks_2, self.blocks_3)


CLASSIFIER_PRESETS: dict[str, RealClassifierOptions] = {
    # 64 px, width 32, the paper's blocks, batch 32: ~0.25 s per step on a 2-core CPU,
    # so 1500 steps (48k images, ~6000 per class for 8 classes) take ~6 minutes
    "cpu": RealClassifierOptions(
        image_size=64,
        width=32,
        batch_size=32,
        iterations=1_500,
        checkpoint_every=250,
        log_every=25,
    ),
    # width 64, blocks (2, 4, 4), 20k steps of 64 images (~40 epochs of the ~33k images);
    # GPU
    "paper": RealClassifierOptions(
        image_size=64,
        width=64,
        batch_size=64,
        iterations=20_000,
        checkpoint_every=1_000,
        log_every=100,
    ),
}
RealClassifierOptions.PRESETS = CLASSIFIER_PRESETS


def build_classifier(options: RealClassifierOptions, n_classes: int) -> ResidualClassifier:
    return ResidualClassifier(
        n_classes,
        image_size=options.image_size,
        width=options.width,
        blocks=options.blocks,
        dropout=options.dropout,
    )


def _model_input(batch_uint8: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] at size x size."""
    return resize_float(to_model_range(batch_uint8), (size, size))


class RealClassifierModel(MixedPrecision):
    """The classifier, its optimizer and gradient scaler, and one training step."""

    SCALERS = ("scaler",)

    def __init__(
        self,
        options: RealClassifierOptions,
        n_classes: int,
        device: torch.device,
        rng: np.random.Generator,
    ):
        self.options = options
        self.init_amp(device, options.amp)
        self.rng = rng
        self.sampler: ImageSampler | None = None  # set before training
        self.balanced: BalancedRows | None = None
        self.net = build_classifier(options, n_classes).to(device)
        self.optimizer = torch.optim.Adam(
            self.net.parameters(),
            lr=options.lr,
            betas=(options.beta1, options.beta2),
            weight_decay=options.weight_decay,
        )

    def modules(self) -> list[nn.Module]:
        return [self.net]

    def train_iteration(self) -> dict[str, torch.Tensor]:
        o = self.options
        rows, classes = self.balanced.draw(self.rng, o.batch_size)
        images = self.sampler.sample_rows(self.rng, rows)
        targets = torch.from_numpy(classes).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.net(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=o.label_smoothing)
        self.optimizer_step(loss, self.optimizer, self.scaler)
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
        return {"loss": loss.detach(), "accuracy": accuracy}

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self.scaler_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_scaler_state(state)


def train_real_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    options: RealClassifierOptions,
    state_dir: str | Path,
    out_model: str | Path,
    log_csv: str | Path | None = None,
    device: str | None = None,
    max_iterations_this_run: int | None = None,
) -> dict[str, Any]:
    """Train the residual classifier on REAL uint8 NHWC images (``labels`` index
    ``class_names``; resized to ``options.image_size`` if needed) with class-balanced
    batches. Resumable from ``state_dir`` like ``train_cyclegan``; writes ``out_model``
    (options, class_names, state_dict, iterations) atomically once completed. Returns
    ``train_and_save``'s summary."""
    where = "train_real_classifier"
    if not isinstance(options, RealClassifierOptions):
        raise ValueError(f"{where}: options must be RealClassifierOptions, got {type(options)}")
    images, labels, names = check_labelled(images, labels, class_names, where)
    torch_device = training_device(device, "real classifier training")
    images = resize_images(images, options.image_size)
    rng = seed_everything(options.seed)
    model = RealClassifierModel(options, len(names), torch_device, rng)
    model.sampler = ImageSampler(images, torch_device)
    model.balanced = BalancedRows(labels, len(names))
    return train_and_save(
        model,
        kind=CLASSIFIER_FILE_KIND,
        options=options,
        run_options={**asdict(options), "class_names": names},
        total_iterations=options.iterations,
        data_fingerprint=fingerprint(images, labels),
        rng=rng,
        device=torch_device,
        state_dir=state_dir,
        out_model=out_model,
        log_csv=log_csv,
        loss_columns=CLASSIFIER_LOSS_COLUMNS,
        lr_of=lambda: model.optimizer.param_groups[0]["lr"],
        max_iterations_this_run=max_iterations_this_run,
        model_file=lambda summary: {
            "kind": CLASSIFIER_FILE_KIND,
            "options": asdict(options),
            "class_names": names,
            "state_dict": model.net.state_dict(),
            "iterations": summary["iterations"],
        },
    )


def load_real_classifier(
    path: str | Path, device: str | None = None, payload: Any = None
) -> tuple[ResidualClassifier, list[str], RealClassifierOptions]:
    """The classifier (eval mode, on ``device``; default CUDA if available), its class
    names and options, from a file written by ``train_real_classifier`` (``payload``: its
    contents already read, ``read_model_file``)."""
    payload, options = read_model_file(
        path,
        CLASSIFIER_FILE_KIND,
        RealClassifierOptions,
        required=("class_names", "state_dict"),
        payload=payload,
    )
    names = list(payload["class_names"])
    net = build_classifier(options, len(names))
    net.load_state_dict(payload["state_dict"])
    return net.to(resolve_device(device)).eval(), names, options


@torch.no_grad()
def classify(net: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (float32, shape (N, n_classes)) of uint8 NHWC images, resized
    to the classifier's ``image_size``; eval mode, no gradients, on the net's device."""
    images = check_images(images, "classify: images")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"classify: batch_size must be an int >= 1, got {batch_size!r}")
    device = next(net.parameters()).device
    out = np.empty((len(images), net.n_outputs), np.float32)
    was_training = net.training
    net.eval()
    try:
        for begin in range(0, len(images), batch_size):
            chunk = uint8_tensor(images[begin : begin + batch_size]).to(device)
            logits = net(_model_input(chunk, net.image_size)).float()
            out[begin : begin + batch_size] = torch.softmax(logits, dim=1).cpu().numpy()
    finally:
        net.train(was_training)
    return out
