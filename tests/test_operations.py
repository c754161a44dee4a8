"""Running hemaflow for real: profiles, a cluster executor, a killed training job, the
workflow lock, the between-workflow cache and unwritable outputs, on real images."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from .realdata import REPO, require_shared_datasets
from .test_workflow import (
    SIDE_BY_SIDE,
    link_small_subset,
    link_subset,
    planned_jobs,
    snakemake_command,
    write_config,
)

pytestmark = pytest.mark.workflow

BIN = str(Path(sys.executable).parent)
PAIR = "bccd_to_pbc"
MODEL = f"results/normalization/cyclegan/{PAIR}/model.pt"
# a CycleGAN slow enough to be killed mid-run (0.2-0.8 s per iteration at one thread,
# depending on the processor): killed after its checkpoint at 20, resumed to 60
KILLABLE_CYCLEGAN = {
    "preset": "cpu",
    "image_size": 64,
    "ngf": 16,
    "ndf": 16,
    "batch_size": 8,
    "iterations": 60,
    "decay_iterations": 0,
    "checkpoint_every": 10,
    "log_every": 5,
}
GPU_RULES = {
    "train_cyclegan",
    # translates with the CycleGAN (with a fallback configured); the decision of an
    # unlabelled lab without a CycleGAN (normalization.unlabelled: fallback) measures
    # nothing and asks for no GPU
    "normalization_decision",
    "normalize_domain",
    "normalization_metrics",
    "train_real_classifier",
    "train_gate_classifier",
    "gate_real_acceptance",
    "train_cwgan",
    "train_fewshot_meta",
    "adapt_fewshot",
    "generate_class",
    "validation_metrics",
    "synthesis_metrics",
    "train_classifier",
    "evaluate_classifier",
}


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMAFLOW_")}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def run(workdir: Path, *args: str, env=None, check=True, timeout=900):
    result = subprocess.run(
        snakemake_command(workdir, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or environment(),
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    shared = require_shared_datasets()
    root = tmp_path_factory.mktemp("operations") / "data"
    root.mkdir()
    # the small subset (10 pbc images a class, 40 label rows of bccd and Tecom): how a
    # job is run, submitted, killed or cached does not depend on how many images it reads
    link_small_subset(shared, root)
    return root


def profile_args(name: str) -> list[str]:
    return ["--profile", str(REPO / "profiles" / name), "--workflow-profile", "none"]


@pytest.mark.parametrize("profile", ["default", "cpu", "slurm", "kubernetes", "cluster-generic"])
def test_dry_run_with_each_profile(tmp_path, data_root, profile):
    write_config(tmp_path, data_root)
    args = ["-n", *profile_args(profile)]
    if profile == "kubernetes":
        # pods read everything through the storage provider: put the data "in storage"
        storage = tmp_path / "storage"
        linked = storage / str(data_root).lstrip("/")
        linked.parent.mkdir(parents=True)
        linked.symlink_to(data_root)
        args += ["--default-storage-prefix", str(storage)]
    result = run(tmp_path, *args)
    jobs = planned_jobs(result)
    assert jobs["ingest"] == 4 and jobs["train_classifier"] == 1
    # every GPU rule in the plan carries its GPU request to the executor (the two whose
    # request depends on the job: the decisions and normalized copies, below)
    text = result.stdout
    block = text.split("rule train_classifier:", 1)[1].split("\n\n", 1)[0]
    assert "batch_divisor=1" in block
    planned_gpu_rules = 0
    for rule in sorted(GPU_RULES - {"normalization_decision", "normalize_domain"}):
        for block in text.split(f"rule {rule}:")[1:]:
            resources = block.split("\n\n", 1)[0].split("resources:", 1)[1].split("\n", 1)[0]
            assert "gpu=1" in resources, (profile, rule, resources)
            planned_gpu_rules += 1
    assert planned_gpu_rules >= 4, planned_gpu_rules
    ingest = text.split("rule ingest:", 1)[1].split("\n\n", 1)[0]
    assert "gpu=1" not in ingest
    # the cpu profile runs the per-domain jobs at one thread each (two side by side on
    # 2 cores); the local default profile keeps the rule's 2 threads
    normalize = [block.split("\n\n", 1)[0] for block in text.split("rule normalize_domain:")[1:]]
    assert len(normalize) == 4
    if profile in ("default", "cpu"):
        threads = {"threads: 2" in block for block in normalize}
        assert threads == ({False} if profile == "cpu" else {True}), (profile, normalize)
    # a labelled domain's normalization goes first: it feeds the synthesis pool
    first = {"raabin" not in block for block in normalize if "priority: 1" in block}
    assert first == {True} and sum("priority: 1" in block for block in normalize) == 3


def test_pipeline_through_a_cluster_executor(tmp_path, data_root):
    """cluster-generic with the example submit command, from ingest through a CycleGAN to
    its pair's decision (the rest of the DAG, run locally by test_workflow.py, only
    repeats these kinds of job: scripts, CPU rules and GPU rules): every job is submitted,
    GPU rules with their GPU request, and they complete. Each submitted job is a Snakemake
    of its own (a few seconds of start each on 2 cores), so the DAG is kept short."""
    write_config(tmp_path, data_root)
    decision = tmp_path / "results" / "normalization" / "decisions" / f"{PAIR}.json"
    # the profile's 10 s between status checks is polite to a real scheduler; here it
    # would only add up to 10 s of idle wait to each of the pipeline's short jobs
    run(
        tmp_path,
        *profile_args("cluster-generic"),
        "--jobs",
        "2",
        "--seconds-between-status-checks",
        "1",
        str(decision.relative_to(tmp_path)),
        timeout=1500,
    )
    assert json.loads(decision.read_text())["pair"] == PAIR
    rows = [
        line.split("\t")
        for line in (tmp_path / ".hemaflow-state" / "submissions.tsv").read_text().splitlines()
    ]
    submitted = {}
    for _, _, rule, gpus, _, _ in rows:
        submitted.setdefault(rule, set()).add(int(gpus))
    assert {"ingest", "dedup", "train_cyclegan", "normalization_decision"} <= set(submitted)
    for rule, gpus in submitted.items():
        if rule in GPU_RULES:  # this decision compares the CycleGAN with the fallback
            assert gpus == {1}, (rule, gpus)
        else:
            assert gpus == {0}, (rule, gpus)
    # and the job itself said where it ran
    log = tmp_path / "logs" / "normalization" / "train_cyclegan" / f"{PAIR}.log"
    assert "train_cyclegan: device cpu (no CUDA device on this machine" in log.read_text()


def descendants(pid: int) -> list[int]:
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def checkpoints(workdir: Path) -> list[int]:
    return sorted(
        int(p.stem.split("-")[1])
        for p in (workdir / ".hemaflow-state").glob("cyclegan/*/checkpoint-*.pt")
    )


def test_killed_training_resumes_and_the_lock_refuses_a_second_run(tmp_path, data_root):
    env = environment()
    first = tmp_path / "first"
    first.mkdir()
    write_config(first, data_root, **{"normalization.cyclegan": KILLABLE_CYCLEGAN})
    process = subprocess.Popen(
        snakemake_command(first, "--cores", "2", *SIDE_BY_SIDE, "--", MODEL),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not [c for c in checkpoints(first) if c >= 20]:
            assert process.poll() is None, "the run ended before a checkpoint was written"
            assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
            time.sleep(0.5)
        # a second run on the same directory is refused by Snakemake's lock
        second = run(first, "--cores", "1", MODEL, env=env, check=False, timeout=300)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr
        # the machine dies: every process of the run, at once
        victims = [process.pid, *descendants(process.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = max(checkpoints(first))
    assert killed_at < KILLABLE_CYCLEGAN["iterations"]
    assert not (first / MODEL).exists()  # no half-written model taken for a finished one

    run(first, "--unlock", env=env)
    run(first, "--cores", "2", *SIDE_BY_SIDE, "--", MODEL, env=env)
    log = (first / "logs" / "normalization" / "train_cyclegan" / f"{PAIR}.log").read_text()
    assert "resuming from checkpoint at iteration" in log
    resumed = int(log.split("resuming from checkpoint at iteration ")[1].split()[0])
    assert 10 <= resumed <= killed_at
    summary = json.loads((first / MODEL).with_name("summary.json").read_text())
    assert summary["iterations"] == KILLABLE_CYCLEGAN["iterations"]
    assert torch.load(first / MODEL, weights_only=False)["iterations"] == summary["iterations"]


def test_a_second_checkout_takes_trained_models_from_the_cache(tmp_path, data_root):
    """Between-workflow cache: a checkout run from scratch stores the model; another one
    from scratch with the same inputs and parameters takes it instead of training."""
    env = environment(SNAKEMAKE_OUTPUT_CACHE=str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    first, other = tmp_path / "first", tmp_path / "other"
    log = Path("logs") / "normalization" / "train_cyclegan" / f"{PAIR}.log"
    for checkout in (first, other):
        checkout.mkdir()
        write_config(checkout, data_root)
        result = run(checkout, "--cores", "2", *SIDE_BY_SIDE, "--cache", "--", MODEL, env=env)
    # trained once: the second checkout's job log (created by Snakemake) stays empty
    assert "cyclegan: iteration" in (first / log).read_text()
    assert not (other / log).exists() or (other / log).read_text() == ""
    assert "from cache" in result.stdout + result.stderr
    assert (other / MODEL).read_bytes() == (first / MODEL).read_bytes()
    # a changed parameter is a different model: not taken from the cache
    write_config(other, data_root, **{"normalization.cyclegan": KILLABLE_CYCLEGAN})
    jobs = planned_jobs(run(other, "-n", "--cache", "--", MODEL, env=env))
    assert jobs.get("train_cyclegan") == 1


def limit_file_size(limit_bytes: int):
    import resource

    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_a_full_disk_fails_the_job_clearly_and_leaves_no_artifact(tmp_path):
    """Writes beyond 2 MiB fail (EFBIG, as on a full disk) for the run and its jobs."""
    # all of bccd (its cell crops are over 2 MiB), not the small subset of the other tests
    data_root = tmp_path / "data"
    data_root.mkdir()
    link_subset(require_shared_datasets(), data_root)
    write_config(tmp_path, data_root)
    target = "results/ingest/bccd/manifest.parquet"
    result = subprocess.run(
        snakemake_command(tmp_path, "--cores", "1", target),
        capture_output=True,
        text=True,
        timeout=600,
        env=environment(),
        preexec_fn=limit_file_size(2 << 20),
    )
    assert result.returncode != 0
    log = (tmp_path / "logs" / "ingest" / "bccd.log").read_text()
    assert "ingest could not write its outputs (short write)" in log
    assert "Is the disk full or the folder not writable?" in log
    assert "results/ingest/bccd/images.npy" in log  # the outputs are named
    outputs = tmp_path / "results" / "ingest" / "bccd"
    assert not outputs.exists() or not list(outputs.iterdir())  # nothing half-written kept
    # with space again, the same command completes
    run(tmp_path, "--cores", "1", target)
    assert (tmp_path / target).is_file()
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["data_root"] == str(data_root)  # the user's config is untouched


FULL_DISK = """
import resource, sys
from pathlib import Path
import torch
from hemaflow.jobs import storage_error
from hemaflow.train.loop import atomic_torch_save
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # files of at most 1 MiB
target = Path(sys.argv[1])
try:
    atomic_torch_save({"weights": torch.zeros(1 << 20)}, target)  # 4 MiB
except OSError as error:
    print("refused:", error)
    print("storage error:", storage_error(error) is not None)
"""


def test_a_full_disk_leaves_no_model_behind(tmp_path):
    target = tmp_path / "model.pt"
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(target)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"cannot write {target}" in result.stdout
    assert "storage error: True" in result.stdout
    assert list(tmp_path.iterdir()) == []  # neither the model nor its temporary file
