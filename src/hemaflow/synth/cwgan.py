"""C-WGAN-GP for the classes with more than 1000 images, and the real-data classifier that
gives it class feedback (REFERENCE.md, "C-WGAN-GP for classes with more than 1000
images").

Three players: one conditional generator G(z, y) over all the classes routed to it, a
WGAN-GP critic D, and a classifier trained beforehand on real images only
(``train_real_classifier``) and frozen while the GAN trains. The generator minimizes
``-D(G(z, y)) + lambda_class * CE(classifier(G(z, y)), y)``: the critic judges realism,
the classifier whether the image shows the class asked for. As in the paper the critic is
unconditional by default; ``critic_conditioning="projection"`` makes it a projection
critic (Miyato & Koyama 2018), which also penalizes a fake that is realistic but of the
wrong class's distribution (the classifier only asks that the class be recognisable).

Both trainers run on ``hemaflow.train.loop.run_training`` (atomic checkpoints with every
RNG state, resume bit for bit on CPU, the loss CSV). Batches of real images are
class-balanced: each draws its classes uniformly, then images within each class, under a
random symmetry of the square. The generator keeps an exponential moving average of its
weights (``ema_decay``, with stylegan2-ada's ramp-up: the half-life is at most
``ema_rampup`` times the iterations so far), and the model file holds that average."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.models.cwgan import (
    CRITIC_CONDITIONINGS,
    CWGANGenerator,
    ResidualClassifier,
    ResidualCritic,
)
from hemaflow.train.ema import MovingAverage
from hemaflow.train.loop import (
    ImageSampler,
    atomic_torch_save,
    check_images,
    fingerprint,
    from_model_range,
    log_device,
    resize_float,
    resize_images,
    resolve_device,
    run_training,
    set_requires_grad,
    to_model_range,
    uint8_tensor,
)
from hemaflow.train.losses import gradient_penalty, wgan_generator_loss, wgan_gp_critic_loss
from hemaflow.train.options import TrainingOptions

log = logging.getLogger(__name__)

CWGAN_LOSS_COLUMNS = (
    "iteration",
    "loss_G",
    "loss_G_adv",
    "loss_G_class",
    "loss_D",
    "gp",
    "wasserstein",
    "class_acc_fake",
    "lr",
    "seconds",
)
CLASSIFIER_LOSS_COLUMNS = ("iteration", "loss", "accuracy", "lr", "seconds")
# options that may change between a checkpoint and its resumption without changing the run
_RESUMABLE_CHANGES = frozenset({"checkpoint_every", "log_every", "amp"})
CWGAN_FILE_KIND = "cwgan"
CLASSIFIER_FILE_KIND = "real_classifier"


def _check_image_size(value: int) -> str | None:
    # the critic's stride-2 stem must leave at least its final 8x8 map
    if value < 16 or value & (value - 1):
        return "must be a power of two >= 16"
    return None


# ------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class CWGANOptions(TrainingOptions):
    """Everything that defines a C-WGAN-GP run. Defaults are the paper's values at the
    ``paper`` preset's scale (64 px): WGAN-GP with lambda 10, 5 critic steps per generator
    step, Adam 1e-4 with betas (0, 0.9), generator blocks (2, 4), critic blocks (2, 4, 4),
    width 64. ``iterations`` counts generator steps. ``amp`` (float16 autocast +
    GradScaler) is used only on CUDA; the gradient penalty stays in float32."""

    image_size: int = 64
    z_dim: int = 128
    embed_dim: int = 32
    width: int = 64
    g_blocks_low: int = 2
    g_blocks_high: int = 4
    d_blocks_1: int = 2
    d_blocks_2: int = 4
    d_blocks_3: int = 4
    critic_conditioning: str = "none"
    lambda_gp: float = 10.0
    n_critic: int = 5
    lambda_class: float = 1.0
    lr: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.9
    ema_decay: float = 0.999
    ema_rampup: float = 0.05
    batch_size: int = 64
    iterations: int = 100_000
    checkpoint_every: int = 2_500
    log_every: int = 100
    seed: int = 0
    amp: bool = True

    KIND: ClassVar[str] = "cwgan"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"critic_conditioning": CRITIC_CONDITIONINGS}
    POSITIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "z_dim",
            "embed_dim",
            "width",
            "n_critic",
            "lr",
            "batch_size",
            "iterations",
            "checkpoint_every",
            "log_every",
        }
    )
    NON_NEGATIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "g_blocks_low",
            "g_blocks_high",
            "d_blocks_1",
            "d_blocks_2",
            "d_blocks_3",
            "lambda_gp",
            "lambda_class",
        }
    )
    FRACTIONS: ClassVar[frozenset[str]] = frozenset({"beta1", "beta2", "ema_decay", "ema_rampup"})

    def check_field(self, name: str, value: Any) -> str | None:
        if name == "image_size":
            return _check_image_size(value)
        return super().check_field(name, value)

    @property
    def generator_blocks(self) -> tuple[int, int]:
        return (self.g_blocks_low, self.g_blocks_high)

    @property
    def critic_blocks(self) -> tuple[int, int, int]:
        return (self.d_blocks_1, self.d_blocks_2, self.d_blocks_3)


CWGAN_PRESETS: dict[str, CWGANOptions] = {
    # 64 px, narrow and shallow (width 16, blocks (1, 2) / (1, 2, 2)), batch 16, 5 critic
    # steps: 0.7-2 s per generator step on a 2-core CPU (more while another job runs;
    # width 32 with the paper's blocks and batch 32 took 14-26 s), so 300 steps take
    # 4-10 minutes. Enough to run the pipeline end to end and see the losses move, not
    # for usable images.
    "cpu": CWGANOptions(
        image_size=64,
        width=16,
        z_dim=64,
        embed_dim=16,
        g_blocks_low=1,
        g_blocks_high=2,
        d_blocks_1=1,
        d_blocks_2=2,
        d_blocks_3=2,
        batch_size=16,
        iterations=300,
        checkpoint_every=50,
        log_every=10,
    ),
    # the paper's networks at 64 px: width 64, blocks (2, 4) / (2, 4, 4), 100k generator
    # steps of 64 images; GPU
    "paper": CWGANOptions(
        image_size=64,
        width=64,
        batch_size=64,
        iterations=100_000,
        checkpoint_every=2_500,
        log_every=100,
    ),
}
CWGANOptions.PRESETS = CWGAN_PRESETS


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
            return _check_image_size(value)
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


# ---------------------------------------------------------------------------- networks


def build_generator(options: CWGANOptions, n_classes: int) -> CWGANGenerator:
    return CWGANGenerator(
        n_classes,
        z_dim=options.z_dim,
        image_size=options.image_size,
        width=options.width,
        embed_dim=options.embed_dim,
        blocks=options.generator_blocks,
    )


def build_critic(options: CWGANOptions, n_classes: int) -> ResidualCritic:
    return ResidualCritic(
        1,
        image_size=options.image_size,
        width=options.width,
        blocks=options.critic_blocks,
        n_classes=n_classes if options.critic_conditioning == "projection" else 0,
    )


def build_classifier(options: RealClassifierOptions, n_classes: int) -> ResidualClassifier:
    return ResidualClassifier(
        n_classes,
        image_size=options.image_size,
        width=options.width,
        blocks=options.blocks,
        dropout=options.dropout,
    )


# ---------------------------------------------------------------------------------- data


def check_labelled(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], where: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 NHWC images, 1-D integer labels of the same length indexing ``class_names``
    (unique non-empty strings), every class with at least one image."""
    images = check_images(images, f"{where}: images")
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError(f"{where}: class_names must be a sequence of names, got {class_names!r}")
    names = list(class_names)
    if not names:
        raise ValueError(f"{where}: class_names is empty")
    bad = [name for name in names if not isinstance(name, str) or not name]
    if bad:
        raise ValueError(f"{where}: class_names must be non-empty strings, got {bad!r}")
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"{where}: class_names has duplicates: {twice}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{where}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(f"{where}: {len(labels)} labels for {len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(
            f"{where}: labels out of range: they index class_names (0..{len(names) - 1}), "
            f"got values from {labels.min()} to {labels.max()}"
        )
    counts = np.bincount(labels.astype(np.int64), minlength=len(names))
    empty = [names[index] for index in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"{where}: empty class: no images labelled {', '.join(empty)}")
    return images, labels.astype(np.int64), names


class BalancedRows:
    """Class-balanced draws of row indices: classes uniformly, then rows within each
    class uniformly (with replacement), from the caller's numpy Generator."""

    def __init__(self, labels: np.ndarray, n_classes: int):
        labels = np.asarray(labels, dtype=np.int64)
        self.n_classes = n_classes
        self.order = np.argsort(labels, kind="stable")
        self.counts = np.bincount(labels, minlength=n_classes).astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, classes) of ``n`` draws."""
        classes = rng.integers(0, self.n_classes, size=n)
        within = rng.integers(0, self.counts[classes])
        return self.order[self.offsets[classes] + within], classes


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


def _step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def _model_input(batch_uint8: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] at size x size."""
    return resize_float(to_model_range(batch_uint8), (size, size))


