"""hemaflow status on a fake working directory: stage outputs, Snakemake's lock, step
count, incomplete markers and metadata records, and the job logs' progress lines."""

import base64
import json
import os
import time
from pathlib import Path

from hemaflow.cli import main
from hemaflow.status import dry_run_summary, incomplete_outputs, status_report

CYCLEGAN_LOG = "logs/normalization/train_cyclegan/bccd_to_pbc.log"
CYCLEGAN_MODEL = "results/normalization/cyclegan/bccd_to_pbc/model.pt"
PREFIX = "2025-01-02 10:11:12,345 INFO hemaflow.train.loop: "


def record_path(root: Path, output: str, max_len: int = 255) -> Path:
    """Where Snakemake's file backend keeps the record of ``output`` (persistence/file.py:
    urlsafe base64, cut into '@'-prefixed folders past the name length limit)."""
    encoded = base64.urlsafe_b64encode(output.encode()).decode()
    parts = [encoded[i : i + max_len - 1] for i in range(0, len(encoded), max_len - 1)]
    return root.joinpath(*["@" + p for p in parts[:-1]], parts[-1])


def write(path: Path, text: str, age: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def fake_run(root: Path) -> None:
    for output in ("ingest/pbc/manifest.parquet", "dedup/summary.json", "data/manifest.parquet"):
        write(root / "results" / output, "x")
    write(root / ".snakemake" / "locks" / "0.input.lock", "")
    write(
        root / ".snakemake" / "log" / "2025-01-02T101112.snakemake.log",
        "5 of 40 steps (12%) done\nrule train_cyclegan:\n6 of 40 steps (15%) done\n",
    )
    metadata, incomplete = root / ".snakemake" / "metadata", root / ".snakemake" / "incomplete"
    write(record_path(metadata, "results/data/manifest.parquet"), '{"log": ["logs/subgroup.log"]}')
    write(root / "logs" / "subgroup.log", PREFIX + "subgroup: 957 kept\n", age=3600)
    # a CycleGAN being remade: its previous run's record names the log
    write(record_path(metadata, CYCLEGAN_MODEL), json.dumps({"log": [CYCLEGAN_LOG]}))
    write(record_path(incomplete, CYCLEGAN_MODEL), '{"external_jobid": null}', age=600)
    write(
        root / CYCLEGAN_LOG,
        PREFIX + "cyclegan: progress 100/1500 iterations (6.7%), 0.5 iterations/s, "
        "elapsed 3 min 20 s, ETA 46 min 40 s\n"
        + PREFIX
        + "cyclegan: iteration 100/1500  loss_g 1.2  200.1 s\n"
        + PREFIX
        + "cyclegan: progress 130/1500 iterations (8.7%), 0.5 iterations/s, "
        "elapsed 4 min 20 s, ETA 45 min 40 s\n",
        age=400,  # quiet for longer than the active window, but its outputs are being made
    )
    # a job started in this run (no record yet), written a moment ago
    write(
        root / "logs/synthesis/cyclegan/train_cwgan.log",
        PREFIX + "cwgan: progress 40/300 iterations (13.3%), 2 iterations/s, "
        "elapsed 20 s, ETA 2 min 10 s\n",
        age=5,
    )
    write(
        root / "logs/synthesis/cyclegan/generate/cwgan/basophil.log",
        PREFIX + "start\n2025-01-02 10:12:00,000 CRITICAL hemaflow: job failed: "
        "ValueError: no images\n",
        age=100,
    )


def test_status_of_a_running_workflow(tmp_path):
    fake_run(tmp_path)
    text = status_report(tmp_path)
    lines = text.splitlines()
    assert "snakemake: running (its lock is held); last run: 6 of 40 steps (15%) done" in text
    assert any(line.startswith(f"  {CYCLEGAN_MODEL} (started 10 min ") for line in lines)
    stage = {line.split()[1]: line.split()[0] for line in lines if line.startswith("  ")}
    assert stage["ingest"] == stage["dedup"] == "done"
    assert stage["normalization"] == stage["classifier"] == stage["report"] == "missing"
    assert "cross_lab" not in stage  # an optional target that never ran
    assert text.count("left: normalization, normalization metrics, synthesis,") == 1
    assert "4 logs: 2 running, 1 failed, 1 ended" in text
    running = {line.split()[1]: line for line in lines if line.startswith("  running")}
    assert running[CYCLEGAN_LOG].endswith(
        "cyclegan: progress 130/1500 iterations (8.7%), 0.5 iterations/s, "
        "elapsed 4 min 20 s, ETA 45 min 40 s"
    )
    assert "cwgan: progress 40/300" in running["logs/synthesis/cyclegan/train_cwgan.log"]
    failed = [line for line in lines if line.startswith("  failed")]
    assert len(failed) == 1 and "job failed: ValueError: no images" in failed[0]
    assert "subgroup.log" not in text  # ended jobs are counted, not listed


def test_status_after_the_run_died(tmp_path):
    fake_run(tmp_path)
    (tmp_path / ".snakemake" / "locks" / "0.input.lock").unlink()
    text = status_report(tmp_path)
    assert "snakemake: not running" in text
    assert "outputs left incomplete by a run that stopped (rerun makes them):" in text
    lines = text.splitlines()
    stopped = {line.split()[1] for line in lines if line.startswith("  stopped")}
    # the CycleGAN's outputs are incomplete; the C-WGAN-GP's last progress line is short
    assert stopped == {CYCLEGAN_LOG, "logs/synthesis/cyclegan/train_cwgan.log"}
    assert not any(line.startswith("  running") for line in lines)


def test_long_output_names_are_read_from_their_cut_record_path(tmp_path):
    output = "results/synthesis/cyclegan/samples/fewshot/" + "immature_granulocyte" * 10
    write(record_path(tmp_path / ".snakemake" / "incomplete", output, max_len=64), "{}")
    assert [path for path, _ in incomplete_outputs(tmp_path)] == [output]


def test_an_empty_folder_says_everything_is_left(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "snakemake: not running" in out
    assert "left: ingest, dedup, subgroup + split, normalization," in out
    assert "jobs (" in out and ": 0 logs" in out


def test_plan_shows_the_jobs_snakemake_would_run(tmp_path):
    fake = tmp_path / "snakemake"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "Building DAG of jobs..."\n'
        'printf "Job stats:\\njob      count\\n-----  -----\\ntrain_cwgan  1\\ntotal  1\\n\\n"\n'
    )
    fake.chmod(0o755)
    assert dry_run_summary(tmp_path, binary=str(fake)).splitlines()[:4] == [
        "jobs left (snakemake --dry-run): Job stats:",
        "job      count",
        "-----  -----",
        "train_cwgan  1",
    ]
    assert "total  1" in dry_run_summary(tmp_path, binary=str(fake))
    fake.write_text('#!/bin/sh\necho "Nothing to be done (all requested files are present)."\n')
    assert dry_run_summary(tmp_path, binary=str(fake)) == "nothing left to run"
    fake.write_text('#!/bin/sh\necho "LockException" >&2\nexit 1\n')
    assert dry_run_summary(tmp_path, binary=str(fake)).startswith("snakemake --dry-run failed (1)")
