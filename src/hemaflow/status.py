"""Where a workflow run stands, read from its folders alone: which stages' outputs exist,
whether Snakemake holds the working directory, how far its last run got, and for every
job log whether it is being written, ended, stopped short or failed, with the last
progress line (``hemaflow.progress``) of each.

It never imports Snakemake and never takes its lock, so it is safe to run beside a run;
``plan=True`` adds Snakemake's own dry-run count of the jobs left."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hemaflow.progress import ProgressLine, format_duration, parse_progress

#: what each stage of the default run leaves under the results folder (glob patterns);
#: the optional targets (cross_lab, ablation) are listed when they have run
STAGES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("ingest", ("ingest/*/manifest.parquet",), True),
    ("dedup", ("dedup/summary.json",), True),
    ("subgroup + split", ("data/manifest.parquet",), True),
    ("normalization", ("normalization/plan.json", "normalized/*/*/images.npy"), True),
    ("normalization metrics", ("normalization/metrics.csv",), True),
    ("synthesis", ("synthesis/*/balanced/*/manifest.parquet",), True),
    ("synthesis metrics", ("synthesis/*/metrics.csv",), True),
    ("classifier", ("classifier/*/model.pt",), True),
    ("evaluation", ("classifier/*/evaluation/summary.json",), True),
    ("summary", ("summary.json",), True),
    ("report", ("report.html",), True),
    ("cross_lab", ("cross_lab/table.csv",), False),
    ("ablation", ("ablation/table.csv",), False),
)
#: a job log written within this many seconds counts as being written (progress lines come
#: every 30 s by default)
ACTIVE_SECONDS = 300.0
_FAILED = re.compile(r" CRITICAL |job failed|Traceback \(most recent call last\)")
_STEPS = re.compile(r"(\d+) of (\d+) steps \((\d+(?:\.\d+)?%)\) done")


@dataclass(frozen=True)
class StageState:
    name: str
    patterns: tuple[str, ...]
    found: tuple[Path, ...]
    default: bool

    @property
    def done(self) -> bool:
        return all(any(p.match(pattern) for p in self.found) for pattern in self.patterns)


@dataclass(frozen=True)
class JobLog:
    path: Path
    state: str  # running, failed, stopped, ended
    age_seconds: float
    progress: ProgressLine | None
    last_line: str


def stage_states(results: Path) -> list[StageState]:
    states = []
    for name, patterns, default in STAGES:
        found = tuple(sorted({p for pattern in patterns for p in results.glob(pattern)}))
        states.append(StageState(name, patterns, found, default))
    return states


def snakemake_locked(workdir: Path) -> bool:
    """True while a Snakemake run holds ``workdir`` (or one died without ``--unlock``)."""
    locks = workdir / ".snakemake" / "locks"
    return locks.is_dir() and any(locks.iterdir())


def _snakemake_records(root: Path) -> list[tuple[str, Path]]:
    """(output path, record file) under one of Snakemake's file-backend folders
    (``.snakemake/metadata``, ``.snakemake/incomplete``): each record is named by the
    urlsafe base64 of its output path, a long name cut into '@'-prefixed folders."""
    if not root.is_dir():
        return []
    found = []
    for record in root.rglob("*"):
        if not record.is_file() or record.name == "migration_underway":
            continue
        encoded = "".join(part.removeprefix("@") for part in record.relative_to(root).parts)
        try:
            found.append((base64.urlsafe_b64decode(encoded).decode(), record))
        except (binascii.Error, UnicodeDecodeError):
            continue
    return sorted(found)


def incomplete_outputs(workdir: Path, now: float | None = None) -> list[tuple[str, float]]:
    """(output path, seconds since its job started) of every output Snakemake has marked
    incomplete: being made while it runs, left half-made by a run that died."""
    now = time.time() if now is None else now
    records = _snakemake_records(workdir / ".snakemake" / "incomplete")
    return [(path, now - record.stat().st_mtime) for path, record in records]


def recorded_logs(workdir: Path, outputs: set[str] | None = None) -> set[str]:
    """The log files named by Snakemake's metadata records of ``outputs`` (every output
    when None): the logs of jobs that finished, or, for outputs being remade, of the
    job that remakes them (a rule keeps its log path)."""
    logs: set[str] = set()
    for path, record in _snakemake_records(workdir / ".snakemake" / "metadata"):
        if outputs is not None and path not in outputs:
            continue
        try:
            logs.update(json.loads(record.read_text()).get("log") or [])
        except (OSError, ValueError, AttributeError):
            continue
    return {os.path.normpath(log) for log in logs}


def last_snakemake_steps(workdir: Path) -> str | None:
    """'12 of 61 steps (20%) done' from the newest Snakemake log of ``workdir``."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        return None
    newest = max(logs, key=lambda p: p.stat().st_mtime)
    found = None
    for line in newest.read_text(errors="replace").splitlines():
        match = _STEPS.search(line)
        if match:
            found = match.group(0)
    return found