# -------------------------------------------------------------------- real classifier


class RealClassifierModel:
    """The classifier, its optimizer and gradient scaler, and one training step."""

    def __init__(
        self,
        options: RealClassifierOptions,
        n_classes: int,
        device: torch.device,
        rng: np.random.Generator,
    ):
        self.options = options
        self.device = device
        self.rng = rng
        self.sampler: ImageSampler | None = None  # set before training
        self.balanced: BalancedRows | None = None
        self.use_amp = options.amp and device.type == "cuda"
        self.net = build_classifier(options, n_classes).to(device)
        self.optimizer = torch.optim.Adam(
            self.net.parameters(),
            lr=options.lr,
            betas=(options.beta1, options.beta2),
            weight_decay=options.weight_decay,
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None

    def modules(self) -> list[nn.Module]:
        return [self.net]

    def train_iteration(self) -> dict[str, torch.Tensor]:
        o = self.options
        rows, classes = self.balanced.draw(self.rng, o.batch_size)
        images = self.sampler.sample_rows(self.rng, rows)
        targets = torch.from_numpy(classes).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(self.device, self.use_amp):
            logits = self.net(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=o.label_smoothing)
        _step(loss, self.optimizer, self.scaler)
        accuracy = (logits.detach().argmax(dim=1) == targets).float().mean()
        return {"loss": loss.detach(), "accuracy": accuracy}

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _seed_everything(seed: int) -> np.random.Generator:
    """Seed before building: a fresh run's initial weights come from this state."""
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed)


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
    ``run_training``'s summary."""
    where = "train_real_classifier"
    if not isinstance(options, RealClassifierOptions):
        raise ValueError(f"{where}: options must be RealClassifierOptions, got {type(options)}")
    images, labels, names = check_labelled(images, labels, class_names, where)
    state_dir, out_model = Path(state_dir), Path(out_model)
    torch_device = resolve_device(device)
    log_device(torch_device, "real classifier training")
    images = resize_images(images, options.image_size)

    rng = _seed_everything(options.seed)
    model = RealClassifierModel(options, len(names), torch_device, rng)
    model.sampler = ImageSampler(images, torch_device)
    model.balanced = BalancedRows(labels, len(names))
    summary = run_training(
        model,
        kind=CLASSIFIER_FILE_KIND,
        options={**asdict(options), "class_names": names},
        total_iterations=options.iterations,
        data_fingerprint=fingerprint(images, labels),
        rng=rng,
        state_dir=state_dir,
        checkpoint_every=options.checkpoint_every,
        log_every=options.log_every,
        log_csv=log_csv,
        loss_columns=CLASSIFIER_LOSS_COLUMNS,
        device=torch_device,
        max_iterations_this_run=max_iterations_this_run,
        lr_of=lambda: model.optimizer.param_groups[0]["lr"],
        resumable_changes=_RESUMABLE_CHANGES,
    )
    summary["amp"] = model.use_amp
    if not summary["completed"]:
        return summary
    atomic_torch_save(
        {
            "kind": CLASSIFIER_FILE_KIND,
            "options": asdict(options),
            "class_names": names,
            "state_dict": model.net.state_dict(),
            "iterations": summary["iterations"],
        },
        out_model,
    )
    log.info("wrote %s after %d iterations", out_model, summary["iterations"])
    return summary


