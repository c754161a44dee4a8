"""W-CycleGAN-GP training for stain translation between two domains, resumable.

Layout after junyanz/pytorch-CycleGAN-and-pix2pix: one options object, the networks from
``hemaflow.models.cyclegan``, the losses from ``hemaflow.train.losses``; checkpoints after
stylegan2-ada: networks, optimizers, schedules, image pools, the step and every RNG state,
written atomically, so that a killed run continues exactly where it stopped (bit for bit
on CPU)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.models.cyclegan import (
    CRITIC_NORMS,
    RESIDUAL_MODES,
    UPSAMPLE_MODES,
    PatchCritic,
    PixelCritic,
    ResnetGenerator,
    UNetGenerator,
    init_weights,
)
from hemaflow.train.amp import MixedPrecision
from hemaflow.train.ema import RAMPUP, MovingAverage
from hemaflow.train.image_pool import ImagePool
from hemaflow.train.loop import (
    ImageSampler,
    LinearDecay,
    check_images,
    fingerprint,
    resize_images,
    seed_everything,
    set_requires_grad,
    train_and_save,
    training_device,
)
from hemaflow.train.losses import (
    GAN_MODES,
    STRUCTURE_CHANNELS,
    STRUCTURE_MODES,
    critic_loss,
    generator_adversarial_loss,
    gradient_penalty,
    structure_loss,
)
from hemaflow.train.options import TrainingOptions

GENERATORS = ("unet", "resnet")
LOSS_COLUMNS = (
    "iteration",
    "loss_G",
    "loss_G_adv",
    "loss_cycle",
    "loss_idt",
    "loss_structure",
    "loss_D_A",
    "loss_D_B",
    "gp",
    "loss_P",
    "lr",
    "seconds",
)


# ------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class CycleGANOptions(TrainingOptions):
    """Everything that defines a CycleGAN run. Defaults are the papers' values (CycleGAN:
    Adam 2e-4, betas (0.5, 0.999), lambda_cycle 10, identity 0.5; WGAN-GP: lambda 10)
    at the ``paper`` preset's scale.

    ``lambda_identity`` is a fraction of ``lambda_cycle``, as in CycleGAN: the identity
    term weighs ``lambda_cycle * lambda_identity``. The learning rate is constant for
    ``iterations`` steps, then decays linearly towards 0 over ``decay_iterations`` more.
    ``amp`` (float16 autocast + GradScaler) is used only on CUDA. ``ema_decay`` > 0 keeps
    a moving average of each generator's weights (``hemaflow.train.ema``, with
    ``ema_rampup``) and the model file holds the averages; 0, as in CycleGAN, keeps the
    last weights. ``lambda_pixel`` > 0 adds a PixelGAN critic per domain
    (``PixelCritic``: 1x1 convolutions, no norm, WGAN-GP) whose generator term weighs
    ``lambda_pixel``: it judges the colours that the instance-normed patch critic cannot
    see, and nothing else. ``residual_mode: affine`` (the residual U-Net's form; unused
    without it) makes the generator a smooth per-pixel colour transform
    (``UNetGenerator``) over cells of ``affine_cell`` pixels."""

    image_size: int = 128
    generator: str = "unet"
    ngf: int = 64
    ndf: int = 64
    upsample: str = "transpose"
    residual: bool = False
    residual_mode: str = "shift"
    affine_cell: int = 8
    n_blocks: int = 9
    dropout: float = 0.0
    n_layers_critic: int = 3
    critic_norm: str = "instance"
    lambda_pixel: float = 0.0
    gan_mode: str = "wgangp"
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    lambda_structure: float = 0.0
    structure_mode: str = "structure"
    structure_channels: str = "luma"
    cycle_noise: float = 0.0
    lambda_gp: float = 10.0
    n_critic: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 4
    iterations: int = 100_000
    decay_iterations: int = 100_000
    pool_size: int = 50
    ema_decay: float = 0.0
    ema_rampup: float = RAMPUP
    checkpoint_every: int = 2_500
    log_every: int = 100
    seed: int = 0
    amp: bool = True

    KIND: ClassVar[str] = "cyclegan"
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "generator": GENERATORS,
        "upsample": UPSAMPLE_MODES,
        "gan_mode": GAN_MODES,
        "critic_norm": CRITIC_NORMS,
        "residual_mode": RESIDUAL_MODES,
        "structure_mode": STRUCTURE_MODES,
        "structure_channels": STRUCTURE_CHANNELS,
    }
    POSITIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "ngf",
            "ndf",
            "n_layers_critic",
            "n_critic",
            "batch_size",
            "checkpoint_every",
            "log_every",
            "affine_cell",
            "lr",
        }
    )
    NON_NEGATIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "n_blocks",
            "lambda_cycle",
            "lambda_identity",
            "lambda_structure",
            "lambda_pixel",
            "cycle_noise",
            "lambda_gp",
            "iterations",
            "decay_iterations",
            "pool_size",
        }
    )
    FRACTIONS: ClassVar[frozenset[str]] = frozenset(
        {"dropout", "beta1", "beta2", "ema_decay", "ema_rampup"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.total_iterations <= 0:
            raise ValueError("cyclegan options 'iterations' + 'decay_iterations' must be > 0")
        if self.residual and self.generator != "unet":
            raise ValueError(
                f"cyclegan option 'residual': only the unet generator has a residual form, "
                f"got generator {self.generator!r}"
            )
        # residual_mode is the form of the residual U-Net, unused without it (like
        # n_blocks with the U-Net), so that `residual: false` works with any preset
        if (
            self.residual
            and self.residual_mode == "affine"
            and (self.affine_cell & (self.affine_cell - 1) or self.affine_cell > self.image_size)
        ):
            raise ValueError(
                f"cyclegan option 'affine_cell': must be a power of two <= image_size "
                f"({self.image_size}), got {self.affine_cell}"
            )

    def check_field(self, name: str, value: Any) -> str | None:
        if name == "image_size" and (value < 32 or value & (value - 1)):
            # the 3-layer patch critic needs 32 px for a patch map of more than one pixel
            return "must be a power of two >= 32"
        return super().check_field(name, value)

    @property
    def total_iterations(self) -> int:
        return self.iterations + self.decay_iterations


PRESETS: dict[str, CycleGANOptions] = {
    # 64 px, narrow networks, 1500 iterations: about 7 minutes on a 2-core CPU, 17-18 at
    # one thread with two pairs side by side. The critic sees 16 px patches (the paper's
    # 70 px on 256 px images, scaled to 64 px) and the structure loss keeps the source's
    # edges: without them the generator reframes the source's cells as pbc's centred ones.
    # The residual U-Net starts as the identity, so this short run changes the stain, not
    # the cell; the contrast term keeps texture out of flat regions, per colour channel.
    # Since 0.3.0 the U-Net predicts a colour transform smoothed over 8 px cells
    # (residual_mode affine), not a change: it beats raw and Reinhard on bccd and
    # zheng_tecom where the shift form did not (all measured in docs/normalization.md)
    "cpu": CycleGANOptions(
        image_size=64,
        generator="unet",
        ngf=16,
        ndf=16,
        n_layers_critic=1,
        lambda_structure=10.0,
        structure_mode="contrast_structure",
        structure_channels="rgb",
        residual=True,
        residual_mode="affine",
        affine_cell=8,
        upsample="resize",
        batch_size=8,
        iterations=750,
        decay_iterations=750,
        checkpoint_every=250,
        log_every=25,
    ),
    # the W-CycleGAN-GP at 128 px: U-Net, ngf/ndf 64, 200k iterations of 4 images, half of
    # them with a decaying learning rate (~150 epochs of a domain of ~5000 images); GPU
    "paper": CycleGANOptions(
        image_size=128,
        generator="unet",
        ngf=64,
        ndf=64,
        upsample="transpose",
        batch_size=4,
        iterations=100_000,
        decay_iterations=100_000,
        checkpoint_every=2_500,
        log_every=100,
    ),
}
CycleGANOptions.PRESETS = PRESETS


def build_generator(options: CycleGANOptions) -> nn.Module:
    if options.generator == "unet":
        net: nn.Module = UNetGenerator(
            ngf=options.ngf,
            image_size=options.image_size,
            upsample=options.upsample,
            dropout=options.dropout,
            residual=options.residual,
            residual_mode=options.residual_mode,
            affine_cell=options.affine_cell,
        )
    else:
        net = ResnetGenerator(
            ngf=options.ngf,
            n_blocks=options.n_blocks,
            image_size=options.image_size,
            dropout=options.dropout,
        )
    return init_weights(net)


def build_critic(options: CycleGANOptions) -> nn.Module:
    net = PatchCritic(ndf=options.ndf, n_layers=options.n_layers_critic, norm=options.critic_norm)
    return init_weights(net)


def build_pixel_critic(options: CycleGANOptions) -> nn.Module:
    return init_weights(PixelCritic(ndf=options.ndf))


# ---------------------------------------------------------------------------------- data


class DomainSampler(ImageSampler):
    """Random batches of one domain (see ``ImageSampler``)."""


# ------------------------------------------------------------------------------- the model


class CycleGANModel(MixedPrecision):
    """G_AB, G_BA, D_A (real A vs G_BA(B)), D_B (real B vs G_AB(A)), their optimizers,
    LR schedules, gradient scalers and image pools, and one training iteration."""

    def __init__(self, options: CycleGANOptions, device: torch.device, rng: np.random.Generator):
        self.options = options
        self.init_amp(device, options.amp)
        self.rng = rng
        self.sampler_a: ImageSampler | None = None  # set before training
        self.sampler_b: ImageSampler | None = None
        self.G_AB = build_generator(options).to(device)
        self.G_BA = build_generator(options).to(device)
        self.D_A = build_critic(options).to(device)
        self.D_B = build_critic(options).to(device)
        # the pixel critics, if any: (P_A judges domain A, P_B domain B)
        self.pixel: dict[str, nn.Module] = {}
        if options.lambda_pixel > 0:
            self.pixel = {name: build_pixel_critic(options).to(device) for name in ("P_A", "P_B")}
        betas = (options.beta1, options.beta2)
        generators = [*self.G_AB.parameters(), *self.G_BA.parameters()]
        critics = [*self.D_A.parameters(), *self.D_B.parameters()]
        critics += [p for critic in self.pixel.values() for p in critic.parameters()]
        self.optimizer_G = torch.optim.Adam(generators, lr=options.lr, betas=betas)
        self.optimizer_D = torch.optim.Adam(critics, lr=options.lr, betas=betas)
        decay = LinearDecay(options.iterations, options.decay_iterations)
        self.scheduler_G = torch.optim.lr_scheduler.LambdaLR(self.optimizer_G, decay)
        self.scheduler_D = torch.optim.lr_scheduler.LambdaLR(self.optimizer_D, decay)
        self.pool_A = ImagePool(options.pool_size, seed=options.seed + 1)
        self.pool_B = ImagePool(options.pool_size, seed=options.seed + 2)
        self.ema: dict[str, MovingAverage] = {}
        if options.ema_decay > 0:
            for name in ("G_AB", "G_BA"):
                self.ema[name] = MovingAverage(
                    getattr(self, name), options.ema_decay, options.ema_rampup
                )

    def modules(self) -> list[nn.Module]:
        return [self.G_AB, self.G_BA, self.D_A, self.D_B, *self.pixel.values()]

    def critics(self) -> list[nn.Module]:
        return [self.D_A, self.D_B, *self.pixel.values()]

    def _critic_terms(
        self, critic: nn.Module, real: torch.Tensor, pooled: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One critic's loss on real vs pooled fake images and, for WGAN-GP, its gradient
        penalty (0 otherwise)."""
        o = self.options
        with self.autocast():
            loss = critic_loss(o.gan_mode, critic(real), critic(pooled))
        if o.gan_mode == "wgangp" and o.lambda_gp > 0:
            return loss, gradient_penalty(critic, real, pooled, o.lambda_gp)
        return loss, torch.zeros((), device=self.device)

    def _cycle_input(self, translated: torch.Tensor) -> torch.Tensor:
        """The translation as the reverse generator sees it in the cycle loss: with
        ``cycle_noise`` > 0, plus Gaussian noise of that standard deviation. A CycleGAN
        between domains that are not one-to-one learns to hide the source's colours in a
        faint high-frequency code (often a corner patch) from which it rebuilds the source
        exactly (Chu et al. 2017, "CycleGAN, a master of steganography"); noise is meant to
        destroy such a code. On the shared data it did not remove the blob seen in every
        translation, which was no code but an instance-norm artefact of the first residual
        U-Net (``models/cyclegan.py``; docs/normalization.md), so the presets leave it at 0."""
        sigma = self.options.cycle_noise
        if sigma <= 0:
            return translated
        return translated + sigma * torch.randn_like(translated)

    def train_iteration(self) -> dict[str, torch.Tensor]:
        """One generator step, then ``n_critic`` critic steps on new batches of each domain
        from the samplers. Returns detached losses."""
        o = self.options

        def sample_a() -> torch.Tensor:
            return self.sampler_a.sample(self.rng, o.batch_size)

        def sample_b() -> torch.Tensor:
            return self.sampler_b.sample(self.rng, o.batch_size)

        real_a, real_b = sample_a(), sample_b()

        set_requires_grad(self.critics(), False)
        self.optimizer_G.zero_grad(set_to_none=True)
        with self.autocast():
            fake_b = self.G_AB(real_a)
            fake_a = self.G_BA(real_b)
            rec_a = self.G_BA(self._cycle_input(fake_b))
            rec_b = self.G_AB(self._cycle_input(fake_a))
            adv_b = generator_adversarial_loss(o.gan_mode, self.D_B(fake_b))
            adv_a = generator_adversarial_loss(o.gan_mode, self.D_A(fake_a))
            loss_adv = adv_a + adv_b
            if self.pixel:
                loss_adv = loss_adv + o.lambda_pixel * (
                    generator_adversarial_loss(o.gan_mode, self.pixel["P_B"](fake_b))
                    + generator_adversarial_loss(o.gan_mode, self.pixel["P_A"](fake_a))
                )
            loss_cycle = o.lambda_cycle * (
                F.l1_loss(rec_a.float(), real_a) + F.l1_loss(rec_b.float(), real_b)
            )
            if o.lambda_identity > 0:
                # G_AB should leave B images alone, G_BA A images
                loss_idt = (o.lambda_cycle * o.lambda_identity) * (
                    F.l1_loss(self.G_AB(real_b).float(), real_b)
                    + F.l1_loss(self.G_BA(real_a).float(), real_a)
                )
            else:
                loss_idt = torch.zeros((), device=self.device)
            if o.lambda_structure > 0:
                structure = {"mode": o.structure_mode, "channels": o.structure_channels}
                # the translation keeps the source's edges (any colour, any brightness)
                loss_structure = o.lambda_structure * (
                    structure_loss(real_a, fake_b, **structure)
                    + structure_loss(real_b, fake_a, **structure)
                )
            else:
                loss_structure = torch.zeros((), device=self.device)
            loss_G = loss_adv + loss_cycle + loss_idt + loss_structure
        self.optimizer_step(loss_G, self.optimizer_G, self.scaler_G)
        for average in self.ema.values():
            average.update()
        set_requires_grad(self.critics(), True)

        totals = {"loss_D_A": 0.0, "loss_D_B": 0.0, "gp": 0.0, "loss_P": 0.0}
        for critic_step in range(o.n_critic):
            if critic_step > 0:
                real_a, real_b = sample_a(), sample_b()
                with torch.no_grad(), self.autocast():
                    fake_b = self.G_AB(real_a)
                    fake_a = self.G_BA(real_b)
            pooled_a = self.pool_A.query(fake_a.detach().float())
            pooled_b = self.pool_B.query(fake_b.detach().float())
            self.optimizer_D.zero_grad(set_to_none=True)
            loss_D_A, gp = self._critic_terms(self.D_A, real_a, pooled_a)
            loss_D_B, gp_b = self._critic_terms(self.D_B, real_b, pooled_b)
            gp = gp + gp_b
            loss_P = torch.zeros((), device=self.device)
            for name, real, pooled in (("P_A", real_a, pooled_a), ("P_B", real_b, pooled_b)):
                if name in self.pixel:
                    loss, penalty = self._critic_terms(self.pixel[name], real, pooled)
                    loss_P, gp = loss_P + loss, gp + penalty
            loss_D = loss_D_A + loss_D_B + loss_P + gp
            self.optimizer_step(loss_D, self.optimizer_D, self.scaler_D)
            for name, value in (
                ("loss_D_A", loss_D_A),
                ("loss_D_B", loss_D_B),
                ("gp", gp),
                ("loss_P", loss_P),
            ):
                totals[name] = totals[name] + value.detach() / o.n_critic

        self.scheduler_G.step()
        self.scheduler_D.step()
        return {
            "loss_G": loss_G.detach(),
            "loss_G_adv": loss_adv.detach(),
            "loss_cycle": loss_cycle.detach(),
            "loss_idt": loss_idt.detach(),
            "loss_structure": loss_structure.detach(),
            **totals,
        }

    def state_dict(self) -> dict[str, Any]:
        state = {
            name: getattr(self, name).state_dict()
            for name in (
                "G_AB",
                "G_BA",
                "D_A",
                "D_B",
                "optimizer_G",
                "optimizer_D",
                "scheduler_G",
                "scheduler_D",
                "pool_A",
                "pool_B",
            )
        }
        state |= self.scaler_state()
        state["ema"] = {name: average.state_dict() for name, average in self.ema.items()}
        state["pixel"] = {name: critic.state_dict() for name, critic in self.pixel.items()}
        return state

    def generator_weights(self, name: str) -> dict[str, torch.Tensor]:
        """The weights the model file holds: the moving average if there is one."""
        net = self.ema[name].average if name in self.ema else getattr(self, name)
        return net.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in (
            "G_AB",
            "G_BA",
            "D_A",
            "D_B",
            "optimizer_G",
            "optimizer_D",
            "scheduler_G",
            "scheduler_D",
        ):
            getattr(self, name).load_state_dict(state[name])
        self.pool_A.load_state_dict(state["pool_A"], self.device)
        self.pool_B.load_state_dict(state["pool_B"], self.device)
        self.load_scaler_state(state)
        for name, average in self.ema.items():
            average.load_state_dict(state["ema"][name])
        for name, critic in self.pixel.items():
            critic.load_state_dict(state["pixel"][name])


