"""Mixed precision as every trainer uses it: float16 autocast and one gradient scaler per
optimizer, on CUDA only (on the CPU both are no-ops and a step is a plain backward and
optimizer step, so CPU runs stay bit for bit reproducible). A trainer may also ask for
bfloat16 autocast on the CPU (``cpu_bf16``): convolutions then run in bfloat16 (about
1.5x faster per GAN step on an AVX-512 processor with bfloat16 support,
``bench/bench_gan_step.py --cpu-bf16``); bfloat16 keeps float32's range, so it needs no
gradient scaler. On a processor without it (oneDNN's bfloat16 check; an AVX2-only AMD
EPYC, say) bfloat16 is emulated and a step is 2-15x *slower*, so there the option is
ignored with a warning and training runs in float32. ``HEMAFLOW_CPU_BF16`` overrides the
check: ``auto`` (default), ``on`` (bfloat16 wherever asked for), ``off`` (never)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import cache
from typing import Any, ClassVar

import torch

log = logging.getLogger(__name__)

CPU_BF16_ENV = "HEMAFLOW_CPU_BF16"
CPU_BF16_MODES = ("auto", "on", "off")


@cache
def cpu_has_bf16() -> bool:
    """Whether this processor runs bfloat16 convolutions natively (oneDNN's own check:
    AVX-512 with bfloat16 or AMX); where it does not, they are emulated, far slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without the check
        return bool(torch.cpu._is_avx512_bf16_supported())


def cpu_bf16_enabled(asked: bool) -> bool:
    """Whether a CPU trainer that asks for bfloat16 (``asked``) gets it: on a processor
    that has it (``cpu_has_bf16``), unless ``HEMAFLOW_CPU_BF16`` says ``on`` or ``off``.
    A refusal is logged once per process."""
    if not asked:
        return False
    mode = os.environ.get(CPU_BF16_ENV, "auto").strip().lower() or "auto"
    if mode not in CPU_BF16_MODES:
        raise ValueError(
            f"{CPU_BF16_ENV}={os.environ[CPU_BF16_ENV]!r}: must be one of "
            f"{', '.join(CPU_BF16_MODES)}"
        )
    if mode != "auto":
        return mode == "on"
    if cpu_has_bf16():
        return True
    _warn_no_bf16()
    return False


@cache
def _warn_no_bf16() -> None:
    log.warning(
        "cpu_bf16 asked for, but this processor has no bfloat16 support (oneDNN: "
        "emulated, 2-15x slower than float32): training in float32 (%s=on forces it)",
        CPU_BF16_ENV,
    )


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
        """``amp``: float16 with scalers on CUDA; ``cpu_bf16``: bfloat16 on a CPU that
        has it (``cpu_bf16_enabled``)."""
        self.device = device
        self.use_amp = amp and device.type == "cuda"
        self.use_bf16 = device.type == "cpu" and cpu_bf16_enabled(cpu_bf16)
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
