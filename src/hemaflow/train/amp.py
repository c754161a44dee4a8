"""Mixed precision as every trainer uses it: float16 autocast and one gradient scaler per
optimizer, on CUDA only (on the CPU both are no-ops and a step is a plain backward and
optimizer step, so CPU runs stay bit for bit reproducible). A trainer may also ask for
bfloat16 autocast on the CPU (``cpu_bf16``): convolutions then run in bfloat16 where the
processor has the instructions for it (about 1.5x faster per GAN step on this project's
AVX-512 machine, ``bench/bench_gan_step.py --cpu-bf16``); bfloat16 keeps float32's range,
so it needs no gradient scaler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype = torch.float16):
    """``dtype`` autocast on ``device`` when ``enabled`` (a no-op context otherwise)."""
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


class MixedPrecision:
    """Base of a trainer: ``use_amp``, one ``torch.amp.GradScaler`` (or None) per name in
    ``SCALERS`` as an attribute of that name, ``autocast()``, ``optimizer_step(loss, optimizer,
    scaler)`` and the scalers' part of the checkpoint. The names are checkpoint keys:
    changing them makes older checkpoints unreadable."""

    SCALERS: ClassVar[tuple[str, ...]] = ("scaler_G", "scaler_D")

    def init_amp(self, device: torch.device, amp: bool, cpu_bf16: bool = False) -> None:
        """``amp``: float16 with scalers on CUDA; ``cpu_bf16``: bfloat16 on the CPU."""
        self.device = device
        self.use_amp = amp and device.type == "cuda"
        self.use_bf16 = cpu_bf16 and device.type == "cpu"
        for name in self.SCALERS:
            setattr(self, name, torch.amp.GradScaler("cuda") if self.use_amp else None)

    def autocast(self):
        if self.use_bf16:
            return autocast(self.device, True, torch.bfloat16)
        return autocast(self.device, self.use_amp)

    @staticmethod
    def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
        """Backward pass and optimizer step, through ``scaler`` when there is one."""
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def scaler_state(self) -> dict[str, Any]:
        return {
            name: scaler.state_dict() if (scaler := getattr(self, name)) else None
            for name in self.SCALERS
        }

    def load_scaler_state(self, state: Mapping[str, Any]) -> None:
        for name in self.SCALERS:
            scaler = getattr(self, name)
            if scaler is not None and state.get(name):
                scaler.load_state_dict(state[name])
