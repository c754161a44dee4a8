"""Smoke runs of the bench scripts that need no data: each runs end to end with tiny
sizes in a fresh interpreter, as it would be started by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what a bare GPU machine may lack: the GPU bench must run without them
ABSENT = ("pandas", "snakemake", "yaml", "scipy", "matplotlib", "PIL")


def run_bench(script: str, *args: str, absent: tuple[str, ...] = ()) -> str:
    """Run ``bench/<script>`` with ``args`` in a new process on one thread, the modules
    in ``absent`` made unimportable; return its standard output."""
    code = (
        "import runpy, sys\n"
        f"for name in {absent!r}: sys.modules[name] = None\n"
        f"sys.argv = [{script!r}, *{list(args)!r}]\n"
        f"runpy.run_path({str(REPO / 'bench' / script)!r}, run_name='__main__')\n"
    )
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_gpu_preset_bench_quick_runs_without_data_or_workflow_packages(tmp_path):
    out = run_bench(
        "bench_gpu_presets.py", "--quick", "--out", str(tmp_path), "--threads", "1", absent=ABSENT
    )
    assert "NOTE: no CUDA device in use" in out or "cuda" in out.lower()
    report = json.loads((tmp_path / "gpu_presets.json").read_text())
    names = [row["preset"] for row in report["rows"]]
    for trainer in ("real_classifier", "cwgan", "fewshot_meta", "fewshot_adapt", "cyclegan"):
        assert f"{trainer}/cpu" in names and f"{trainer}/paper" in names
    assert {"classifier/small", "classifier/senet154_ge", "classifier/resnet18"} <= set(names)
    for row in report["rows"]:
        assert row["seconds_per_iteration"] > 0 and row["images_per_second"] > 0
        hours = row["seconds_per_iteration"] * row["schedule_iterations"] / 3600
        assert row["schedule_hours"] == pytest.approx(hours)
    table = (tmp_path / "gpu_presets.md").read_text()
    assert (
        "| cwgan/paper | 2 | 32 |" in table
        and "| classifier/resnet18 | 2 | 16 |" in table
        and "s / iteration" in table
    )


def test_gan_step_bench_quick_prints_the_ratios():
    # ours in bfloat16 against the float32 reference: the flag's path and the plain one
    out = run_bench("bench_gan_step.py", "--quick", "--cpu-bf16")
    assert "ours with cpu_bf16" in out.splitlines()[0], out
    ratios = [line for line in out.splitlines() if "ratio ours/reference" in line]
    assert len(ratios) == 3, out
    assert ratios[0].startswith("C-WGAN-GP dcgan") and ratios[1].startswith("C-WGAN-GP, the")
    assert ratios[2].startswith("few-shot GAN")
    for line in ratios:
        assert float(line.split("ratio ours/reference ")[1].split()[0]) > 0


def test_cyclegan_step_bench_quick_prints_the_ratio():
    out = run_bench("bench_cyclegan_step.py", "--quick", absent=ABSENT)
    ratio = [line for line in out.splitlines() if "ratio ours/reference" in line]
    assert len(ratio) == 1 and ratio[0].startswith("CycleGAN cpu preset, 32 px"), out
    assert float(ratio[0].split("ratio ours/reference ")[1].split()[0]) > 0


def test_layout_bench_quick_prints_a_ratio_per_network():
    out = run_bench("bench_layout.py", "--quick")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "s |" not in line]
    names = [row.split(" | ")[0].strip("| ") for row in rows]
    assert len(names) == 5 and names[0].startswith("classifier")
    for row in rows:
        nchw, last, ratio = (float(cell) for cell in row.strip("| ").split(" | ")[1:])
        assert nchw > 0 and last > 0 and ratio == pytest.approx(nchw / last, rel=0.05)
