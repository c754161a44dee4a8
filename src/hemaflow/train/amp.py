"""Mixed precision as every trainer uses it: float16 autocast and one gradient scaler per
optimizer, on CUDA only (on the CPU both are no-ops and a step is a plain backward and
optimizer step, so CPU runs stay bit for bit reproducible)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch


def autocast(device: torch.device, enabled: bool):
    """float16 autocast on ``device`` when ``enabled`` (a no-op context otherwise)."""
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


class MixedPrecision:
    """Base of a trainer: ``use_amp``, one ``torch.amp.GradScaler`` (or None) per name in
    ``SCALERS`` as an attribute of that name, ``autocast()``, ``optimizer_step(loss, optimizer,
    scaler)`` and the scalers' part of the checkpoint. The names are checkpoint keys:
    changing them makes older checkpoints unreadable."""

    SCALERS: ClassVar[tuple[str, ...]] = ("scaler_G", "scaler_D")

    def init_amp(self, device: torch.device, amp: bool) -> None:
        self.device = device
        self.use_amp = amp and device.type == "cuda"
        for name in self.SCALERS:
            setattr(self, name, torch.amp.GradScaler("cuda") if self.use_amp else None)

    def autocast(self):
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
