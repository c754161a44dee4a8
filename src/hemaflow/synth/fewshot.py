"""Meta-learned few-shot GAN for the rare classes (fewer than ~100 images), resumable.

The reference study's design (FAML-style encoder GAN, Reptile outer loop):

- *Meta-training* (``train_fewshot_meta``) on tasks drawn from the large classes. Each
  outer iteration picks a class, copies the global encoder, generator and discriminator
  (the fast weights) and runs ``inner_steps`` GAN steps on that class alone: the encoder
  turns K support images into a task code, the generator makes two images per noise pair
  (z1, z2) from it, the discriminator (hinge loss, DiffAugment on real and fake alike)
  tells the class's real images from both; the generator and encoder also get a
  mode-seeking term (MSGAN) and the study's L1 encoder loss. Then the Reptile update moves
  the global weights toward the fast ones: theta <- theta + meta_lr (theta_fast - theta).
- *Adaptation* (``adapt_fewshot``): fine-tune all three networks from the meta-learned
  weights on one rare class's few images, then store the generator with the task code
  computed from those images (and batch-norm statistics re-estimated for that code), so
  that generation (``load_fewshot``, ``generate_fewshot``) needs no images.

Both stages run on ``hemaflow.train.loop.run_training``: checkpoints with every RNG state,
resumption bit for bit on the CPU, models written atomically only when completed. Inner
loop optimizers are fresh per task (Reptile), so a meta checkpoint holds just the global
weights (and the AMP gradient scalers)."""

from __future__ import annotations

import hashlib
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

from hemaflow.models.fewshot import (
    FewShotDiscriminator,
    FewShotGenerator,
    TaskEncoder,
    diff_augment,
    parse_policy,
)
from hemaflow.train.loop import (
    RESUMABLE_CHANGES,
    ImageSampler,
    atomic_torch_save,
    check_images,
    fingerprint,
    from_model_range,
    log_device,
    random_symmetries,
    resize_images,
    resolve_device,
    run_training,
    set_requires_grad,
    to_model_range,
    uint8_tensor,
)
from hemaflow.train.losses import lsgan_critic_loss, lsgan_generator_loss
from hemaflow.train.options import TrainingOptions

log = logging.getLogger(__name__)

LOSSES = ("hinge", "lsgan")
META_FORMAT = "hemaflow-fewshot-meta-1"
ADAPTED_FORMAT = "hemaflow-fewshot-adapted-1"
LOSS_COLUMNS = (
    "iteration",
    "task",
    "loss_D",
    "loss_G",
    "loss_G_adv",
    "loss_ms",
    "loss_rec",
    "d_real",
    "d_fake",
    "lr",
    "seconds",
)
# options that fix the networks' shapes: an adaptation must use the meta model's
ARCHITECTURE = ("image_size", "width", "code_dim", "noise_dim", "projection")
# options of the other stage: changing them does not change this stage's run
_META_ONLY = frozenset({"shots", "meta_iterations", "inner_steps", "inner_lr", "meta_lr"})
_ADAPT_ONLY = frozenset({"adapt_iterations", "adapt_lr", "adapt_support"})
_MS_EPS = 1e-5  # MSGAN's epsilon in 1 / (lz + eps)


