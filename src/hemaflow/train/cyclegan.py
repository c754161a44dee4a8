"""W-CycleGAN-GP training for stain translation between two domains, resumable.

Layout after junyanz/pytorch-CycleGAN-and-pix2pix: one options object, the networks from
``hemaflow.models.cyclegan``, the losses from ``hemaflow.train.losses``; checkpoints after
stylegan2-ada: networks, optimizers, schedules, image pools, the step and every RNG state,
written atomically, so that a killed run continues exactly where it stopped (bit for bit
on CPU)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.models.cyclegan import (
    CRITIC_NORMS,
    UPSAMPLE_MODES,
    PatchCritic,
    ResnetGenerator,
    UNetGenerator,
    init_weights,
)
from hemaflow.train.image_pool import ImagePool
from hemaflow.train.losses import (
    GAN_MODES,
    critic_loss,
    generator_adversarial_loss,
    gradient_penalty,
)

log = logging.getLogger(__name__)

GENERATORS = ("unet", "resnet")
CHECKPOINT_FORMAT = 1
CHECKPOINTS_KEPT = 2
LOSS_COLUMNS = (
    "iteration",
    "loss_G",
    "loss_G_adv",
    "loss_cycle",
    "loss_idt",
    "loss_D_A",
    "loss_D_B",
    "gp",
    "lr",
    "seconds",
)
# options that may change between a checkpoint and its resumption without changing the run
_RESUMABLE_CHANGES = frozenset({"checkpoint_every", "log_every", "amp"})


# ------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class CycleGANOptions:
    """Everything that defines a CycleGAN run. Defaults are the papers' values (CycleGAN:
    Adam 2e-4, betas (0.5, 0.999), lambda_cycle 10, identity 0.5; WGAN-GP: lambda 10)
    at the ``paper`` preset's scale.

    ``lambda_identity`` is a fraction of ``lambda_cycle``, as in CycleGAN: the identity
    term weighs ``lambda_cycle * lambda_identity``. The learning rate is constant for
    ``iterations`` steps, then decays linearly towards 0 over ``decay_iterations`` more.
    ``amp`` (float16 autocast + GradScaler) is used only on CUDA."""

    image_size: int = 128
    generator: str = "unet"
    ngf: int = 64
    ndf: int = 64
    upsample: str = "transpose"
    n_blocks: int = 9
    dropout: float = 0.0
    n_layers_critic: int = 3
    critic_norm: str = "instance"
    gan_mode: str = "wgangp"
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    lambda_gp: float = 10.0
    n_critic: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 4
    iterations: int = 100_000
    decay_iterations: int = 100_000
    pool_size: int = 50
    checkpoint_every: int = 2_500
    log_every: int = 100
    seed: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_option(field.name, getattr(self, field.name), field.type)
        if self.total_iterations <= 0:
            raise ValueError("cyclegan options 'iterations' + 'decay_iterations' must be > 0")

    @property
    def total_iterations(self) -> int:
        return self.iterations + self.decay_iterations

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> CycleGANOptions:
        """``{"preset": "cpu" | "paper", **overrides}``; the preset defaults to ``cpu``.
        Unknown keys raise ValueError naming the key."""
        section = dict(section)
        preset = section.pop("preset", "cpu")
        if preset not in PRESETS:
            raise ValueError(
                f"cyclegan option 'preset': {preset!r} is not one of {', '.join(PRESETS)}"
            )
        return PRESETS[preset].with_overrides(section)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CycleGANOptions:
        """From ``asdict(options)`` (as stored in checkpoints and models); missing keys take
        the defaults, unknown keys raise ValueError."""
        return cls().with_overrides(values)

    def with_overrides(self, overrides: Mapping[str, Any]) -> CycleGANOptions:
        types = {field.name: field.type for field in dataclasses.fields(self)}
        values = {}
        for key, value in overrides.items():
            if key not in types:
                raise ValueError(
                    f"cyclegan option '{key}': unknown option (known: preset, {', '.join(types)})"
                )
            values[key] = _coerce(value, types[key])
        return dataclasses.replace(self, **values)


_CHOICES = {
    "generator": GENERATORS,
    "upsample": UPSAMPLE_MODES,
    "gan_mode": GAN_MODES,
    "critic_norm": CRITIC_NORMS,
}
_POSITIVE = {
    "ngf",
    "ndf",
    "n_layers_critic",
    "n_critic",
    "batch_size",
    "checkpoint_every",
    "log_every",
    "lr",
}
_NON_NEGATIVE = {
    "n_blocks",
    "lambda_cycle",
    "lambda_identity",
    "lambda_gp",
    "iterations",
    "decay_iterations",
    "pool_size",
}
_FRACTIONS = {"dropout", "beta1", "beta2"}
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(value: Any, annotation: str) -> Any:
    """YAML reads ``2e-4`` as a string and ``10`` as an int: accept both for floats."""
    if annotation == "float" and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    return value


def _check_option(name: str, value: Any, annotation: str) -> None:
    expected = _TYPES[annotation]
    if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
        problem = f"expected {annotation}"
    elif name in _CHOICES and value not in _CHOICES[name]:
        problem = f"must be one of {', '.join(_CHOICES[name])}"
    elif name == "image_size" and (value < 32 or value & (value - 1)):
        # the 3-layer patch critic needs 32 px for a patch map of more than one pixel
        problem = "must be a power of two >= 32"
    elif name in _POSITIVE and value <= 0:
        problem = "must be > 0"
    elif name in _NON_NEGATIVE and value < 0:
        problem = "must be >= 0"
    elif name in _FRACTIONS and not 0.0 <= value < 1.0:
        problem = "must be in [0, 1)"
    else:
        return
    raise ValueError(f"cyclegan option '{name}': {problem}, got {value!r}")


PRESETS: dict[str, CycleGANOptions] = {
    # 64 px, narrow networks, 3000 iterations: about 15 minutes on a 2-core CPU
    "cpu": CycleGANOptions(
        image_size=64,
        generator="unet",
        ngf=16,
        ndf=16,
        upsample="resize",
        batch_size=8,
        iterations=1_500,
        decay_iterations=1_500,
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


def build_generator(options: CycleGANOptions) -> nn.Module:
    if options.generator == "unet":
        net: nn.Module = UNetGenerator(
            ngf=options.ngf,
            image_size=options.image_size,
            upsample=options.upsample,
            dropout=options.dropout,
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


# ---------------------------------------------------------------------------------- data


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_images(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{name}: expected uint8 images of shape (N, H, W, 3), "
            f"got {images.dtype} {images.shape}"
        )
    return images


def _uint8_tensor(images: np.ndarray) -> torch.Tensor:
    """A tensor that owns a copy: inputs may be read-only memory maps of the caches."""
    return torch.from_numpy(np.array(images, dtype=np.uint8, order="C", copy=True))


def _resize_float(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(batch.shape[-2:]) == size:
        return batch
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_images(images: np.ndarray, size: int, chunk: int = 512) -> np.ndarray:
    """uint8 NHWC images resized to size x size (antialiased bilinear); unchanged if they
    already have that size."""
    if images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images)
    out = np.empty((len(images), size, size, 3), np.uint8)
    for start in range(0, len(images), chunk):
        batch = _uint8_tensor(images[start : start + chunk])
        batch = _resize_float(batch.permute(0, 3, 1, 2).float(), (size, size))
        out[start : start + chunk] = batch.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def _to_model_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return batch.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _from_model_range(batch: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC."""
    return batch.add(1.0).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1)


