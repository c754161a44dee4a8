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
- *Adaptation* (``hemaflow.synth.fewshot_adapt``): fine-tune all three networks from the
  meta-learned weights on one rare class's few images, then store the generator with the
  task code computed from those images, so that generation needs no images.

This module holds what both stages share (options, networks, losses, one GAN step) and
the meta-training. Both stages run on ``hemaflow.train.loop.train_and_save``: checkpoints
with every RNG state, resumption bit for bit on the CPU, models written atomically only
when completed. Inner
loop optimizers are fresh per task (Reptile), so a meta checkpoint holds just the global
weights (and the AMP gradient scalers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.models.dcgan import CodeDCCritic, CodeDCGenerator
from hemaflow.models.fewshot import (
    FewShotDiscriminator,
    FewShotGenerator,
    TaskEncoder,
    diff_augment,
    parse_policy,
)
from hemaflow.models.projected import CRITICS, CodeProjectedCritic, check_projected_option
from hemaflow.train.amp import MixedPrecision
from hemaflow.train.loop import (
    RESUMABLE_CHANGES,
    ImageSampler,
    check_images,
    fingerprint,
    resize_images,
    seed_everything,
    set_requires_grad,
    train_and_save,
    training_device,
)
from hemaflow.train.losses import (
    lsgan_critic_loss,
    lsgan_generator_loss,
    mode_seeking_loss,
)
from hemaflow.train.options import TrainingOptions

LOSSES = ("hinge", "lsgan")
# fresh: new Adam optimizers for every task (Reptile as published); kept: the fast
# networks' Adam optimizers carry their moments from task to task
INNER_OPTIMIZERS = ("fresh", "kept")
# fastgan: the study's FastGAN generator and spectral-norm discriminator; dcgan: the small
# DCGAN-shaped networks of hemaflow.models.dcgan (a fraction of the cost on a CPU)
ARCHITECTURES = ("fastgan", "dcgan")
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
ARCHITECTURE = (
    "image_size",
    "width",
    "code_dim",
    "noise_dim",
    "projection",
    "architecture",
    "critic",
    "projected_taps",
    "projected_input",
)
# options of the other stage: changing them does not change this stage's run
META_ONLY = frozenset(
    {"shots", "meta_iterations", "inner_steps", "inner_lr", "meta_lr", "inner_optimizer"}
)
ADAPT_ONLY = frozenset(
    {
        "adapt_iterations",
        "adapt_lr",
        "adapt_support",
        "snapshots",
        "adapt_ema_decay",
        "adapt_freeze_d",
    }
)


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
    scaling) is used only on CUDA; ``cpu_bf16``: bfloat16 autocast on the CPU
    (``hemaflow.train.amp``). ``inner_optimizer``: ``fresh`` Adam optimizers per task
    (Reptile as published: with a few inner steps Adam's first, sign-like steps dominate)
    or ``kept``, the fast networks' optimizers carrying their moments from task to task.
    ``adapt_ema_decay``: the adaptation generates from a moving average of the encoder
    and generator weights (``hemaflow.train.ema``, per-step decay; 0 = the trained
    weights themselves). ``adapt_freeze_d``: the discriminator's first that many
    convolutions (in module order, the ones nearest the image) keep their meta-learned
    weights during adaptation (FreezeD, Mo et al. 2020: the low-level features learned
    on the large classes are not refitted to a few images; 0 = all trained).
    ``snapshots``: how many copies of the adapted generator (with its task code) the
    adaptation keeps, at evenly spaced iterations up to the last
    (0 = none; ``hemaflow.train.snapshots``). ``critic="projected"``: the discriminator
    is ``hemaflow.models.projected.CodeProjectedCritic`` (frozen ImageNet AlexNet taps,
    trainable heads, projection on the task code) instead of the architecture's own."""

    image_size: int = 128
    width: int = 32
    code_dim: int = 128
    noise_dim: int = 128
    projection: bool = True
    architecture: str = "fastgan"
    critic: str = "own"
    projected_taps: int = 3
    projected_input: int = 128
    shots: int = 10
    batch_size: int = 8
    meta_iterations: int = 20_000
    inner_steps: int = 5
    inner_lr: float = 2e-4
    meta_lr: float = 0.1
    adapt_iterations: int = 2_000
    adapt_lr: float = 2e-4
    adapt_support: int = 100
    inner_optimizer: str = "fresh"
    adapt_ema_decay: float = 0.0
    adapt_freeze_d: int = 0
    beta1: float = 0.5
    beta2: float = 0.999
    lambda_ms: float = 1.0
    lambda_rec: float = 1.0
    loss: str = "hinge"
    diffaug: str = "color,translation,cutout"
    checkpoint_every: int = 500
    log_every: int = 50
    snapshots: int = 0
    seed: int = 0
    amp: bool = True
    cpu_bf16: bool = False

    KIND: ClassVar[str] = "fewshot"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "loss": LOSSES,
        "architecture": ARCHITECTURES,
        "critic": CRITICS,
        "inner_optimizer": INNER_OPTIMIZERS,
    }
    POSITIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "width",
            "code_dim",
            "noise_dim",
            "projected_taps",
            "projected_input",
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
        {"adapt_iterations", "adapt_freeze_d", "lambda_ms", "lambda_rec", "seed", "snapshots"}
    )
    FRACTIONS: ClassVar[frozenset[str]] = frozenset({"beta1", "beta2"})

    def check_field(self, name: str, value: Any) -> str | None:
        if name == "image_size" and (value < 32 or value & (value - 1)):
            return "must be a power of two >= 32"
        if name == "meta_lr" and not 0.0 < value <= 1.0:
            return "must be in (0, 1]"
        if name == "adapt_ema_decay" and not 0.0 <= value < 1.0:
            return "must be in [0, 1)"
        if name == "diffaug":
            try:
                parse_policy(value)
            except ValueError as exc:
                return str(exc)
        if problem := check_projected_option(name, value):
            return problem
        return super().check_field(name, value)