# ------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class FewShotOptions(TrainingOptions):
    """Everything that defines a few-shot GAN run (meta-training and adaptation).

    Defaults are the ``paper`` preset (GPU scale): the study's 20,000 episodes, mode-seeking
    and encoder weights 1; FastGAN's Adam (2e-4, betas (0.5, 0.999)) and hinge loss;
    DiffAugment's full policy. ``meta_lr`` is the Reptile step size epsilon (in (0, 1]);
    ``inner_steps`` GAN steps per task with ``inner_lr``; ``shots`` support images per task
    (each meta-training class needs at least that many); ``lambda_rec``: the study's L1
    encoder loss between the task's images and the generated ones; ``projection``: the
    discriminator sees the task code by projection. ``amp`` (float16 autocast + gradient
    scaling) is used only on CUDA."""

    image_size: int = 128
    width: int = 32
    code_dim: int = 128
    noise_dim: int = 128
    projection: bool = True
    shots: int = 10
    batch_size: int = 8
    meta_iterations: int = 20_000
    inner_steps: int = 5
    inner_lr: float = 2e-4
    meta_lr: float = 0.1
    adapt_iterations: int = 2_000
    adapt_lr: float = 2e-4
    adapt_support: int = 100
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_ms: float = 1.0
    lambda_rec: float = 1.0
    loss: str = "hinge"
    diffaug: str = "color,translation,cutout"
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    amp: bool = True

    KIND: ClassVar[str] = "fewshot"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"loss": LOSSES}
    POSITIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "width",
            "code_dim",
            "noise_dim",
            "shots",
            "batch_size",
            "meta_iterations",
            "inner_steps",
            "inner_lr",
            "adapt_lr",
            "adapt_support",
            "checkpoint_every",
            "log_every",
        }
    )
    NON_NEGATIVE: ClassVar[frozenset[str]] = frozenset(
        {"adapt_iterations", "lambda_ms", "lambda_rec", "seed"}
    )
    FRACTIONS: ClassVar[frozenset[str]] = frozenset({"beta1", "beta2"})

    def check_field(self, name: str, value: Any) -> str | None:
        if name == "image_size" and (value < 32 or value & (value - 1)):
            return "must be a power of two >= 32"
        if name == "meta_lr" and not 0.0 < value <= 1.0:
            return "must be in (0, 1]"
        if name == "diffaug":
            try:
                parse_policy(value)
            except ValueError as exc:
                return str(exc)
        return super().check_field(name, value)


PRESETS: dict[str, FewShotOptions] = {
    # 64 px, narrow networks. Measured on a 2-core CPU shared with another job, 1 thread:
    # 0.80 s per outer iteration (4 GAN steps), so meta-training takes about 11 minutes;
    # adaptation 0.21 s (15 images) to 0.33 s (87 images) per iteration, 1-1.7 minutes per
    # class. (2 threads on the busy machine were slower: 3.4 s and 0.50-0.68 s.)
    "cpu": FewShotOptions(
        image_size=64,
        width=8,
        code_dim=64,
        noise_dim=64,
        shots=5,
        batch_size=8,
        meta_iterations=800,
        inner_steps=4,
        inner_lr=2e-4,
        meta_lr=0.25,
        adapt_iterations=300,
        adapt_lr=2e-4,
        checkpoint_every=100,
        log_every=10,
    ),
    # the study's scale: 128 px, 20,000 episodes; GPU
    "paper": FewShotOptions(
        image_size=128,
        width=32,
        code_dim=128,
        noise_dim=128,
        shots=10,
        batch_size=8,
        meta_iterations=20_000,
        inner_steps=5,
        inner_lr=2e-4,
        meta_lr=0.1,
        adapt_iterations=2_000,
        adapt_lr=2e-4,
        checkpoint_every=500,
        log_every=50,
    ),
}
FewShotOptions.PRESETS = PRESETS


# ------------------------------------------------------------------------------ networks


def build_networks(
    options: FewShotOptions, device: torch.device
) -> tuple[TaskEncoder, FewShotGenerator, FewShotDiscriminator]:
    encoder = TaskEncoder(width=options.width, z_dim=options.code_dim)
    generator = FewShotGenerator(
        image_size=options.image_size,
        width=options.width,
        code_dim=options.code_dim,
        noise_dim=options.noise_dim,
    )
    discriminator = FewShotDiscriminator(
        image_size=options.image_size,
        width=options.width,
        code_dim=options.code_dim if options.projection else 0,
    )
    return encoder.to(device), generator.to(device), discriminator.to(device)


@torch.no_grad()
def reptile_update(meta: nn.Module, fast: nn.Module, step_size: float) -> None:
    """Reptile's outer step: every floating-point parameter and buffer of ``meta`` moves
    ``step_size`` of the way to ``fast``'s: theta <- theta + step_size (theta_fast -
    theta). Integer buffers (batch-norm counters) take ``fast``'s values."""
    fast_state = fast.state_dict()
    for name, tensor in meta.state_dict(keep_vars=True).items():
        target = fast_state[name].to(tensor.device)
        if tensor.is_floating_point():
            tensor.add_(target - tensor, alpha=step_size)
        else:
            tensor.copy_(target)


