"""The resumable training loop shared by every trained model (CycleGAN, C-WGAN-GP,
few-shot GAN, classifier), and the pieces around it: device choice, image batches,
atomic checkpoints with every RNG state, the loss CSV.

A *trainer* is any object with

- ``train_iteration() -> dict[str, Tensor | float]``: one step, returns its losses;
- ``state_dict()`` / ``load_state_dict(state)``: networks, optimizers, schedules, ...;
- ``modules()``: the networks (put in train mode before the loop).

A trainer may also have ``should_stop() -> bool`` (early stopping): when it returns True
after an iteration, the run checkpoints there and ends as completed.

``run_training`` checkpoints the trainer, the step and the RNG states (torch, CUDA, numpy,
python) every ``checkpoint_every`` steps into ``state_dir`` (outside the workflow's declared
outputs, which Snakemake deletes when a job fails), resumes from the newest readable
checkpoint, refuses one written with other options or other data, and stops early when
``max_iterations_this_run`` says so (as if killed)."""

from __future__ import annotations

import csv
import errno
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.devices import resolve_device  # noqa: F401  (re-exported)
from hemaflow.progress import Progress
from hemaflow.train.state import (  # noqa: F401  (re-exported)
    EXTENDABLE,
    fingerprint,
    keyed_state_dir,
    list_checkpoints,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CHECKPOINTS_KEPT = 2
# options that may change between a checkpoint and its resumption without changing the run
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "log_every", "amp"})


# ---------------------------------------------------------------------------------- device


def log_device(device: torch.device, what: str = "training") -> str:
    """Say in the log where the job runs, and why the CPU when it is the CPU."""
    if device.type == "cpu":
        reason = "no CUDA device visible" if not torch.cuda.is_available() else "requested"
        message = f"{what} on cpu ({reason})"
    else:
        index = device.index if device.index is not None else torch.cuda.current_device()
        message = f"{what} on {device} ({torch.cuda.get_device_name(index)})"
    log.info(message)
    return message


# ---------------------------------------------------------------------------------- images


def check_images(images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{name}: expected uint8 images of shape (N, H, W, 3), "
            f"got {images.dtype} {images.shape}"
        )
    return images


def uint8_tensor(images: np.ndarray) -> torch.Tensor:
    """A tensor that owns a copy: inputs may be read-only memory maps of the caches."""
    return torch.from_numpy(np.array(images, dtype=np.uint8, order="C", copy=True))


