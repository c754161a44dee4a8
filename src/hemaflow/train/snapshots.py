"""Copies of a generator's weights taken during training, for a curve of quality against
training time (``hemaflow.synth.curve``).

A trainer with the option ``snapshots`` (a count; 0 = none) keeps that many copies, taken
at evenly spaced iterations up to its last (``snapshot_iterations``), of the weights it
would generate with then. The copies are part of the trainer's checkpointed state, so a
resumed run ends with the same ones as an uninterrupted run, and the finished model file
holds them under ``snapshots`` (a list of ``{"iteration": int, "state": dict}``), which
the plain loaders ignore.

A count rather than an interval, so that a preset's curve keeps its number of points when
its iterations change."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def snapshot_iterations(total: int, count: int) -> tuple[int, ...]:
    """The iterations (1-based, ascending, distinct) of ``count`` snapshots spread evenly
    over ``total`` iterations: ceil(k * total / count) for k = 1..count, so the last is
    ``total``. Fewer than ``count`` when ``total < count``; none when either is 0."""
    if total < 0 or count < 0:
        raise ValueError(f"snapshot_iterations: total and count must be >= 0, got {total}, {count}")
    if total == 0 or count == 0:
        return ()
    return tuple(sorted({-(-k * total // count) for k in range(1, count + 1)}))


def cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict's tensors copied to the CPU, detached from the training ones (and off
    the accelerator's memory)."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}


def module_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return cpu_copy(module.state_dict())


class Snapshots:
    """The snapshots a trainer has taken so far and the iterations it takes them at."""

    def __init__(self, total: int, count: int):
        self.iterations = frozenset(snapshot_iterations(total, count))
        self.taken: list[dict[str, Any]] = []

    def due(self, iteration: int) -> bool:
        return iteration in self.iterations

    def add(self, iteration: int, state: Mapping[str, Any]) -> None:
        self.taken.append({"iteration": int(iteration), "state": dict(state)})

    def state_dict(self) -> list[dict[str, Any]]:
        return list(self.taken)

    def load_state_dict(self, taken: Iterable[Mapping[str, Any]], iteration: int) -> list[int]:
        """The snapshots of a checkpoint written at ``iteration``. A run resumed with a
        changed length or count (``EXTENDABLE``: a finished run asked for more steps) may
        have passed iterations its new spacing wants a snapshot at: their weights are gone,
        so the run keeps the snapshots it took and takes the new spacing's from here on
        (its curve then has more points than ``snapshots``, none invented). Returns those
        missed iterations, logged as a warning, [] when none."""
        self.taken = [{"iteration": int(s["iteration"]), "state": dict(s["state"])} for s in taken]
        have = {s["iteration"] for s in self.taken}
        missed = sorted(i for i in self.iterations if i <= iteration and i not in have)
        if missed:
            log.warning(
                "resumed at iteration %d: the snapshot spacing asks for iteration %s, "
                "already past and not taken; the run keeps its snapshots of iteration %s "
                "and takes the rest as due",
                iteration,
                ", ".join(map(str, missed)),
                ", ".join(str(i) for i in sorted(have)) or "(none)",
            )
        return missed