# ------------------------------------------------------------------------------ training


def train_cyclegan(
    images_a: np.ndarray,
    images_b: np.ndarray,
    options: CycleGANOptions,
    state_dir: Path,
    out_model: Path,
    log_csv: Path | None = None,
    device: str | None = None,
    max_iterations_this_run: int | None = None,
) -> dict[str, Any]:
    """Train G_AB: A -> B and G_BA: B -> A on uint8 NHWC images of the two domains (train
    split only; resized to ``options.image_size`` if needed).

    Checkpoints go to ``state_dir`` every ``options.checkpoint_every`` iterations (and at
    the end), the latest two kept; a run finding one there resumes from it. The run stops
    after ``max_iterations_this_run`` iterations if given (as if killed: no model written);
    otherwise it writes ``out_model`` (options, both generators, iterations) atomically.
    Returns a summary: iterations, seconds, device, final losses, ..."""
    torch_device = training_device(device, "cyclegan training")
    images_a = resize_images(check_images(images_a, "images_a"), options.image_size)
    images_b = resize_images(check_images(images_b, "images_b"), options.image_size)
    if len(images_a) == 0 or len(images_b) == 0:
        raise ValueError(
            f"train_cyclegan: empty domain ({len(images_a)} A, {len(images_b)} B images)"
        )
    rng = seed_everything(options.seed)
    model = CycleGANModel(options, torch_device, rng)
    model.sampler_a = DomainSampler(images_a, torch_device)
    model.sampler_b = DomainSampler(images_b, torch_device)
    return train_and_save(
        model,
        kind=options.KIND,
        options=options,
        total_iterations=options.total_iterations,
        data_fingerprint=fingerprint(images_a, images_b),
        rng=rng,
        device=torch_device,
        state_dir=state_dir,
        out_model=out_model,
        log_csv=log_csv,
        loss_columns=LOSS_COLUMNS,
        lr_of=lambda: model.optimizer_G.param_groups[0]["lr"],
        max_iterations_this_run=max_iterations_this_run,
        model_file=lambda summary: {
            "options": asdict(options),
            "G_AB": model.generator_weights("G_AB"),
            "G_BA": model.generator_weights("G_BA"),
            "iterations": summary["iterations"],
        },
    )
