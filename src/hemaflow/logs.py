"""Logging for workflow scripts: everything to the rule's log file, with timestamps."""

from __future__ import annotations

import logging
import sys


def setup_logging(path: str | None = None, level: int = logging.INFO) -> logging.Logger:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logger = logging.getLogger("hemaflow")

    def log_uncaught(kind, value, traceback):  # the reason of a failed job lands in its log
        logger.critical(
            "job failed: %s: %s", kind.__name__, value, exc_info=(kind, value, traceback)
        )

    sys.excepthook = log_uncaught
    return logger