PRESETS: dict[str, FewShotOptions] = {
    # 64 px on a 2-core CPU: the DCGAN-shaped generator and critic (width 32, the task
    # encoder at width 8), batch 16, no L1 term (against a random real image it pulls
    # every fake toward the mean cell: the blobs of 0.1.0-0.4.0), a light mode-seeking
    # term; bfloat16, inner optimizers kept across tasks, generation from the
    # adaptation's moving average (0.11.0: KID 0.18-0.20 against 0.28-0.29 without the
    # last two after 39 + 6 minutes). At one thread beside another job: about 1 s per
    # outer iteration (4 GAN steps), so meta-training takes about 12 minutes and
    # adaptation to 50 images about 2.5 minutes per class; 2,400 and 1,500 iterations
    # (39 and 6 minutes) reach the route's KID target (docs/synthesis.md).
    "cpu": FewShotOptions(
        image_size=64,
        architecture="dcgan",
        width=32,
        code_dim=64,
        noise_dim=64,
        shots=5,
        batch_size=16,
        meta_iterations=700,
        inner_steps=4,
        inner_lr=2e-4,
        meta_lr=0.5,
        lambda_rec=0.0,
        lambda_ms=0.2,
        adapt_iterations=600,
        adapt_lr=2e-4,
        adapt_support=10,
        inner_optimizer="kept",
        adapt_ema_decay=0.999,
        checkpoint_every=100,
        log_every=10,
        snapshots=5,
        cpu_bf16=True,
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
        snapshots=5,
    ),
}
FewShotOptions.PRESETS = PRESETS


# ------------------------------------------------------------------------------ networks


