"""Progress lines that a person can follow in a job's log: the step, the rate and an ETA,
written at a steady interval of wall-clock time, whatever the speed of a step.

Every long job (training, generation, metrics) reports through ``Progress``, so every log
carries the same line, and ``hemaflow status`` finds the last one of a running job::

    train_cyclegan bccd_to_pbc: progress 300/1500 iterations (20.0%), 0.52 iterations/s,
    elapsed 9 min 36 s, ETA 38 min 28 s

(one line in the log). The rate counts the steps done in this run only, so a job resumed
from a checkpoint at step 1000 does not claim the first 1000 steps took no time."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: seconds between two progress lines; ``HEMAFLOW_PROGRESS_SECONDS`` overrides it
DEFAULT_INTERVAL_SECONDS = 30.0
INTERVAL_ENV = "HEMAFLOW_PROGRESS_SECONDS"
#: the word that marks a progress line (``hemaflow status`` searches for it)
MARKER = "progress"
PROGRESS_LINE = re.compile(
    rf"(?P<what>[^:]*): {MARKER} (?P<done>\d+)/(?P<total>\d+) (?P<unit>\S+) "
    r"\((?P<percent>[\d.]+)%\)"
)


def default_interval() -> float:
    """The interval from ``HEMAFLOW_PROGRESS_SECONDS``, else 30 s."""
    value = os.environ.get(INTERVAL_ENV)
    if not value:
        return DEFAULT_INTERVAL_SECONDS
    try:
        seconds = float(value)
    except ValueError as error:
        raise ValueError(f"{INTERVAL_ENV}={value!r}: expected a number of seconds") from error
    if not seconds >= 0:
        raise ValueError(f"{INTERVAL_ENV}={value!r}: expected a number of seconds >= 0")
    return seconds


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min'; '?' when unknown (no step done yet)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True)
class ProgressLine:
    """A progress line read back from a log (see ``parse_progress``)."""

    what: str
    done: int
    total: int
    unit: str
    text: str

    @property
    def finished(self) -> bool:
        return self.done >= self.total


def parse_progress(line: str) -> ProgressLine | None:
    """The progress line in ``line`` (a log line with its timestamp prefix), or None."""
    match = PROGRESS_LINE.search(line)
    if match is None:
        return None
    # ``what`` holds no ':', so the match starts after the logging prefix's last ': '
    what = match.group("what").strip()
    return ProgressLine(
        what=what,
        done=int(match.group("done")),
        total=int(match.group("total")),
        unit=match.group("unit"),
        text=line[match.start() :].strip(),
    )


class Progress:
    """Log ``what: progress done/total unit (pct%), rate unit/s, elapsed .., ETA ..`` once
    per ``interval`` seconds (the first line one interval after the start), and always at
    the last step.

    ``start_at`` is where this run begins (a resumed step): the rate and the ETA count
    only the steps of this run. ``clock`` is for tests."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "steps",
        *,
        start_at: int = 0,
        interval: float | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total < 0:
            raise ValueError(f"progress of {what!r}: total must be >= 0, got {total}")
        self.what = what.replace(":", " ")  # a colon would end the name when read back
        self.total = int(total)
        self.unit = unit
        self.start_at = int(start_at)
        self.interval = default_interval() if interval is None else float(interval)
        self.logger = logger or log
        self.clock = clock
        self.started = clock()
        self.last_logged: float | None = None
        self.done = self.start_at
        self.logged_done: int | None = None

    def rate(self) -> float:
        """Steps per second in this run (0 before any step)."""
        elapsed = self.clock() - self.started
        steps = self.done - self.start_at
        if steps <= 0:
            return 0.0
        return steps / elapsed if elapsed > 0 else math.inf

    def eta(self) -> float:
        """Seconds left at this run's rate (nan when no step is done yet)."""
        if self.done >= self.total:
            return 0.0
        rate = self.rate()
        if rate <= 0:
            return math.nan
        return max(0, self.total - self.done) / rate

    def line(self, extra: str = "") -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.rate()
        rate_text = f"{rate:.3g}" if math.isfinite(rate) else "inf"
        text = (
            f"{self.what}: {MARKER} {self.done}/{self.total} {self.unit} ({percent:.1f}%), "
            f"{rate_text} {self.unit}/s, elapsed {format_duration(self.clock() - self.started)}, "
            f"ETA {format_duration(self.eta())}"
        )
        return f"{text}, {extra}" if extra else text

    def update(self, done: int, extra: str = "") -> bool:
        """Record that ``done`` steps are complete; log a line when the interval has passed
        since the last line (or the start), and at the end. Returns whether it logged."""
        self.done = int(done)
        now = self.clock()
        since = self.started if self.last_logged is None else self.last_logged
        due = now - since >= self.interval or self.done >= self.total
        if due:
            self._log(now, extra)
        return due

    def _log(self, now: float, extra: str) -> None:
        self.last_logged, self.logged_done = now, self.done
        self.logger.info("%s", self.line(extra))

    def finish(self, extra: str = "") -> None:
        """Log where the job ended when the last update did not: a run that stops short
        of ``total`` (early stopping, a shortfall, a step limit) says so too."""
        if self.logged_done != self.done:
            self._log(self.clock(), extra)

    def advance(self, steps: int = 1, extra: str = "") -> bool:
        """``update(done + steps)``."""
        return self.update(self.done + steps, extra)