class DomainSampler:
    """Random batches of one domain, each image under a random symmetry of the square
    (flips and 90-degree rotations: blood cells have no orientation). Draws come from a
    numpy Generator that the checkpoint carries."""

    def __init__(self, images: np.ndarray, device: torch.device):
        self.images = _uint8_tensor(images).to(device)  # NHWC, on the device

    def sample(self, rng: np.random.Generator, batch_size: int) -> torch.Tensor:
        rows = rng.integers(0, len(self.images), size=batch_size)
        symmetries = rng.integers(0, 8, size=batch_size)
        batch = self.images[torch.from_numpy(rows).to(self.images.device)]
        out = torch.empty_like(batch)
        for symmetry in np.unique(symmetries):
            chosen = torch.from_numpy(np.flatnonzero(symmetries == symmetry)).to(batch.device)
            part = torch.rot90(batch[chosen], int(symmetry % 4), dims=(1, 2))
            if symmetry >= 4:
                part = torch.flip(part, dims=(2,))
            out[chosen] = part
        return _to_model_range(out)


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(repr(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


# ------------------------------------------------------------------------------- the model


class _LinearDecay:
    """LR factor: 1 for ``iterations`` steps, then linearly towards 0 (CycleGAN's
    ``linear`` policy counted in iterations). A class, not a lambda, so that
    ``LambdaLR.state_dict`` can store it."""

    def __init__(self, iterations: int, decay_iterations: int):
        self.iterations = iterations
        self.decay_iterations = decay_iterations

    def __call__(self, step: int) -> float:
        return 1.0 - max(0, step + 1 - self.iterations) / float(self.decay_iterations + 1)


def _set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for parameter in net.parameters():
            parameter.requires_grad_(flag)


class CycleGANModel:
    """G_AB, G_BA, D_A (real A vs G_BA(B)), D_B (real B vs G_AB(A)), their optimizers,
    LR schedules, gradient scalers and image pools, and one training iteration."""

    def __init__(self, options: CycleGANOptions, device: torch.device):
        self.options = options
        self.device = device
        self.use_amp = options.amp and device.type == "cuda"
        self.G_AB = build_generator(options).to(device)
        self.G_BA = build_generator(options).to(device)
        self.D_A = build_critic(options).to(device)
        self.D_B = build_critic(options).to(device)
        betas = (options.beta1, options.beta2)
        generators = [*self.G_AB.parameters(), *self.G_BA.parameters()]
        critics = [*self.D_A.parameters(), *self.D_B.parameters()]
        self.optimizer_G = torch.optim.Adam(generators, lr=options.lr, betas=betas)
        self.optimizer_D = torch.optim.Adam(critics, lr=options.lr, betas=betas)
        decay = _LinearDecay(options.iterations, options.decay_iterations)
        self.scheduler_G = torch.optim.lr_scheduler.LambdaLR(self.optimizer_G, decay)
        self.scheduler_D = torch.optim.lr_scheduler.LambdaLR(self.optimizer_D, decay)
        self.scaler_G = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.scaler_D = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.pool_A = ImagePool(options.pool_size, seed=options.seed + 1)
        self.pool_B = ImagePool(options.pool_size, seed=options.seed + 2)

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

    def train_iteration(self, sample_a, sample_b) -> dict[str, torch.Tensor]:
        """One generator step, then ``n_critic`` critic steps. ``sample_a`` / ``sample_b``
        return a new batch of each domain. Returns detached losses."""
        o = self.options
        real_a, real_b = sample_a(), sample_b()

        _set_requires_grad([self.D_A, self.D_B], False)
        self.optimizer_G.zero_grad(set_to_none=True)
        with self._autocast():
            fake_b = self.G_AB(real_a)
            fake_a = self.G_BA(real_b)
            rec_a = self.G_BA(fake_b)
            rec_b = self.G_AB(fake_a)
            adv_b = generator_adversarial_loss(o.gan_mode, self.D_B(fake_b))
            adv_a = generator_adversarial_loss(o.gan_mode, self.D_A(fake_a))
            loss_adv = adv_a + adv_b
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
            loss_G = loss_adv + loss_cycle + loss_idt
        self._step(loss_G, self.optimizer_G, self.scaler_G)
        _set_requires_grad([self.D_A, self.D_B], True)

        totals = {"loss_D_A": 0.0, "loss_D_B": 0.0, "gp": 0.0}
        for critic_step in range(o.n_critic):
            if critic_step > 0:
                real_a, real_b = sample_a(), sample_b()
                with torch.no_grad(), self._autocast():
                    fake_b = self.G_AB(real_a)
                    fake_a = self.G_BA(real_b)
            pooled_a = self.pool_A.query(fake_a.detach().float())
            pooled_b = self.pool_B.query(fake_b.detach().float())
            self.optimizer_D.zero_grad(set_to_none=True)
            with self._autocast():
                loss_D_A = critic_loss(o.gan_mode, self.D_A(real_a), self.D_A(pooled_a))
                loss_D_B = critic_loss(o.gan_mode, self.D_B(real_b), self.D_B(pooled_b))
            if o.gan_mode == "wgangp" and o.lambda_gp > 0:
                gp_a = gradient_penalty(self.D_A, real_a, pooled_a, o.lambda_gp)
                gp = gp_a + gradient_penalty(self.D_B, real_b, pooled_b, o.lambda_gp)
            else:
                gp = torch.zeros((), device=self.device)
            self._step(loss_D_A + loss_D_B + gp, self.optimizer_D, self.scaler_D)
            for name, value in (("loss_D_A", loss_D_A), ("loss_D_B", loss_D_B), ("gp", gp)):
                totals[name] = totals[name] + value.detach() / o.n_critic

        self.scheduler_G.step()
        self.scheduler_D.step()
        return {
            "loss_G": loss_G.detach(),
            "loss_G_adv": loss_adv.detach(),
            "loss_cycle": loss_cycle.detach(),
            "loss_idt": loss_idt.detach(),
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
        state["scaler_G"] = self.scaler_G.state_dict() if self.scaler_G else None
        state["scaler_D"] = self.scaler_D.state_dict() if self.scaler_D else None
        return state

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
        for name in ("scaler_G", "scaler_D"):
            scaler = getattr(self, name)
            if scaler is not None and state.get(name):
                scaler.load_state_dict(state[name])


# --------------------------------------------------------------------------- checkpoints

_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def _atomic_torch_save(payload: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: a kill
    at any moment leaves either the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def list_checkpoints(state_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the checkpoints in ``state_dir``, oldest first."""
    if not state_dir.is_dir():
        return []
    found = []
    for path in state_dir.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": rng.bit_generator.state,
        "python": random.getstate(),
    }


def _restore_rng_state(state: Mapping[str, Any], rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        else:
            log.warning(
                "checkpoint has %d CUDA RNG states, %d devices are visible: CUDA RNG not restored",
                len(state["cuda"]),
                torch.cuda.device_count(),
            )
    rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])


def _save_checkpoint(state_dir: Path, step: int, payload: dict[str, Any]) -> Path:
    path = state_dir / f"checkpoint-{step:09d}.pt"
    _atomic_torch_save(payload, path)
    for _, old in list_checkpoints(state_dir)[:-CHECKPOINTS_KEPT]:
        old.unlink(missing_ok=True)
    return path


def _load_latest_checkpoint(state_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads; an unreadable one is skipped with a warning."""
    for step, path in reversed(list_checkpoints(state_dir)):
        try:
            # on the CPU: RNG states must stay there; load_state_dict moves the rest
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: try the older one
            log.warning("checkpoint %s (iteration %d) is unreadable, skipped: %s", path, step, exc)
            continue
        payload["_path"] = path
        return payload
    return None


def _check_resumable(
    payload: Mapping[str, Any], options: CycleGANOptions, fingerprint: str
) -> None:
    path = payload["_path"]
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path}: format {payload.get('format')!r}, expected "
            f"{CHECKPOINT_FORMAT}; remove {path.parent} to start over"
        )
    current = asdict(options)
    for key, saved in payload["options"].items():
        if key not in _RESUMABLE_CHANGES and current.get(key) != saved:
            raise ValueError(
                f"checkpoint {path}: written with cyclegan option '{key}' = "
                f"{saved!r}, the options now say {current.get(key)!r}; remove "
                f"{path.parent} to start over"
            )
    if payload["data_fingerprint"] != fingerprint:
        raise ValueError(
            f"checkpoint {path}: written for other training images; remove "
            f"{path.parent} to start over"
        )


# ------------------------------------------------------------------------------ loss log


class LossLog:
    """CSV of losses per logged iteration. On resume from iteration N, rows after N (which
    the killed run wrote past its last checkpoint) are dropped before appending, so no
    iteration appears twice."""

    def __init__(self, path: Path | None, resume_step: int):
        self.path = path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        if path.exists() and path.stat().st_size > 0:
            with open(path, newline="") as handle:
                kept = [
                    row for row in csv.DictReader(handle) if int(row["iteration"]) <= resume_step
                ]
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOSS_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)

    def append(self, row: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=LOSS_COLUMNS).writerow(
                {key: _format(row[key]) for key in LOSS_COLUMNS}
            )


def _format(value: Any) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


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
    state_dir, out_model = Path(state_dir), Path(out_model)
    log_csv = Path(log_csv) if log_csv is not None else None
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        reason = "no CUDA device visible" if not torch.cuda.is_available() else "requested"
        log.info("training on cpu (%s)", reason)
    else:
        log.info("training on %s (%s)", torch_device, torch.cuda.get_device_name(torch_device))

    images_a = resize_images(_check_images(images_a, "images_a"), options.image_size)
    images_b = resize_images(_check_images(images_b, "images_b"), options.image_size)
    if len(images_a) == 0 or len(images_b) == 0:
        raise ValueError(
            f"train_cyclegan: empty domain ({len(images_a)} A, {len(images_b)} B images)"
        )
    fingerprint = _fingerprint(images_a, images_b)

    # seed before building: a fresh run's initial weights come from this state
    torch.manual_seed(options.seed)
    random.seed(options.seed)
    rng = np.random.default_rng(options.seed)
    model = CycleGANModel(options, torch_device)
    step, elapsed_before, last_losses, resumed_from = 0, 0.0, {}, None
    for stale in state_dir.glob("checkpoint-*.pt.tmp") if state_dir.is_dir() else []:
        stale.unlink(missing_ok=True)  # a write that a kill interrupted
    payload = _load_latest_checkpoint(state_dir)
    if payload is not None:
        _check_resumable(payload, options, fingerprint)
        model.load_state_dict(payload["model"])
        _restore_rng_state(payload["rng"], rng)
        step = resumed_from = int(payload["step"])
        elapsed_before = float(payload["elapsed_seconds"])
        last_losses = dict(payload["last_losses"])
        log.info("resuming from checkpoint at iteration %d (%s)", step, payload["_path"])
        del payload
    loss_log = LossLog(log_csv, step)

    sampler_a = DomainSampler(images_a, torch_device)
    sampler_b = DomainSampler(images_b, torch_device)

    def sample_a() -> torch.Tensor:
        return sampler_a.sample(rng, options.batch_size)

    def sample_b() -> torch.Tensor:
        return sampler_b.sample(rng, options.batch_size)

    def checkpoint(at: int) -> None:
        _save_checkpoint(
            state_dir,
            at,
            {
                "format": CHECKPOINT_FORMAT,
                "step": at,
                "options": asdict(options),
                "data_fingerprint": fingerprint,
                "model": model.state_dict(),
                "rng": _rng_state(rng),
                "elapsed_seconds": elapsed_before + time.monotonic() - start,
                "last_losses": last_losses,
            },
        )

    total = options.total_iterations
    stop = total if max_iterations_this_run is None else min(total, step + max_iterations_this_run)
    start_step = step
    start = time.monotonic()
    for module in (model.G_AB, model.G_BA, model.D_A, model.D_B):
        module.train()
    while step < stop:
        lr = model.optimizer_G.param_groups[0]["lr"]
        losses = model.train_iteration(sample_a, sample_b)
        step += 1
        is_last = step == total
        if step % options.log_every == 0 or is_last or step % options.checkpoint_every == 0:
            last_losses = {name: float(value) for name, value in losses.items()}
            seconds = elapsed_before + time.monotonic() - start
            if step % options.log_every == 0 or is_last:
                loss_log.append({"iteration": step, **last_losses, "lr": lr, "seconds": seconds})
                log.info(
                    "iteration %d/%d  G %.4f (adv %.4f cycle %.4f idt %.4f)  D_A %.4f  "
                    "D_B %.4f  gp %.4f  lr %.2e  %.1f s",
                    step,
                    total,
                    last_losses["loss_G"],
                    last_losses["loss_G_adv"],
                    last_losses["loss_cycle"],
                    last_losses["loss_idt"],
                    last_losses["loss_D_A"],
                    last_losses["loss_D_B"],
                    last_losses["gp"],
                    lr,
                    seconds,
                )
        if step % options.checkpoint_every == 0 or is_last:
            checkpoint(step)
    if step > start_step:  # the very last iteration, logged or not
        last_losses = {name: float(value) for name, value in losses.items()}

    seconds_this_run = time.monotonic() - start
    done_this_run = step - start_step
    summary = {
        "iterations": step,
        "total_iterations": total,
        "completed": step >= total,
        "resumed_from": resumed_from,
        "iterations_this_run": done_this_run,
        "seconds": elapsed_before + seconds_this_run,
        "seconds_this_run": seconds_this_run,
        "seconds_per_iteration": seconds_this_run / done_this_run if done_this_run else None,
        "device": str(torch_device),
        "amp": model.use_amp,
        "final_losses": last_losses,
    }
    if step < total:
        log.info(
            "stopped at iteration %d of %d (max_iterations_this_run=%s); no model written",
            step,
            total,
            max_iterations_this_run,
        )
        return summary
    _atomic_torch_save(
        {
            "options": asdict(options),
            "G_AB": model.G_AB.state_dict(),
            "G_BA": model.G_BA.state_dict(),
            "iterations": step,
        },
        out_model,
    )
    log.info("wrote %s after %d iterations (%.1f s)", out_model, step, summary["seconds"])
    return summary


# ------------------------------------------------------------------------------ inference


def load_cyclegan(
    model_path: str | Path, device: str | None = None
) -> tuple[nn.Module, nn.Module, CycleGANOptions]:
    """G_AB, G_BA (eval mode, on ``device``; default CUDA if available) and the options
    of a model written by ``train_cyclegan``."""
    torch_device = resolve_device(device)
    payload = torch.load(model_path, map_location="cpu", weights_only=True)
    try:
        options = CycleGANOptions.from_dict(payload["options"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{model_path}: not a CycleGAN model file ({exc})") from exc
    generators = []
    for name in ("G_AB", "G_BA"):
        generator = build_generator(options)
        generator.load_state_dict(payload[name])
        generators.append(generator.to(torch_device).eval())
    return generators[0], generators[1], options


@torch.no_grad()
def translate(
    generator: nn.Module, images: np.ndarray, batch_size: int = 64, device: str | None = None
) -> np.ndarray:
    """Run a generator over uint8 NHWC images; returns uint8 NHWC of the same shape.
    Images are resized to the generator's ``image_size`` and the output back to the
    input's size. ``device`` defaults to the generator's; the generator is moved there."""
    images = _check_images(images, "translate")
    if device is None:
        torch_device = next(generator.parameters()).device
    else:
        torch_device = torch.device(device)
        generator.to(torch_device)
    size = getattr(generator, "image_size", None)
    height, width = images.shape[1:3]
    out = np.empty_like(images)
    was_training = generator.training
    generator.eval()
    try:
        for begin in range(0, len(images), batch_size):
            chunk = _uint8_tensor(images[begin : begin + batch_size])
            batch = _to_model_range(chunk.to(torch_device))
            if size is not None:
                batch = _resize_float(batch, (size, size))
            result = _resize_float(generator(batch).float(), (height, width))
            out[begin : begin + batch_size] = _from_model_range(result.clamp(-1, 1)).cpu().numpy()
    finally:
        generator.train(was_training)
    return out
