"""Adaptation of the meta-learned few-shot GAN (``hemaflow.synth.fewshot``) to one rare
class, and generation from the adapted model.

``adapt_fewshot`` fine-tunes all three networks from the meta-learned weights on the
class's few images, then stores the generator with the task code computed from those
images (and batch-norm statistics re-estimated for that code), so that generation
(``load_fewshot``, ``generate_fewshot``) needs no images. With ``snapshots`` > 0 the
adaptation also keeps that state (generator and code) at evenly spaced iterations, for
the curve of quality against training time (``load_fewshot_snapshots``,
``hemaflow.synth.curve``)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hemaflow.models.fewshot import FewShotGenerator, TaskEncoder
from hemaflow.synth.fewshot import (
    ADAPTED_FORMAT,
    ARCHITECTURE,
    LOSS_COLUMNS,
    META_FORMAT,
    META_ONLY,
    FewShotOptions,
    GANSteps,
    build_networks,
    first_convolutions,
)
from hemaflow.train.ema import RAMPUP, MovingAverage
from hemaflow.train.loop import (
    RESUMABLE_CHANGES,
    ImageSampler,
    check_images,
    fingerprint,
    from_model_range,
    random_symmetries,
    resize_images,
    resolve_device,
    seed_everything,
    set_requires_grad,
    to_model_range,
    train_and_save,
    training_device,
    uint8_tensor,
)
from hemaflow.train.model_file import read_model_file
from hemaflow.train.snapshots import Snapshots, module_copy


class AdaptTrainer(GANSteps):
    """Fine-tuning of the meta-learned networks on one class: every step the encoder sees
    all of the class's images (each under a random symmetry) as the support set. Counts
    its steps and keeps the snapshots of what generation needs (``generation_state``)."""

    def __init__(
        self,
        options: FewShotOptions,
        device: torch.device,
        rng: np.random.Generator,
        images: np.ndarray,
        weights: Mapping[str, Any],
    ):
        super().__init__(options, device, rng)
        self.images = images
        self.sampler = ImageSampler(images, device)
        self.steps = 0
        self.snapshots = Snapshots(options.adapt_iterations, options.snapshots)
        self.encoder, self.generator, self.discriminator = build_networks(options, device)
        for name in ("encoder", "generator", "discriminator"):
            getattr(self, name).load_state_dict(weights[name])
        # FreezeD: the first convolutions keep their meta-learned weights
        self.frozen = first_convolutions(self.discriminator, options.adapt_freeze_d)
        set_requires_grad([self.discriminator], True, frozen=self.frozen)
        self.optimizer_G = self._adam([self.encoder, self.generator], options.adapt_lr)
        self.optimizer_D = self._adam([self.discriminator], options.adapt_lr)
        # what generation uses: the moving averages of the encoder and generator, with
        # stylegan2-ada's ramp-up (none with adapt_ema_decay 0: the trained networks)
        self.averages = (
            [
                MovingAverage(net, options.adapt_ema_decay, RAMPUP)
                for net in (self.encoder, self.generator)
            ]
            if options.adapt_ema_decay > 0
            else []
        )

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
        for average in self.averages:
            average.update()
        self.steps += 1
        if self.snapshots.due(self.steps):
            self.snapshots.add(self.steps, self.generation_state())
        return {"task": 0.0, **losses}

    def generation_state(self) -> dict[str, Any]:
        """What generation needs now: the task code of the class's images and the
        generator's weights with batch-norm statistics re-estimated for that code. Works
        on a copy: the training networks, their statistics and the RNGs are left as they
        are. With ``adapt_ema_decay`` > 0, the moving averages' weights."""
        encoder, generator = (
            [average.average for average in self.averages]
            if self.averages
            else [self.encoder, self.generator]
        )
        code = task_code(encoder, self.images, self.device)
        generator = copy.deepcopy(generator)
        recalibrate_batch_norm(generator, code, seed=self.options.seed)
        return {"generator": module_copy(generator), "code": code.cpu()}

    def state_dict(self) -> dict[str, Any]:
        return (
            {
                name: getattr(self, name).state_dict()
                for name in ("encoder", "generator", "discriminator", "optimizer_G", "optimizer_D")
            }
            | self.scaler_state()
            | {"steps": self.steps, "snapshots": self.snapshots.state_dict()}
            | {"averages": [average.state_dict() for average in self.averages]}
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("encoder", "generator", "discriminator", "optimizer_G", "optimizer_D"):
            getattr(self, name).load_state_dict(state[name])
        self.load_scaler_state(state)
        if "steps" not in state and self.snapshots.iterations:
            raise ValueError(
                "few-shot adaptation checkpoint without a step count (written before "
                "snapshots existed): remove its folder to start over"
            )
        self.steps = int(state.get("steps", 0))
        self.snapshots.load_state_dict(state.get("snapshots", []), self.steps)
        saved = state.get("averages", [])
        if len(saved) != len(self.averages):
            raise ValueError(
                "few-shot adaptation checkpoint with a different moving average "
                "(adapt_ema_decay): remove its folder to start over"
            )
        for average, average_state in zip(self.averages, saved):
            average.load_state_dict(average_state)


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
    networks and the class's task code, so that generation needs no images, and the
    snapshots (``options.snapshots``): a list of ``{"iteration", "state": {"generator",
    "code"}}``."""
    if not isinstance(options, FewShotOptions):
        raise TypeError(f"adapt_fewshot: options must be FewShotOptions, got {options!r}")
    images = check_images(images, "adapt_fewshot: images")
    if len(images) == 0:
        raise ValueError("adapt_fewshot: images: empty adaptation set (the class has no images)")
    meta, meta_options = read_model_file(
        meta_model_path,
        META_FORMAT,
        FewShotOptions,
        mark="format",
        required=("class_names", "encoder", "generator", "discriminator"),
        what="adapt_fewshot: meta_model_path",
    )
    for key in ARCHITECTURE:
        if getattr(options, key) != getattr(meta_options, key):
            raise ValueError(
                f"adapt_fewshot: fewshot option '{key}' = {getattr(options, key)!r}, the meta "
                f"model {meta_model_path} was trained with {getattr(meta_options, key)!r}"
            )
    torch_device = training_device(device, "few-shot adaptation")
    images = resize_images(images, options.image_size)
    meta_hash = _file_sha256(Path(meta_model_path))
    rng = seed_everything(options.seed)
    trainer = AdaptTrainer(options, torch_device, rng, images, weights=meta)

    def model_file(summary: Mapping[str, Any]) -> dict[str, Any]:
        taken = trainer.snapshots.state_dict()
        if taken and taken[-1]["iteration"] == summary["iterations"]:
            final = taken[-1]["state"]  # the last snapshot is the final state
        else:
            final = trainer.generation_state()
        return {
            "format": ADAPTED_FORMAT,
            "options": asdict(options),
            "meta_class_names": list(meta["class_names"]),
            "meta_model_sha256": meta_hash,
            "encoder": trainer.encoder.state_dict(),
            "generator": final["generator"],
            "discriminator": trainer.discriminator.state_dict(),
            "code": final["code"],
            "n_images": len(images),
            "iterations": summary["iterations"],
            "snapshots": taken,
        }

    return train_and_save(
        trainer,
        kind="fewshot-adapt",
        options=options,
        total_iterations=options.adapt_iterations,
        data_fingerprint=fingerprint(images, np.frombuffer(meta_hash.encode(), np.uint8)),
        rng=rng,
        device=torch_device,
        state_dir=state_dir,
        out_model=out_model,
        log_csv=log_csv,
        loss_columns=LOSS_COLUMNS,
        lr_of=lambda: trainer.optimizer_G.param_groups[0]["lr"],
        max_iterations_this_run=max_iterations_this_run,
        resumable_changes=RESUMABLE_CHANGES | META_ONLY,
        summary_extra=lambda: {"n_images": len(images)},
        model_file=model_file,
    )


# ------------------------------------------------------------------------------ inference


def load_fewshot(
    path: str | Path, device: str | None = None
) -> tuple[FewShotGenerator, torch.Tensor, FewShotOptions]:
    """The adapted generator (eval mode, on ``device``; default CUDA if available), the
    class's task code (code_dim,) on the same device, and the options of a model written
    by ``adapt_fewshot``."""
    torch_device = resolve_device(device)
    payload, options = read_model_file(
        path,
        ADAPTED_FORMAT,
        FewShotOptions,
        mark="format",
        required=("generator", "code"),
        what="load_fewshot",
        hints={META_FORMAT: "a meta-learned model: adapt it to a class with adapt_fewshot first"},
    )
    generator = _generator(options, payload["generator"], torch_device)
    return generator, payload["code"].to(torch_device), options


def _generator(
    options: FewShotOptions, state: Mapping[str, Any], device: torch.device
) -> FewShotGenerator:
    _, generator, _ = build_networks(options, torch.device("cpu"))
    generator.load_state_dict(state)
    return generator.to(device).eval()


def load_fewshot_snapshots(
    path: str | Path, device: str | None = None
) -> tuple[list[tuple[int, FewShotGenerator, torch.Tensor]], FewShotOptions]:
    """(iteration, adapted generator, task code) of every snapshot in a file written by
    ``adapt_fewshot`` (``options.snapshots`` > 0), by ascending iteration, and the
    options; a file without snapshots gives its final generator alone, at its last
    iteration. Generators in eval mode and codes on ``device`` (default CUDA if
    available)."""
    torch_device = resolve_device(device)
    payload, options = read_model_file(
        path,
        ADAPTED_FORMAT,
        FewShotOptions,
        mark="format",
        required=("generator", "code", "iterations"),
        what="load_fewshot_snapshots",
        hints={META_FORMAT: "a meta-learned model: adapt it to a class with adapt_fewshot first"},
    )
    taken = payload.get("snapshots") or [
        {
            "iteration": payload["iterations"],
            "state": {"generator": payload["generator"], "code": payload["code"]},
        }
    ]
    snapshots = [
        (
            int(snapshot["iteration"]),
            _generator(options, snapshot["state"]["generator"], torch_device),
            snapshot["state"]["code"].to(torch_device),
        )
        for snapshot in sorted(taken, key=lambda snapshot: snapshot["iteration"])
    ]
    return snapshots, options


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