def _load_payload(path: str | Path, kind: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} model file {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a {kind} model file (kind {found!r})")
    return payload


def load_real_classifier(
    path: str | Path, device: str | None = None
) -> tuple[ResidualClassifier, list[str], RealClassifierOptions]:
    """The classifier (eval mode, on ``device``; default CUDA if available), its class
    names and options, from a file written by ``train_real_classifier``."""
    payload = _load_payload(path, CLASSIFIER_FILE_KIND)
    try:
        options = RealClassifierOptions.from_dict(payload["options"])
        names = list(payload["class_names"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a real classifier model file ({exc})") from exc
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


# ------------------------------------------------------------------------------- the GAN


class CWGANModel:
    """G, its moving average G_ema, the critic D, the frozen classifier, optimizers and
    gradient scalers, and one training iteration (``n_critic`` critic steps, then one
    generator step)."""

    def __init__(
        self,
        options: CWGANOptions,
        n_classes: int,
        classifier: nn.Module,
        class_map: torch.Tensor,
        device: torch.device,
        rng: np.random.Generator,
    ):
        self.options = options
        self.n_classes = n_classes
        self.device = device
        self.rng = rng
        self.sampler: ImageSampler | None = None  # set before training
        self.balanced: BalancedRows | None = None
        self.use_amp = options.amp and device.type == "cuda"
        self.G = build_generator(options, n_classes).to(device)
        self.D = build_critic(options, n_classes).to(device)
        self.ema = MovingAverage(self.G, options.ema_decay, options.ema_rampup)
        self.G_ema = self.ema.average
        self.classifier = classifier.to(device).eval()
        set_requires_grad([self.classifier], False)
        self.class_map = class_map.to(device)
        betas = (options.beta1, options.beta2)
        self.optimizer_G = torch.optim.Adam(self.G.parameters(), lr=options.lr, betas=betas)
        self.optimizer_D = torch.optim.Adam(self.D.parameters(), lr=options.lr, betas=betas)
        self.scaler_G = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.scaler_D = torch.amp.GradScaler("cuda") if self.use_amp else None

    def modules(self) -> list[nn.Module]:
        # the classifier stays in eval mode (no dropout), G_ema is never run in training
        return [self.G, self.D]

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.options.z_dim, device=self.device)

    def train_iteration(self) -> dict[str, torch.Tensor]:
        o = self.options
        amp = _autocast(self.device, self.use_amp)
        totals = {"loss_D": 0.0, "gp": 0.0, "wasserstein": 0.0}
        for _ in range(o.n_critic):
            rows, classes = self.balanced.draw(self.rng, o.batch_size)
            real = self.sampler.sample_rows(self.rng, rows)
            y = torch.from_numpy(classes).to(self.device)
            with torch.no_grad(), amp:
                fake = self.G(self._z(o.batch_size), y)
            fake = fake.float()
            self.optimizer_D.zero_grad(set_to_none=True)
            with amp:
                loss_D = wgan_gp_critic_loss(self.D(real, y), self.D(fake, y))
            if o.lambda_gp > 0:
                # real and fake of a pair share their class, so a projection critic
                # sees one label along the line between them
                gp = gradient_penalty(lambda x, y=y: self.D(x, y), real, fake, o.lambda_gp)
            else:
                gp = torch.zeros((), device=self.device)
            _step(loss_D + gp, self.optimizer_D, self.scaler_D)
            totals["loss_D"] = totals["loss_D"] + loss_D.detach() / o.n_critic
            totals["gp"] = totals["gp"] + gp.detach() / o.n_critic
            totals["wasserstein"] = totals["wasserstein"] - loss_D.detach() / o.n_critic

        y = torch.from_numpy(self.rng.integers(0, self.n_classes, size=o.batch_size))
        y = y.to(self.device)
        set_requires_grad([self.D], False)
        self.optimizer_G.zero_grad(set_to_none=True)
        with amp:
            fake = self.G(self._z(o.batch_size), y)
            loss_adv = wgan_generator_loss(self.D(fake, y))
            size = self.classifier.image_size
            logits = self.classifier(resize_float(fake, (size, size))).float()
        target = self.class_map[y]
        loss_class = F.cross_entropy(logits, target)
        loss_G = loss_adv + o.lambda_class * loss_class
        _step(loss_G, self.optimizer_G, self.scaler_G)
        set_requires_grad([self.D], True)
        self.ema.update()
        accuracy = (logits.detach().argmax(dim=1) == target).float().mean()
        return {
            "loss_G": loss_G.detach(),
            "loss_G_adv": loss_adv.detach(),
            "loss_G_class": loss_class.detach(),
            **totals,
            "class_acc_fake": accuracy,
        }

    def state_dict(self) -> dict[str, Any]:
        state = {
            name: getattr(self, name).state_dict()
            for name in ("G", "G_ema", "D", "optimizer_G", "optimizer_D")
        }
        state["scaler_G"] = self.scaler_G.state_dict() if self.scaler_G else None
        state["scaler_D"] = self.scaler_D.state_dict() if self.scaler_D else None
        state["ema_steps"] = self.ema.steps
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("G", "G_ema", "D", "optimizer_G", "optimizer_D"):
            getattr(self, name).load_state_dict(state[name])
        for name in ("scaler_G", "scaler_D"):
            scaler = getattr(self, name)
            if scaler is not None and state.get(name):
                scaler.load_state_dict(state[name])
        self.ema.steps = int(state["ema_steps"])


def _classifier_fingerprint(net: nn.Module) -> str:
    return fingerprint(*[t.detach().cpu().numpy() for t in net.state_dict().values()])


def train_cwgan(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    classifier_path: str | Path,
    options: CWGANOptions,
    state_dir: str | Path,
    out_model: str | Path,
    log_csv: str | Path | None = None,
    device: str | None = None,
    max_iterations_this_run: int | None = None,
) -> dict[str, Any]:
    """Train ONE conditional C-WGAN-GP over the classes routed to it (``class_names``;
    ``labels`` index them) on uint8 NHWC real images (resized to ``options.image_size``
    if needed), with the frozen real-data classifier at ``classifier_path`` (from
    ``train_real_classifier``; its classes may be a superset, matched by name).

    Checkpoints go to ``state_dir`` every ``options.checkpoint_every`` generator steps
    (and at the end); a run finding one there resumes from it, and one written with other
    options, classes, classifier or images is refused. The run stops after
    ``max_iterations_this_run`` steps if given (as if killed: no model written);
    otherwise it writes ``out_model`` (options, class_names, G_ema, iterations)
    atomically. Returns ``run_training``'s summary."""
    where = "train_cwgan"
    if not isinstance(options, CWGANOptions):
        raise ValueError(f"{where}: options must be CWGANOptions, got {type(options)}")
    images, labels, names = check_labelled(images, labels, class_names, where)
    state_dir, out_model = Path(state_dir), Path(out_model)
    classifier_path = Path(classifier_path)
    if not classifier_path.is_file():
        raise FileNotFoundError(f"{where}: classifier_path {classifier_path} does not exist")
    torch_device = resolve_device(device)
    log_device(torch_device, "cwgan training")
    # before seeding: building the classifier draws (discarded) initial weights
    classifier, classifier_names, _ = load_real_classifier(classifier_path, torch_device)
    missing = [name for name in names if name not in classifier_names]
    if missing:
        raise ValueError(
            f"{where}: class {', '.join(repr(m) for m in missing)} is not among the classes "
            f"of the classifier {classifier_path} ({', '.join(classifier_names)})"
        )
    class_map = torch.tensor([classifier_names.index(name) for name in names])
    images = resize_images(images, options.image_size)

    rng = _seed_everything(options.seed)
    model = CWGANModel(options, len(names), classifier, class_map, torch_device, rng)
    model.sampler = ImageSampler(images, torch_device)
    model.balanced = BalancedRows(labels, len(names))
    run_options = {
        **asdict(options),
        "class_names": names,
        "classifier": _classifier_fingerprint(classifier),
    }
    summary = run_training(
        model,
        kind=CWGAN_FILE_KIND,
        options=run_options,
        total_iterations=options.iterations,
        data_fingerprint=fingerprint(images, labels),
        rng=rng,
        state_dir=state_dir,
        checkpoint_every=options.checkpoint_every,
        log_every=options.log_every,
        log_csv=log_csv,
        loss_columns=CWGAN_LOSS_COLUMNS,
        device=torch_device,
        max_iterations_this_run=max_iterations_this_run,
        lr_of=lambda: model.optimizer_G.param_groups[0]["lr"],
        resumable_changes=_RESUMABLE_CHANGES,
    )
    summary["amp"] = model.use_amp
    if not summary["completed"]:
        return summary
    atomic_torch_save(
        {
            "kind": CWGAN_FILE_KIND,
            "options": asdict(options),
            "class_names": names,
            "G_ema": model.G_ema.state_dict(),
            "iterations": summary["iterations"],
        },
        out_model,
    )
    log.info("wrote %s after %d iterations", out_model, summary["iterations"])
    return summary


# ------------------------------------------------------------------------------ inference


def load_cwgan(
    path: str | Path, device: str | None = None
) -> tuple[CWGANGenerator, list[str], CWGANOptions]:
    """The averaged generator (eval mode, on ``device``; default CUDA if available), its
    class names and options, from a file written by ``train_cwgan``."""
    payload = _load_payload(path, CWGAN_FILE_KIND)
    try:
        options = CWGANOptions.from_dict(payload["options"])
        names = list(payload["class_names"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a cwgan model file ({exc})") from exc
    generator = build_generator(options, len(names))
    generator.load_state_dict(payload["G_ema"])
    return generator.to(resolve_device(device)).eval(), names, options


@torch.no_grad()
def generate_cwgan(
    generator: CWGANGenerator, class_index: int, n: int, seed: int, batch_size: int = 256
) -> np.ndarray:
    """``n`` uint8 NHWC images of class ``class_index`` (an index into the model's
    class_names), in eval mode. The latent vectors come from a local CPU
    ``torch.Generator`` seeded with ``seed``, so the images depend on the seed only (not
    on the global RNG, the batch size or, up to float rounding, the device)."""
    where = "generate_cwgan"
    for name, value, low in (("n", n, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{where}: {name} must be an int >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"{where}: seed must be an int, got {seed!r}")
    n_classes = generator.n_classes
    if (
        isinstance(class_index, bool)
        or not isinstance(class_index, int | np.integer)
        or not 0 <= class_index < n_classes
    ):
        raise ValueError(
            f"{where}: class_index must be an int in [0, {n_classes}), got {class_index!r}"
        )
    device = next(generator.parameters()).device
    size = generator.image_size
    z = torch.randn(int(n), generator.z_dim, generator=torch.Generator().manual_seed(int(seed)))
    out = np.empty((int(n), size, size, 3), np.uint8)
    was_training = generator.training
    generator.eval()
    try:
        for begin in range(0, int(n), int(batch_size)):
            chunk = z[begin : begin + int(batch_size)].to(device)
            y = torch.full((len(chunk),), int(class_index), dtype=torch.long, device=device)
            images = generator(chunk, y).float().clamp(-1, 1)
            out[begin : begin + len(chunk)] = from_model_range(images).cpu().numpy()
    finally:
        generator.train(was_training)
    return out