def resize_float(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_images(images: np.ndarray, size: int, chunk: int = 512) -> np.ndarray:
    """uint8 NHWC images resized to size x size (antialiased bilinear); unchanged if they
    already have that size."""
    if images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images)
    out = np.empty((len(images), size, size, 3), np.uint8)
    for start in range(0, len(images), chunk):
        batch = uint8_tensor(images[start : start + chunk])
        batch = resize_float(batch.permute(0, 3, 1, 2).float(), (size, size))
        out[start : start + chunk] = batch.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def to_model_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return batch.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def from_model_range(batch: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC."""
    return batch.add(1.0).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1)


SQUARE_SYMMETRIES = 8
_HEIGHT_DIM = {"NHWC": 1, "NCHW": 2}


def square_symmetry(batch: torch.Tensor, symmetry: int, layout: str) -> torch.Tensor:
    """A batch of ``layout`` ("NHWC" or "NCHW") images under one of the 8 symmetries of
    the square: 0-3 rotations by 90 degrees, 4-7 the same then a horizontal flip."""
    height = _HEIGHT_DIM[layout]
    out = torch.rot90(batch, int(symmetry % 4), dims=(height, height + 1))
    return torch.flip(out, dims=(height + 1,)) if symmetry >= 4 else out


def random_symmetries(batch: torch.Tensor, symmetries: np.ndarray) -> torch.Tensor:
    """Each NHWC image under its own symmetry of the square (``square_symmetry``)."""
    out = torch.empty_like(batch)
    for symmetry in np.unique(symmetries):
        chosen = torch.from_numpy(np.flatnonzero(symmetries == symmetry)).to(batch.device)
        out[chosen] = square_symmetry(batch[chosen], int(symmetry), "NHWC")
    return out


class ImageSampler:
    """Random batches of uint8 NHWC images (kept on the device), each under a random
    symmetry of the square (blood cells have no orientation), in [-1, 1] NCHW. Draws come
    from a numpy Generator that the checkpoint carries."""

    def __init__(self, images: np.ndarray, device: torch.device):
        self.images = uint8_tensor(images).to(device)

    def __len__(self) -> int:
        return len(self.images)

    def sample_rows(self, rng: np.random.Generator, rows: np.ndarray) -> torch.Tensor:
        symmetries = rng.integers(0, 8, size=len(rows))
        batch = self.images[torch.from_numpy(np.asarray(rows)).to(self.images.device)]
        return to_model_range(random_symmetries(batch, symmetries))

    def sample(self, rng: np.random.Generator, batch_size: int) -> torch.Tensor:
        rows = rng.integers(0, len(self.images), size=batch_size)
        return self.sample_rows(rng, rows)


# -------------------------------------------------------------------------- optimisation


class LinearDecay:
    """LR factor: 1 for ``iterations`` steps, then linearly towards 0 (CycleGAN's
    ``linear`` policy counted in iterations). A class, not a lambda, so that
    ``LambdaLR.state_dict`` can store it."""

    def __init__(self, iterations: int, decay_iterations: int):
        self.iterations = iterations
        self.decay_iterations = decay_iterations

    def __call__(self, step: int) -> float:
        return 1.0 - max(0, step + 1 - self.iterations) / float(self.decay_iterations + 1)


def set_requires_grad(
    nets: Iterable[nn.Module], flag: bool, frozen: Iterable[nn.Parameter] = ()
) -> None:
    """Turn the nets' gradients on or off; the ``frozen`` parameters stay off (held fixed
    for the whole run, as FreezeD holds a discriminator's first layers)."""
    held = {id(parameter) for parameter in frozen}
    for net in nets:
        for parameter in net.parameters():
            parameter.requires_grad_(flag and id(parameter) not in held)


# --------------------------------------------------------------------------- checkpoints


def atomic_torch_save(payload: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: a kill
    (or a full disk) at any moment leaves either the old file or the new one, never a torn
    one taken for finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    except RuntimeError as error:  # torch reports a short write as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise OSError(errno.EIO, f"cannot write {path}: {error} (disk full?)") from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": rng.bit_generator.state,
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any], rng: np.random.Generator) -> None:
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


def save_checkpoint(state_dir: Path, step: int, payload: dict[str, Any]) -> Path:
    path = Path(state_dir) / f"checkpoint-{step:09d}.pt"
    atomic_torch_save(payload, path)
    for _, old in list_checkpoints(state_dir)[:-CHECKPOINTS_KEPT]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(state_dir: Path) -> dict[str, Any] | None:
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


def check_resumable(
    payload: Mapping[str, Any],
    options: Mapping[str, Any],
    data_fingerprint: str,
    kind: str,
    resumable_changes: frozenset[str] = RESUMABLE_CHANGES,
) -> None:
    """Refuse a checkpoint written with other options or for other data, naming the
    option and the folder to remove."""
    path = payload["_path"]
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path}: format {payload.get('format')!r}, expected "
            f"{CHECKPOINT_FORMAT}; remove {path.parent} to start over"
        )
    for key, saved in payload["options"].items():
        if key not in resumable_changes and options.get(key) != saved:
            raise ValueError(
                f"checkpoint {path}: written with {kind} option '{key}' = "
                f"{saved!r}, the options now say {options.get(key)!r}; remove "
                f"{path.parent} to start over"
            )
    if payload["data_fingerprint"] != data_fingerprint:
        raise ValueError(
            f"checkpoint {path}: written for other training images; remove "
            f"{path.parent} to start over"
        )


# ------------------------------------------------------------------------------ loss log


def _format(value: Any) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


class LossLog:
    """CSV of losses per logged iteration. On resume from iteration N, rows after N (which
    the killed run wrote past its last checkpoint) are dropped before appending, so no
    iteration appears twice."""

    def __init__(self, path: Path | None, resume_step: int, columns: tuple[str, ...]):
        self.path = Path(path) if path is not None else None
        self.columns = columns
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as handle:
                kept = [
                    row for row in csv.DictReader(handle) if int(row["iteration"]) <= resume_step
                ]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, self.path)

    def append(self, row: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns).writerow(
                {key: _format(row.get(key, float("nan"))) for key in self.columns}
            )