def read_job_log(
    path: Path,
    *,
    locked: bool,
    remaking: bool,
    finished: bool,
    now: float,
    active_seconds: float,
) -> JobLog:
    """The state of one job log. ``remaking``: Snakemake marks its job's outputs
    incomplete; ``finished``: a metadata record of a finished output names it."""
    text = path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    progress = None
    for line in reversed(lines):
        progress = parse_progress(line)
        if progress is not None:
            break
    age = now - path.stat().st_mtime
    unfinished_progress = progress is not None and not progress.finished
    if _FAILED.search(text):
        state = "failed"
    elif locked and (remaking or (not finished and age <= active_seconds)):
        state = "running"
    elif remaking or (not finished and unfinished_progress):
        state = "stopped"  # its run died or was killed before the job ended
    else:
        state = "ended"
    return JobLog(path, state, age, progress, lines[-1] if lines else "")


def job_logs(
    workdir: Path,
    logs: Path,
    locked: bool,
    now: float | None = None,
    active_seconds: float = ACTIVE_SECONDS,
) -> list[JobLog]:
    now = time.time() if now is None else now
    if not logs.is_dir():
        return []
    making = {path for path, _ in incomplete_outputs(workdir, now)}
    remaking = recorded_logs(workdir, making) if making else set()
    finished = recorded_logs(workdir) - remaking
    entries = []
    for path in sorted(logs.rglob("*.log")):
        name = os.path.normpath(os.path.relpath(path, workdir))
        entries.append(
            read_job_log(
                path,
                locked=locked,
                remaking=name in remaking,
                finished=name in finished,
                now=now,
                active_seconds=active_seconds,
            )
        )
    return entries


def snakemake_binary() -> str:
    """The snakemake of this environment (beside its python), else the one on the PATH."""
    beside = Path(sys.executable).parent / "snakemake"
    return str(beside) if beside.is_file() else "snakemake"


def dry_run_summary(
    workdir: Path, snakemake_args: Sequence[str] = (), binary: str | None = None
) -> str:
    """The 'Job stats' table of ``snakemake -n`` in ``workdir`` (the jobs left)."""
    command = [binary or snakemake_binary(), "--dry-run", "--quiet", "rules", *snakemake_args]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    text = result.stdout + result.stderr
    if result.returncode != 0:
        return f"snakemake --dry-run failed ({result.returncode}):\n{text.strip()}"
    if "Nothing to be done" in text or "Job stats" not in text:
        return "nothing left to run"
    table = "Job stats" + text.split("Job stats", 1)[1]
    return "jobs left (snakemake --dry-run): " + table.split("\n\n", 1)[0].rstrip()


def _shorten(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def status_report(
    workdir: str | Path = ".",
    results: str | Path = "results",
    logs: str | Path = "logs",
    *,
    now: float | None = None,
    active_seconds: float = ACTIVE_SECONDS,
    plan: bool = False,
    snakemake_args: Sequence[str] = (),
) -> str:
    """The text ``hemaflow status`` prints (``results`` and ``logs`` relative to
    ``workdir`` unless absolute)."""
    workdir = Path(workdir)
    results_dir, logs_dir = workdir / results, workdir / logs
    locked = snakemake_locked(workdir)
    out = [f"hemaflow status of {workdir.resolve()}"]
    steps = last_snakemake_steps(workdir)
    run = "running (its lock is held)" if locked else "not running"
    out.append(f"snakemake: {run}" + (f"; last run: {steps}" if steps else ""))

    making = incomplete_outputs(workdir, now)
    if making:
        what = "being made"
        if not locked:
            what = "left incomplete by a run that stopped (rerun makes them)"
        out.append(f"outputs {what}:")
        for path, age in making:
            out.append(f"  {path} (started {format_duration(age)} ago)")
    out.append(f"stages ({results_dir}):")
    left = []
    for stage in stage_states(results_dir):
        if not stage.found and not stage.default:
            continue  # an optional target that was never asked for
        mark = "done" if stage.done else ("partial" if stage.found else "missing")
        if stage.default and not stage.done:
            left.append(stage.name)
        count = f"{len(stage.found)} file{'s' if len(stage.found) != 1 else ''}"
        out.append(f"  {mark:<8} {stage.name:<22} {count:<9} {', '.join(stage.patterns)}")
    out.append("left: " + (", ".join(left) if left else "nothing (every stage has its outputs)"))

    entries = job_logs(workdir, logs_dir, locked, now, active_seconds)
    counts = {state: sum(e.state == state for e in entries) for state in ("running", "failed")}
    counts["stopped"] = sum(e.state == "stopped" for e in entries)
    counts["ended"] = sum(e.state == "ended" for e in entries)
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    out.append(f"jobs ({logs_dir}): {len(entries)} logs" + (f": {summary}" if summary else ""))
    for entry in entries:
        if entry.state == "ended":
            continue
        where = os.path.relpath(entry.path, workdir)
        age = format_duration(entry.age_seconds)
        if entry.state == "failed":
            detail = entry.last_line
        elif entry.progress is not None:
            detail = entry.progress.text
        else:
            detail = entry.last_line or "(empty)"
        out.append(f"  {entry.state:<8} {where} (written {age} ago): {_shorten(detail)}")
    if plan:
        out.append(dry_run_summary(workdir, snakemake_args))
    return "\n".join(out)
