"""Which device a GPU job runs on.

Snakemake's ``resources: gpu=1`` is a counter: with ``--resources gpu=N`` at most N GPU jobs
run at once, but Snakemake never says *which* GPU a job should use (it does not set
``CUDA_VISIBLE_DEVICES``), so without help every job would land on GPU 0. A GPU job calls
:func:`claim_device` first, which picks its device this way:

1. ``HEMAFLOW_DEVICE`` set (``cpu``, ``cuda``, ``cuda:1``): that device, as the user said.
2. ``CUDA_VISIBLE_DEVICES`` set by a scheduler (SLURM ``--gpus``, Kubernetes device
   plugins) to a single device, or empty: the scheduler has chosen; the job uses what it
   sees (``cuda:0``, or the CPU when empty). No lock: the scheduler isolates jobs.
3. Several visible GPUs (a workstation or server, or a scheduler handing out several):
   a lock-file slot per GPU under ``<lock_root>/<hostname>/``. The job takes the first free
   slot (``flock``, released by the kernel when the process ends, even on SIGKILL), so N
   concurrent jobs land on N different GPUs; a job finding every slot taken waits.
4. No GPU: the CPU, and the log says so.

The choice is published in ``HEMAFLOW_DEVICE`` for the rest of the process, where
``hemaflow.train.loop.resolve_device`` reads it, so every trainer uses the claimed device
without further plumbing.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEVICE_ENV = "HEMAFLOW_DEVICE"
# a fake GPU count for tests of the slot logic on machines without GPUs: slots are
# claimed as for real GPUs, the job computes on the CPU
FAKE_COUNT_ENV = "HEMAFLOW_FAKE_GPU_COUNT"


@dataclass
class DeviceClaim:
    """The device of this job: ``device`` for torch, why it was chosen, and the held lock
    (kept open for the life of the process, or until :meth:`release`)."""

    device: str
    reason: str
    physical: str | None = None  # the GPU's id as the machine numbers it
    lock_path: Path | None = None
    _handle: object = field(default=None, repr=False)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None


_HELD: list[DeviceClaim] = []  # claims live as long as the process unless released


def _visible_ids(env: MutableMapping[str, str]) -> list[str] | None:
    """The GPU ids in ``CUDA_VISIBLE_DEVICES``; None when unset."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    value = value.strip()
    if value in ("", "-1", "none", "NoDevFiles"):
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def gpu_count(env: MutableMapping[str, str] | None = None) -> int:
    """GPUs this process could use: a fake count for tests, else torch's count."""
    env = os.environ if env is None else env
    if env.get(FAKE_COUNT_ENV):
        return int(env[FAKE_COUNT_ENV])
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _try_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n")
    handle.flush()
    return handle


def claim_device(
    lock_root: str | os.PathLike,
    *,
    gpus_requested: int = 1,
    env: MutableMapping[str, str] | None = None,
    device_count: int | None = None,
    poll_seconds: float = 2.0,
    timeout: float | None = None,
    what: str = "job",
) -> DeviceClaim:
    """Claim a device for a job (see the module docstring) and publish it in
    ``HEMAFLOW_DEVICE``. ``gpus_requested`` 0 means the job wants the CPU.
    ``device_count`` overrides the detected count (tests). Waits for a free slot at most
    ``timeout`` seconds (None: as long as it takes), then raises ``TimeoutError``."""
    env = os.environ if env is None else env
    claim = _choose(lock_root, gpus_requested, env, device_count, poll_seconds, timeout)
    env[DEVICE_ENV] = claim.device
    log.info("%s: device %s (%s)", what, claim.device, claim.reason)
    _HELD.append(claim)
    return claim


def _choose(lock_root, gpus_requested, env, device_count, poll_seconds, timeout) -> DeviceClaim:
    if env.get(DEVICE_ENV):
        return DeviceClaim(env[DEVICE_ENV], f"set by {DEVICE_ENV}")
    if gpus_requested <= 0:
        return DeviceClaim("cpu", "the job asks for no GPU")
    visible = _visible_ids(env)
    count = gpu_count(env) if device_count is None else device_count
    if visible is not None:
        if not visible:
            return DeviceClaim("cpu", "CUDA_VISIBLE_DEVICES is empty: no GPU for this job")
        if count == 0:
            return DeviceClaim("cpu", "CUDA_VISIBLE_DEVICES is set but no CUDA device works")
        if len(visible) == 1:
            return DeviceClaim(
                "cuda:0", f"the scheduler's CUDA_VISIBLE_DEVICES={visible[0]}", visible[0]
            )
        ids = visible[: min(len(visible), count)]
    else:
        if count == 0:
            return DeviceClaim("cpu", "no CUDA device on this machine: running on the CPU")
        ids = [str(i) for i in range(count)]
    slots = Path(lock_root) / socket.gethostname()
    start = time.monotonic()
    announced = False
    while True:
        for position, gpu in enumerate(ids):
            path = slots / f"gpu{gpu}.lock"
            handle = _try_lock(path)
            if handle is not None:
                reason = f"GPU slot {position + 1} of {len(ids)} (lock {path})"
                if env.get(FAKE_COUNT_ENV):
                    # fake GPUs (tests): the slot is real, the computation stays on the CPU
                    return DeviceClaim("cpu", f"fake {reason}", gpu, path, handle)
                return DeviceClaim(f"cuda:{position}", reason, gpu, path, handle)
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise TimeoutError(
                f"every GPU slot in {slots} stayed taken for {waited:.0f} s; is "
                "--resources gpu larger than the number of GPUs?"
            )
        if not announced:
            log.warning(
                "all %d GPU slots in %s are taken; waiting (is --resources gpu larger than "
                "the number of GPUs?)",
                len(ids),
                slots,
            )
            announced = True
        time.sleep(poll_seconds)


def release_all() -> None:
    """Drop every claim of this process (tests; a job's process ending does the same)."""
    while _HELD:
        _HELD.pop().release()


def resolve_device(device=None):
    """``device`` if given, else the device this job claimed (``HEMAFLOW_DEVICE``), else
    CUDA when visible, else the CPU."""
    import torch

    if device is not None:
        return torch.device(device)
    claimed = os.environ.get(DEVICE_ENV)
    if claimed:
        return torch.device(claimed)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