# ------------------------------------------------------------------------------ the loop


class Trainer(Protocol):
    def train_iteration(self) -> Mapping[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def modules(self) -> Iterable[nn.Module]: ...


def run_training(
    trainer: Trainer,
    *,
    kind: str,
    options: Mapping[str, Any],
    total_iterations: int,
    data_fingerprint: str,
    rng: np.random.Generator,
    state_dir: str | Path,
    checkpoint_every: int,
    log_every: int,
    log_csv: str | Path | None,
    loss_columns: tuple[str, ...],
    device: torch.device,
    max_iterations_this_run: int | None = None,
    lr_of: Any = None,
    resumable_changes: frozenset[str] = RESUMABLE_CHANGES,
) -> dict[str, Any]:
    """Run ``trainer`` to ``total_iterations`` steps, resuming from ``state_dir``.

    ``loss_columns`` starts with ``iteration`` and may name ``lr`` and ``seconds``;
    ``lr_of()`` returns the current learning rate for the log. A trainer with
    ``should_stop()`` that returns True ends the run after that iteration (checkpointed,
    logged, ``completed`` and ``stopped_early`` True). Returns a summary: iterations,
    completed, stopped_early, resumed_from, seconds, seconds_per_iteration, device,
    final_losses. The caller writes the finished model when ``completed``."""
    state_dir = Path(state_dir)
    options = dict(options)
    if state_dir.is_dir():
        for stale in state_dir.glob("checkpoint-*.pt.tmp"):
            stale.unlink(missing_ok=True)  # a write that a kill interrupted
    step, elapsed_before, last_losses, resumed_from = 0, 0.0, {}, None
    payload = load_latest_checkpoint(state_dir)
    if payload is not None:
        check_resumable(payload, options, data_fingerprint, kind, resumable_changes)
        step = resumed_from = int(payload["step"])
        if step > total_iterations:  # refused before any state is loaded
            raise ValueError(
                f"checkpoint {payload['_path']}: written at iteration {step}, past the "
                f"{total_iterations} iterations the options ask for; ask for at least {step} "
                f"or remove {payload['_path'].parent} to start over"
            )
        trainer.load_state_dict(payload["model"])
        restore_rng_state(payload["rng"], rng)
        elapsed_before = float(payload["elapsed_seconds"])
        last_losses = dict(payload["last_losses"])
        log.info("%s: resuming from checkpoint at iteration %d (%s)", kind, step, payload["_path"])
        del payload
    else:
        log.info("%s: starting at iteration 0 (no checkpoint in %s)", kind, state_dir)
    loss_log = LossLog(log_csv, step, loss_columns)
    start = time.monotonic()

    def checkpoint(at: int) -> None:
        save_checkpoint(
            state_dir,
            at,
            {
                "format": CHECKPOINT_FORMAT,
                "kind": kind,
                "step": at,
                "options": options,
                "data_fingerprint": data_fingerprint,
                "model": trainer.state_dict(),
                "rng": rng_state(rng),
                "elapsed_seconds": elapsed_before + time.monotonic() - start,
                "last_losses": last_losses,
            },
        )

    should_stop = getattr(trainer, "should_stop", None)

    def stopped_early() -> bool:
        return should_stop is not None and bool(should_stop())

    stop = total_iterations
    if max_iterations_this_run is not None:
        stop = min(total_iterations, step + max_iterations_this_run)
    start_step = step
    for module in trainer.modules():
        module.train()
    losses: Mapping[str, Any] = {}
    progress = Progress(kind, total_iterations, "iterations", start_at=step, logger=log)
    early = stopped_early()  # a resumed run whose last checkpoint had already stopped
    while step < stop and not early:
        lr = lr_of() if lr_of is not None else float("nan")
        losses = trainer.train_iteration()
        step += 1
        early = stopped_early()
        progress.update(step)
        is_last = step == total_iterations or early
        logged = step % log_every == 0 or is_last
        if logged or step % checkpoint_every == 0:
            last_losses = {name: float(value) for name, value in losses.items()}
            seconds = elapsed_before + time.monotonic() - start
            if logged:
                loss_log.append({"iteration": step, **last_losses, "lr": lr, "seconds": seconds})
                text = "  ".join(f"{k} {v:.4g}" for k, v in last_losses.items())
                log.info(
                    "%s: iteration %d/%d  %s  %.1f s", kind, step, total_iterations, text, seconds
                )
        if step % checkpoint_every == 0 or is_last:
            checkpoint(step)
    progress.finish()
    if step > start_step:  # the very last iteration, logged or not
        last_losses = {name: float(value) for name, value in losses.items()}
    seconds_this_run = time.monotonic() - start
    done = step - start_step
    summary = {
        "iterations": step,
        "total_iterations": total_iterations,
        "completed": step >= total_iterations or early,
        "stopped_early": early and step < total_iterations,
        "resumed_from": resumed_from,
        "iterations_this_run": done,
        "seconds": elapsed_before + seconds_this_run,
        "seconds_this_run": seconds_this_run,
        "seconds_per_iteration": seconds_this_run / done if done else None,
        "device": str(device),
        "final_losses": last_losses,
    }
    if early and step < total_iterations:
        log.info("%s: stopped early at iteration %d of %d", kind, step, total_iterations)
    elif step < total_iterations:
        log.info(
            "%s: stopped at iteration %d of %d (max_iterations_this_run=%s); no model written",
            kind,
            step,
            total_iterations,
            max_iterations_this_run,
        )
    return summary


# ---------------------------------------------------------------- the trainers' skeleton


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch and python, and return the numpy Generator of the run's draws. Call it
    before building the networks: a fresh run's initial weights come from this state."""
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed)


