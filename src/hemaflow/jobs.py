"""What every workflow script does first: log to the rule's log, use the rule's threads,
claim a device for a GPU job, and shrink the batch on a retry.

Kept free of Snakemake imports: ``job`` is the ``snakemake`` object a script receives (or
anything with ``log``, ``threads``, ``resources`` and ``rule``), so this is unit-tested
with a plain namespace."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hemaflow.devices import DeviceClaim, claim_device
from hemaflow.logs import setup_logging

log = logging.getLogger(__name__)

STATE_ENV = "HEMAFLOW_STATE_DIR"


def state_root() -> Path:
    """Where resumable state and GPU slot locks live (outside declared outputs)."""
    return Path(os.environ.get(STATE_ENV, ".hemaflow-state"))


def _resource(job: Any, name: str, default: int) -> int:
    resources = getattr(job, "resources", None)
    if resources is None:
        return default
    value = resources.get(name, default) if hasattr(resources, "get") else default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def start_job(job: Any) -> DeviceClaim:
    """Logging into the job's log, ``torch`` limited to the job's threads, image features
    kept in the state folder (``hemaflow.metrics.feature_store``; unless
    ``HEMAFLOW_FEATURE_STORE`` says otherwise), and the job's device (see
    ``hemaflow.devices``): a GPU slot when the rule asks for ``gpu``, the CPU otherwise.
    Imports no torch: a job that needs none (ingest, tables, summaries) starts about 2 s
    sooner (``limit_threads``)."""
    from hemaflow.metrics.feature_store import STORE_ENV

    os.environ.setdefault(STORE_ENV, str((state_root() / "features").absolute()))

    logs = list(getattr(job, "log", []) or [])
    logger = setup_logging(logs[0] if logs else None)
    _explain_storage_errors(job, logger)
    limit_threads(int(getattr(job, "threads", 1) or 1))
    return claim_device(
        state_root() / "gpu-slots",
        gpus_requested=_resource(job, "gpu", 0),
        what=getattr(job, "rule", "job"),
    )


# read by torch's (OpenMP) and numpy's (OpenBLAS, MKL) thread pools when they load
THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """At most ``threads`` compute threads in this process: through the environment for
    torch and numpy's libraries not loaded yet (they read it when they load), and through
    ``torch.set_num_threads`` where torch is loaded already."""
    for name in THREAD_ENVS:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


# errors that mean "the disk is full or the output is not writable"
STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EFBIG,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
}


def storage_error(error: BaseException) -> OSError | None:
    """The OSError of a full disk or an unwritable file behind ``error`` (torch wraps them
    in RuntimeError), else None."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return seen
        if isinstance(seen, OSError) and seen.errno is None and " written" in str(seen):
            return seen  # numpy's short write: "N requested and M written"
        seen = seen.__cause__ or seen.__context__
    return None


def _explain_storage_errors(job: Any, logger: logging.Logger) -> None:
    """A job that dies of a full disk or an unwritable output says so, naming its outputs
    (Snakemake then deletes them: nothing half-written is taken for finished)."""
    previous = sys.excepthook
    outputs = [str(path) for path in (getattr(job, "output", []) or [])]

    def hook(kind, value, traceback):
        cause = storage_error(value)
        if cause is not None:
            logger.critical(
                "%s could not write its outputs (%s): %s. Is the disk full or the folder "
                "not writable? Outputs: %s",
                getattr(job, "rule", "job"),
                os.strerror(cause.errno) if cause.errno else "short write",
                cause,
                ", ".join(outputs) or "none",
            )
        previous(kind, value, traceback)

    sys.excepthook = hook


def retry_options(job: Any, options: Mapping[str, Any], options_cls: type) -> dict[str, Any]:
    """The rule's training options, with the batch size divided by the rule's
    ``batch_divisor`` resource (2 ** (attempt - 1): halved on each retry of a job that
    failed, e.g. out of memory). A smaller batch is a different run, so its resumable
    state is kept apart from the first attempt's."""
    options = dict(options)
    divisor = _resource(job, "batch_divisor", 1)
    if divisor <= 1:
        return options
    full = options_cls.from_config(options).batch_size
    smaller = max(1, full // divisor)
    if smaller != full:
        log.warning(
            "retry: batch size %d -> %d (batch_divisor %d) after a failed attempt",
            full,
            smaller,
            divisor,
        )
        options["batch_size"] = smaller
    return options
