"""Exponential moving average of a network's weights (the G_ema of StyleGAN and
stylegan2-ada), shared by the GAN trainers.

The average lags the trained network by a half-life of ``log 0.5 / log decay`` steps; with
stylegan2-ada's ramp-up the half-life is at most ``rampup`` times the steps so far, so
early weights (the random or identity initialization) do not linger in a short run.
Buffers are copied, not averaged. ``decay`` 0 makes the average the network itself."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hemaflow.train.loop import set_requires_grad

#: stylegan2-ada's ramp-up: the average's half-life is at most this share of the steps so far
RAMPUP = 0.05


class MovingAverage:
    """``average``: a frozen copy of ``net`` in eval mode, updated by ``update()`` after
    each optimizer step of ``net``."""

    def __init__(self, net: nn.Module, decay: float, rampup: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MovingAverage: decay must be in [0, 1), got {decay}")
        if rampup < 0:
            raise ValueError(f"MovingAverage: rampup must be >= 0, got {rampup}")
        self.net = net
        self.decay = decay
        self.rampup = rampup
        self.steps = 0
        self.average = copy.deepcopy(net).eval()
        set_requires_grad([self.average], False)

    def beta(self) -> float:
        """The weight of the old average in the next update."""
        if self.decay == 0:
            return 0.0
        half_life = math.log(0.5) / math.log(self.decay)  # in steps
        if self.rampup > 0:
            half_life = min(half_life, self.rampup * self.steps)
        return 0.5 ** (1.0 / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        beta = self.beta()
        for p_avg, p in zip(self.average.parameters(), self.net.parameters(), strict=True):
            p_avg.copy_(p.detach().lerp(p_avg, beta))
        for b_avg, b in zip(self.average.buffers(), self.net.buffers(), strict=True):
            b_avg.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.average.load_state_dict(state["average"])
        self.steps = int(state["steps"])