def build_networks(
    options: FewShotOptions, device: torch.device
) -> tuple[TaskEncoder, FewShotGenerator, FewShotDiscriminator]:
    if options.architecture == "dcgan":
        # the encoder runs at full resolution on every support image: a quarter of the
        # width keeps it from costing more than the generator and critic together
        encoder_width = max(4, options.width // 4)
        generator_class, discriminator_class = CodeDCGenerator, CodeDCCritic
    else:
        encoder_width = options.width
        generator_class, discriminator_class = FewShotGenerator, FewShotDiscriminator
    encoder = TaskEncoder(width=encoder_width, z_dim=options.code_dim)
    generator = generator_class(
        image_size=options.image_size,
        width=options.width,
        code_dim=options.code_dim,
        noise_dim=options.noise_dim,
    )
    if options.critic == "projected":
        discriminator = CodeProjectedCritic(
            image_size=options.image_size,
            width=options.width,
            code_dim=options.code_dim if options.projection else 0,
            taps=options.projected_taps,
            input_side=options.projected_input,
            seed=options.seed,
        )
    else:
        discriminator = discriminator_class(
            image_size=options.image_size,
            width=options.width,
            code_dim=options.code_dim if options.projection else 0,
        )
    return encoder.to(device), generator.to(device), discriminator.to(device)


def first_convolutions(discriminator: nn.Module, count: int) -> list[nn.Parameter]:
    """The parameters of the discriminator's first ``count`` trainable convolutions, in
    module order (nearest the image first): what ``adapt_freeze_d`` freezes."""
    convolutions = [
        module
        for module in discriminator.modules()
        if isinstance(module, nn.Conv2d) and any(True for _ in module.parameters())
    ]
    if count > len(convolutions):
        raise ValueError(
            f"adapt_freeze_d = {count}: the discriminator ({type(discriminator).__name__}) "
            f"has {len(convolutions)} trainable convolutions"
        )
    return [p for module in convolutions[:count] for p in module.parameters()]


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


class GANSteps(MixedPrecision):
    """What the meta-training and the adaptation trainers share: AMP, gradient scalers,
    and one GAN step (discriminator, then encoder + generator) on one task."""

    def __init__(self, options: FewShotOptions, device: torch.device, rng: np.random.Generator):
        self.options = options
        self.init_amp(device, options.amp, options.cpu_bf16)
        self.rng = rng
        # discriminator parameters held fixed (adapt_freeze_d): no gradient, no optimizer
        self.frozen: list[nn.Parameter] = []

    def _adam(self, modules: Sequence[nn.Module], lr: float) -> torch.optim.Adam:
        """Adam over the modules' parameters, those held fixed (``frozen``) left out."""
        frozen = {id(p) for p in self.frozen}
        parameters = [p for module in modules for p in module.parameters() if id(p) not in frozen]
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
        with self.autocast():
            code = encoder(support).unsqueeze(0)
            fake = generator(code, z)
        condition = code.detach()

        optimizer_D.zero_grad(set_to_none=True)
        with self.autocast():
            scores_real = discriminator(diff_augment(real, o.diffaug), condition)
            scores_fake = discriminator(diff_augment(fake.detach(), o.diffaug), condition)
            loss_D = discriminator_loss(o.loss, scores_real, scores_fake)
        self.optimizer_step(loss_D, optimizer_D, self.scaler_D)

        set_requires_grad([discriminator], False)
        optimizer_G.zero_grad(set_to_none=True)
        with self.autocast():
            loss_adv = generator_loss(
                o.loss, discriminator(diff_augment(fake, o.diffaug), condition)
            )
        fake_1, fake_2 = fake[:n].float(), fake[n:].float()
        loss_ms = mode_seeking_loss(fake_1, fake_2, z[:n], z[n:])
        loss_rec = 0.5 * (F.l1_loss(fake_1, real) + F.l1_loss(fake_2, real))
        loss_G = loss_adv + o.lambda_ms * loss_ms + o.lambda_rec * loss_rec
        self.optimizer_step(loss_G, optimizer_G, self.scaler_G)
        set_requires_grad([discriminator], True, frozen=self.frozen)
        return {
            "loss_D": loss_D.detach(),
            "loss_G": loss_G.detach(),
            "loss_G_adv": loss_adv.detach(),
            "loss_ms": loss_ms.detach(),
            "loss_rec": loss_rec.detach(),
            "d_real": scores_real.detach().float().mean(),
            "d_fake": scores_fake.detach().float().mean(),
        }


# ------------------------------------------------------------------------- meta-training


class MetaTrainer(GANSteps):
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
        self.kept: tuple[torch.optim.Adam, torch.optim.Adam] | None = None
        if options.inner_optimizer == "kept":
            # bound to the fast networks' parameters, which load_state_dict refills in place
            self.kept = self._inner_optimizers()

    def _inner_optimizers(self) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        encoder, generator, discriminator = self.fast
        inner_lr = self.options.inner_lr
        return self._adam([encoder, generator], inner_lr), self._adam([discriminator], inner_lr)

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
        optimizer_G, optimizer_D = self.kept or self._inner_optimizers()
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
        state = {
            "encoder": self.encoder.state_dict(),
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            **self.scaler_state(),
        }
        if self.kept is not None:
            state["inner_optimizers"] = [optimizer.state_dict() for optimizer in self.kept]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("encoder", "generator", "discriminator"):
            getattr(self, name).load_state_dict(state[name])
        self.load_scaler_state(state)
        if self.kept is not None:
            if "inner_optimizers" not in state:
                raise ValueError(
                    "few-shot meta-training checkpoint without inner optimizer states, "
                    "but inner_optimizer is 'kept': remove its folder to start over"
                )
            for optimizer, saved in zip(self.kept, state["inner_optimizers"], strict=True):
                optimizer.load_state_dict(saved)


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
    if not isinstance(options, FewShotOptions):
        raise TypeError(f"train_fewshot_meta: options must be FewShotOptions, got {options!r}")
    images = check_images(images, "train_fewshot_meta: images")
    class_names = [str(name) for name in class_names]
    labels, rows = _check_labels(labels, len(images), class_names, options.shots)
    torch_device = training_device(device, "few-shot meta-training")
    images = resize_images(images, options.image_size)
    rng = seed_everything(options.seed)
    samplers = [ImageSampler(images[class_rows], torch_device) for class_rows in rows]
    trainer = MetaTrainer(options, torch_device, rng, samplers)
    return train_and_save(
        trainer,
        kind="fewshot-meta",
        options=options,
        total_iterations=options.meta_iterations,
        data_fingerprint=fingerprint(images, labels, np.asarray(class_names)),
        rng=rng,
        device=torch_device,
        state_dir=state_dir,
        out_model=out_model,
        log_csv=log_csv,
        loss_columns=LOSS_COLUMNS,
        lr_of=lambda: options.inner_lr,
        max_iterations_this_run=max_iterations_this_run,
        resumable_changes=RESUMABLE_CHANGES | ADAPT_ONLY,
        summary_extra=lambda: {"class_names": class_names},
        model_file=lambda summary: {
            "format": META_FORMAT,
            "options": asdict(options),
            "class_names": class_names,
            "encoder": trainer.encoder.state_dict(),
            "generator": trainer.generator.state_dict(),
            "discriminator": trainer.discriminator.state_dict(),
            "iterations": summary["iterations"],
        },
    )