def training_device(device: str | torch.device | None, what: str) -> torch.device:
    """The device to train on (default CUDA if available), said in the log."""
    torch_device = resolve_device(device)
    log_device(torch_device, what)
    return torch_device


def train_and_save(
    trainer: Trainer,
    *,
    kind: str,
    options: Any,
    total_iterations: int,
    data_fingerprint: str,
    rng: np.random.Generator,
    device: torch.device,
    state_dir: str | Path,
    out_model: str | Path,
    log_csv: str | Path | None,
    loss_columns: tuple[str, ...],
    lr_of: Callable[[], float],
    model_file: Callable[[dict[str, Any]], dict[str, Any]],
    max_iterations_this_run: int | None = None,
    run_options: Mapping[str, Any] | None = None,
    resumable_changes: frozenset[str] = RESUMABLE_CHANGES,
    summary_extra: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What every trainer ends with: ``run_training`` (checkpoints, resume, the loss CSV;
    ``checkpoint_every`` and ``log_every`` from ``options``, a ``TrainingOptions``), then,
    once completed, ``model_file(summary)`` (the dict to keep) written atomically to
    ``out_model``.

    ``run_options``: what a checkpoint must match to be resumed (default:
    ``asdict(options)``). ``summary_extra()``: more entries for the summary, added
    whether or not the run completed. Returns ``run_training``'s summary with ``amp``
    (the trainer's ``use_amp``), ``cpu_bf16`` (its ``use_bf16``) and the extra entries."""
    summary = run_training(
        trainer,
        kind=kind,
        options=asdict(options) if run_options is None else run_options,
        total_iterations=total_iterations,
        data_fingerprint=data_fingerprint,
        rng=rng,
        state_dir=state_dir,
        checkpoint_every=options.checkpoint_every,
        log_every=options.log_every,
        log_csv=log_csv,
        loss_columns=loss_columns,
        device=device,
        max_iterations_this_run=max_iterations_this_run,
        lr_of=lr_of,
        resumable_changes=resumable_changes,
    )
    summary["amp"] = bool(getattr(trainer, "use_amp", False))
    summary["cpu_bf16"] = bool(getattr(trainer, "use_bf16", False))
    if summary_extra is not None:
        summary.update(summary_extra())
    if not summary["completed"]:
        return summary
    atomic_torch_save(model_file(summary), Path(out_model))
    log.info(
        "%s: wrote %s after %d iterations (%.1f s)",
        kind,
        out_model,
        summary["iterations"],
        summary["seconds"],
    )
    return summary