# ---------------------------------------------------------------------------- the losses


def discriminator_loss(loss: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    real, fake = real.float(), fake.float()
    if loss == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if loss == "lsgan":
        return lsgan_critic_loss(real, fake)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def generator_loss(loss: str, fake: torch.Tensor) -> torch.Tensor:
    if loss == "hinge":
        return -fake.float().mean()
    if loss == "lsgan":
        return lsgan_generator_loss(fake)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def mode_seeking_loss(
    fake_1: torch.Tensor, fake_2: torch.Tensor, z_1: torch.Tensor, z_2: torch.Tensor
) -> torch.Tensor:
    """MSGAN (Mao et al. 2019): 1 / (lz + eps), lz = mean|G(c,z1) - G(c,z2)| /
    mean|z1 - z2|; minimising it maximises the images' distance per unit of noise."""
    lz = (fake_1.float() - fake_2.float()).abs().mean() / (z_1 - z_2).abs().mean()
    return 1.0 / (lz + _MS_EPS)


class _GANSteps:
    """What the meta-training and the adaptation trainers share: AMP, gradient scalers,
    and one GAN step (discriminator, then encoder + generator) on one task."""

    def __init__(self, options: FewShotOptions, device: torch.device, rng: np.random.Generator):
        self.options = options
        self.device = device
        self.rng = rng
        self.use_amp = options.amp and device.type == "cuda"
        self.scaler_G = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.scaler_D = torch.amp.GradScaler("cuda") if self.use_amp else None

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp
        )

    @staticmethod
    def _step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def _adam(self, modules: Sequence[nn.Module], lr: float) -> torch.optim.Adam:
        parameters = [p for module in modules for p in module.parameters()]
        return torch.optim.Adam(parameters, lr=lr, betas=(self.options.beta1, self.options.beta2))

    def gan_step(
        self,
        encoder: TaskEncoder,
        generator: FewShotGenerator,
        discriminator: FewShotDiscriminator,
        optimizer_G: torch.optim.Optimizer,
        optimizer_D: torch.optim.Optimizer,
        support: torch.Tensor,
        real: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """One step on one task: ``support`` (K images) -> code; two fakes per real image
        (noise z1, z2); hinge (or LSGAN) loss with DiffAugment on real and fake; then the
        generator and encoder step with the adversarial, mode-seeking and L1 terms."""
        o = self.options
        n = real.shape[0]
        z = torch.randn(2 * n, o.noise_dim, device=self.device)
        with self._autocast():
            code = encoder(support).unsqueeze(0)
            fake = generator(code, z)
        condition = code.detach()

        optimizer_D.zero_grad(set_to_none=True)
        with self._autocast():
            scores_real = discriminator(diff_augment(real, o.diffaug), condition)
            scores_fake = discriminator(diff_augment(fake.detach(), o.diffaug), condition)
            loss_D = discriminator_loss(o.loss, scores_real, scores_fake)
        self._step(loss_D, optimizer_D, self.scaler_D)

        set_requires_grad([discriminator], False)
        optimizer_G.zero_grad(set_to_none=True)
        with self._autocast():
            loss_adv = generator_loss(
                o.loss, discriminator(diff_augment(fake, o.diffaug), condition)
            )
        fake_1, fake_2 = fake[:n].float(), fake[n:].float()
        loss_ms = mode_seeking_loss(fake_1, fake_2, z[:n], z[n:])
        loss_rec = 0.5 * (F.l1_loss(fake_1, real) + F.l1_loss(fake_2, real))
        loss_G = loss_adv + o.lambda_ms * loss_ms + o.lambda_rec * loss_rec
        self._step(loss_G, optimizer_G, self.scaler_G)
        set_requires_grad([discriminator], True)
        return {
            "loss_D": loss_D.detach(),
            "loss_G": loss_G.detach(),
            "loss_G_adv": loss_adv.detach(),
            "loss_ms": loss_ms.detach(),
            "loss_rec": loss_rec.detach(),
            "d_real": scores_real.detach().float().mean(),
            "d_fake": scores_fake.detach().float().mean(),
        }

    def _scaler_state(self) -> dict[str, Any]:
        return {
            "scaler_G": self.scaler_G.state_dict() if self.scaler_G else None,
            "scaler_D": self.scaler_D.state_dict() if self.scaler_D else None,
        }

    def _load_scaler_state(self, state: Mapping[str, Any]) -> None:
        for name in ("scaler_G", "scaler_D"):
            scaler = getattr(self, name)
            if scaler is not None and state.get(name):
                scaler.load_state_dict(state[name])


# ------------------------------------------------------------------------- meta-training


class MetaTrainer(_GANSteps):
    """The global encoder, generator and discriminator, their fast copies, and one outer
    iteration: pick a task class, adapt the fast copies with ``inner_steps`` GAN steps on
    it (fresh Adam optimizers), then the Reptile update of the global weights."""

    def __init__(
        self,
        options: FewShotOptions,
        device: torch.device,
        rng: np.random.Generator,
        samplers: Sequence[ImageSampler],
    ):
        super().__init__(options, device, rng)
        self.samplers = list(samplers)
        self.encoder, self.generator, self.discriminator = build_networks(options, device)
        self.fast = build_networks(options, device)

    def modules(self) -> list[nn.Module]:
        return [self.encoder, self.generator, self.discriminator, *self.fast]

    @property
    def meta(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return self.encoder, self.generator, self.discriminator

    def train_iteration(self) -> dict[str, torch.Tensor]:
        o = self.options
        task = int(self.rng.integers(len(self.samplers)))
        sampler = self.samplers[task]
        for meta, fast in zip(self.meta, self.fast):
            fast.load_state_dict(meta.state_dict())
        encoder, generator, discriminator = self.fast
        optimizer_G = self._adam([encoder, generator], o.inner_lr)
        optimizer_D = self._adam([discriminator], o.inner_lr)
        totals: dict[str, torch.Tensor] = {}
        for _ in range(o.inner_steps):
            rows = self.rng.choice(len(sampler), size=o.shots, replace=False)
            support = sampler.sample_rows(self.rng, rows)
            real = sampler.sample(self.rng, o.batch_size)
            losses = self.gan_step(
                encoder, generator, discriminator, optimizer_G, optimizer_D, support, real
            )
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value / o.inner_steps
        for meta, fast in zip(self.meta, self.fast):
            reptile_update(meta, fast, o.meta_lr)
        return {"task": float(task), **totals}

    def state_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.state_dict(),
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            **self._scaler_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("encoder", "generator", "discriminator"):
            getattr(self, name).load_state_dict(state[name])
        self._load_scaler_state(state)


def _check_labels(
    labels: np.ndarray, n_images: int, class_names: Sequence[str], shots: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n_images:
        raise ValueError(
            f"train_fewshot_meta: labels: expected one label per image ({n_images}), "
            f"got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"train_fewshot_meta: labels: expected integer indices into class_names, "
            f"got {labels.dtype}"
        )
    if len(class_names) == 0:
        raise ValueError("train_fewshot_meta: class_names: no task classes given")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"train_fewshot_meta: class_names: duplicates in {list(class_names)}")
    outside = labels[(labels < 0) | (labels >= len(class_names))]
    if len(outside):
        raise ValueError(
            f"train_fewshot_meta: labels: {int(outside[0])} is not an index into the "
            f"{len(class_names)} class_names"
        )
    rows = [np.flatnonzero(labels == index) for index in range(len(class_names))]
    for name, class_rows in zip(class_names, rows):
        if len(class_rows) < shots:
            raise ValueError(
                f"train_fewshot_meta: class {name!r} has {len(class_rows)} images, fewer "
                f"than shots={shots}: a meta-training task needs at least 'shots' images "
                "(meta-train on the large classes only)"
            )
    return labels.astype(np.int64), rows


def train_fewshot_meta(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    options: FewShotOptions,
    state_dir: str | Path,
    out_model: str | Path,
    log_csv: str | Path | None = None,
    device: str | None = None,
    max_iterations_this_run: int | None = None,
) -> dict[str, Any]:
    """Meta-train the encoder, generator and discriminator on tasks drawn from the classes
    of ``images`` (uint8 NHWC, resized to ``options.image_size`` if needed; ``labels``
    index ``class_names``). Give the large classes only: the rare ones are adapted to
    later. Every class needs at least ``options.shots`` images.

    Checkpoints go to ``state_dir`` every ``checkpoint_every`` outer iterations (the latest
    two kept) and a run finding one resumes from it. The run stops after
    ``max_iterations_this_run`` outer iterations if given (as if killed: no model);
    otherwise it writes ``out_model`` (options, class names, the three networks)
    atomically. Returns a summary: iterations, seconds, device, final losses, ..."""
    state_dir, out_model = Path(state_dir), Path(out_model)
    if not isinstance(options, FewShotOptions):
        raise TypeError(f"train_fewshot_meta: options must be FewShotOptions, got {options!r}")
    images = check_images(images, "train_fewshot_meta: images")
    class_names = [str(name) for name in class_names]
    labels, rows = _check_labels(labels, len(images), class_names, options.shots)
    torch_device = resolve_device(device)
    log_device(torch_device, "few-shot meta-training")
    images = resize_images(images, options.image_size)
    data_fingerprint = fingerprint(images, labels, np.asarray(class_names))

    torch.manual_seed(options.seed)  # a fresh run's initial weights come from this state
    random.seed(options.seed)
    rng = np.random.default_rng(options.seed)
    samplers = [ImageSampler(images[class_rows], torch_device) for class_rows in rows]
    trainer = MetaTrainer(options, torch_device, rng, samplers)
    summary = run_training(
        trainer,
        kind="fewshot-meta",
        options=asdict(options),
        total_iterations=options.meta_iterations,
        data_fingerprint=data_fingerprint,
        rng=rng,
        state_dir=state_dir,
        checkpoint_every=options.checkpoint_every,
        log_every=options.log_every,
        log_csv=log_csv,
        loss_columns=LOSS_COLUMNS,
        device=torch_device,
        max_iterations_this_run=max_iterations_this_run,
        lr_of=lambda: options.inner_lr,
        resumable_changes=RESUMABLE_CHANGES | _ADAPT_ONLY,
    )
    summary["amp"] = trainer.use_amp
    summary["class_names"] = class_names
    if not summary["completed"]:
        return summary
    atomic_torch_save(
        {
            "format": META_FORMAT,
            "options": asdict(options),
            "class_names": class_names,
            "encoder": trainer.encoder.state_dict(),
            "generator": trainer.generator.state_dict(),
            "discriminator": trainer.discriminator.state_dict(),
            "iterations": summary["iterations"],
        },
        out_model,
    )
    log.info(
        "wrote %s after %d meta-iterations (%.1f s)",
        out_model,
        summary["iterations"],
        summary["seconds"],
    )
    return summary


# ---------------------------------------------------------------------------- adaptation


class AdaptTrainer(_GANSteps):
    """Fine-tuning of the meta-learned networks on one class: every step the encoder sees
    all of the class's images (each under a random symmetry) as the support set."""

    def __init__(
        self,
        options: FewShotOptions,
        device: torch.device,
        rng: np.random.Generator,
        sampler: ImageSampler,
        weights: Mapping[str, Any],
    ):
        super().__init__(options, device, rng)
        self.sampler = sampler
        self.encoder, self.generator, self.discriminator = build_networks(options, device)
        for name in ("encoder", "generator", "discriminator"):
            getattr(self, name).load_state_dict(weights[name])
        self.optimizer_G = self._adam([self.encoder, self.generator], options.adapt_lr)
        self.optimizer_D = self._adam([self.discriminator], options.adapt_lr)

    def modules(self) -> list[nn.Module]:
        return [self.encoder, self.generator, self.discriminator]

    def train_iteration(self) -> dict[str, torch.Tensor]:
        # the support set is the class (a few-shot class has fewer than fewshot_max
        # images); a larger class (the ablation's few-shot-for-all) is subsampled to
        # adapt_support images per step, which keeps a step's cost that of a rare class
        rows = np.arange(len(self.sampler))
        if len(rows) > self.options.adapt_support:
            rows = np.sort(self.rng.choice(rows, self.options.adapt_support, replace=False))
        support = self.sampler.sample_rows(self.rng, rows)
        real = self.sampler.sample(self.rng, self.options.batch_size)
        losses = self.gan_step(
            self.encoder,
            self.generator,
            self.discriminator,
            self.optimizer_G,
            self.optimizer_D,
            support,
            real,
        )
        return {"task": 0.0, **losses}

    def state_dict(self) -> dict[str, Any]:
        return {
            name: getattr(self, name).state_dict()
            for name in ("encoder", "generator", "discriminator", "optimizer_G", "optimizer_D")
        } | self._scaler_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("encoder", "generator", "discriminator", "optimizer_G", "optimizer_D"):
            getattr(self, name).load_state_dict(state[name])
        self._load_scaler_state(state)


@torch.no_grad()
def task_code(encoder: TaskEncoder, images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The code of a class: the encoder on the set of all its images under all 8
    symmetries of the square (a code that does not depend on orientation). (code_dim,)"""
    batch = uint8_tensor(images).to(device)
    views = [random_symmetries(batch, np.full(len(batch), symmetry)) for symmetry in range(8)]
    was_training = encoder.training
    encoder.eval()
    try:
        return encoder(to_model_range(torch.cat(views))).float()
    finally:
        encoder.train(was_training)


@torch.no_grad()
def recalibrate_batch_norm(
    generator: FewShotGenerator,
    code: torch.Tensor,
    seed: int,
    batches: int = 8,
    batch_size: int = 64,
) -> None:
    """Re-estimate the generator's batch-norm running statistics for ``code`` (precise
    BN): the cumulative mean and variance over ``batches`` batches of fresh noise, drawn
    from a local generator seeded with ``seed``. After Reptile (which averages running
    statistics across tasks) and a short adaptation the running statistics lag behind the
    weights; generation runs in eval mode and uses them."""
    norms = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
    if not norms:
        return
    device = next(generator.parameters()).device
    noise_rng = torch.Generator().manual_seed(int(seed))
    momenta = [norm.momentum for norm in norms]
    was_training = generator.training
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average
        generator.train()
        for _ in range(batches):
            noise = torch.randn(batch_size, generator.noise_dim, generator=noise_rng)
            generator(code.to(device), noise.to(device))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        generator.train(was_training)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_payload(path: str | Path, expected: str, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != expected:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        hint = (
            " (a meta-learned model: adapt it to a class with adapt_fewshot first)"
            if found == META_FORMAT
            else ""
        )
        raise ValueError(f"{what}: {path} is not a {expected} model file, found {found!r}{hint}")
    return payload


def adapt_fewshot(
    meta_model_path: str | Path,
    images: np.ndarray,
    options: FewShotOptions,
    state_dir: str | Path,
    out_model: str | Path,
    log_csv: str | Path | None = None,
    device: str | None = None,
    max_iterations_this_run: int | None = None,
) -> dict[str, Any]:
    """Fine-tune the meta model of ``meta_model_path`` on one rare class's ``images``
    (uint8 NHWC, all of them the support set) for ``options.adapt_iterations`` steps with
    ``options.adapt_lr``. ``options`` must have the meta model's architecture options
    (image_size, width, code_dim, noise_dim, projection).

    Resumable like ``train_fewshot_meta`` (a checkpoint of another meta model or other
    images is refused). When completed, writes ``out_model``: options, the adapted
    networks and the class's task code, so that generation needs no images."""
    state_dir, out_model = Path(state_dir), Path(out_model)
    if not isinstance(options, FewShotOptions):
        raise TypeError(f"adapt_fewshot: options must be FewShotOptions, got {options!r}")
    images = check_images(images, "adapt_fewshot: images")
    if len(images) == 0:
        raise ValueError("adapt_fewshot: images: empty adaptation set (the class has no images)")
    meta = _load_payload(meta_model_path, META_FORMAT, "adapt_fewshot: meta_model_path")
    meta_options = FewShotOptions.from_dict(meta["options"])
    for key in ARCHITECTURE:
        if getattr(options, key) != getattr(meta_options, key):
            raise ValueError(
                f"adapt_fewshot: fewshot option '{key}' = {getattr(options, key)!r}, the meta "
                f"model {meta_model_path} was trained with {getattr(meta_options, key)!r}"
            )
    torch_device = resolve_device(device)
    log_device(torch_device, "few-shot adaptation")
    images = resize_images(images, options.image_size)
    meta_hash = _file_sha256(Path(meta_model_path))
    data_fingerprint = fingerprint(images, np.frombuffer(meta_hash.encode(), np.uint8))

    torch.manual_seed(options.seed)
    random.seed(options.seed)
    rng = np.random.default_rng(options.seed)
    trainer = AdaptTrainer(
        options, torch_device, rng, ImageSampler(images, torch_device), weights=meta
    )
    summary = run_training(
        trainer,
        kind="fewshot-adapt",
        options=asdict(options),
        total_iterations=options.adapt_iterations,
        data_fingerprint=data_fingerprint,
        rng=rng,
        state_dir=state_dir,
        checkpoint_every=options.checkpoint_every,
        log_every=options.log_every,
        log_csv=log_csv,
        loss_columns=LOSS_COLUMNS,
        device=torch_device,
        max_iterations_this_run=max_iterations_this_run,
        lr_of=lambda: trainer.optimizer_G.param_groups[0]["lr"],
        resumable_changes=RESUMABLE_CHANGES | _META_ONLY,
    )
    summary["amp"] = trainer.use_amp
    summary["n_images"] = len(images)
    if not summary["completed"]:
        return summary
    code = task_code(trainer.encoder, images, torch_device)
    recalibrate_batch_norm(trainer.generator, code, seed=options.seed)
    code = code.cpu()
    atomic_torch_save(
        {
            "format": ADAPTED_FORMAT,
            "options": asdict(options),
            "meta_class_names": list(meta["class_names"]),
            "meta_model_sha256": meta_hash,
            "encoder": trainer.encoder.state_dict(),
            "generator": trainer.generator.state_dict(),
            "discriminator": trainer.discriminator.state_dict(),
            "code": code,
            "n_images": len(images),
            "iterations": summary["iterations"],
        },
        out_model,
    )
    log.info(
        "wrote %s after %d adaptation iterations on %d images (%.1f s)",
        out_model,
        summary["iterations"],
        len(images),
        summary["seconds"],
    )
    return summary


# ------------------------------------------------------------------------------ inference


def load_fewshot(
    path: str | Path, device: str | None = None
) -> tuple[FewShotGenerator, torch.Tensor, FewShotOptions]:
    """The adapted generator (eval mode, on ``device``; default CUDA if available), the
    class's task code (code_dim,) on the same device, and the options of a model written
    by ``adapt_fewshot``."""
    torch_device = resolve_device(device)
    payload = _load_payload(path, ADAPTED_FORMAT, "load_fewshot")
    options = FewShotOptions.from_dict(payload["options"])
    _, generator, _ = build_networks(options, torch.device("cpu"))
    generator.load_state_dict(payload["generator"])
    return generator.to(torch_device).eval(), payload["code"].to(torch_device), options


@torch.no_grad()
def generate_fewshot(
    generator: FewShotGenerator,
    code: torch.Tensor,
    n: int,
    seed: int,
    batch_size: int = 256,
) -> np.ndarray:
    """``n`` uint8 NHWC images of the class of ``code``. The noise comes from a local
    CPU ``torch.Generator`` seeded with ``seed`` (the global RNG is left alone) and the
    generator runs in eval mode (batch norm with its running statistics), so the images
    depend on the seed only, not on ``batch_size``."""
    if not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"generate_fewshot: n must be an integer >= 0, got {n!r}")
    if batch_size <= 0:
        raise ValueError(f"generate_fewshot: batch_size must be > 0, got {batch_size}")
    size = generator.image_size
    out = np.empty((int(n), size, size, 3), np.uint8)
    if n == 0:
        return out
    device = next(generator.parameters()).device
    noise = torch.randn(
        int(n), generator.noise_dim, generator=torch.Generator().manual_seed(int(seed))
    )
    code = code.to(device).float()
    was_training = generator.training
    generator.eval()
    try:
        for begin in range(0, int(n), batch_size):
            batch = noise[begin : begin + batch_size].to(device)
            images = generator(code, batch).float().clamp(-1, 1)
            out[begin : begin + batch_size] = from_model_range(images).cpu().numpy()
    finally:
        generator.train(was_training)
    return out
