"""GPU device assignment: slots per GPU, the scheduler's CUDA_VISIBLE_DEVICES, the CPU."""

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from hemaflow import devices
from hemaflow.devices import DEVICE_ENV, FAKE_COUNT_ENV, claim_device, resolve_device
from hemaflow.jobs import retry_options, start_job
from hemaflow.metrics.feature_store import STORE_ENV
from hemaflow.train.cyclegan import CycleGANOptions


@pytest.fixture(autouse=True)
def _release():
    yield
    devices.release_all()


HOLDER = """
import sys, time
from hemaflow.devices import claim_device
claim = claim_device(sys.argv[1], timeout=float(sys.argv[2]))
print(claim.physical, claim.device, flush=True)
time.sleep(float(sys.argv[3]))
"""


def holder(lock_root, gpus, hold=5.0, timeout=0.5):
    env = {k: v for k, v in os.environ.items() if k not in (DEVICE_ENV, "CUDA_VISIBLE_DEVICES")}
    env[FAKE_COUNT_ENV] = str(gpus)
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_root), str(timeout), str(hold)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_jobs_get_different_gpus_and_an_extra_job_waits(tmp_path):
    jobs = [holder(tmp_path, 3, hold=30) for _ in range(3)]
    try:
        claimed = [job.stdout.readline().split()[0] for job in jobs]
        assert sorted(claimed) == ["0", "1", "2"]
        # a fourth job finds every slot taken: it waits, then gives up with a clear message
        extra = holder(tmp_path, 3, hold=0, timeout=1.0)
        _, err = extra.communicate(timeout=60)
        assert extra.returncode != 0 and "every GPU slot" in err
        # a holder killed with SIGKILL frees its slot (the kernel drops its flock)
        jobs[1].send_signal(signal.SIGKILL)
        jobs[1].wait(timeout=30)
        late = holder(tmp_path, 3, hold=0, timeout=10)
        out, err = late.communicate(timeout=60)
        assert late.returncode == 0, err
        assert out.split()[0] == claimed[1]
    finally:
        for job in jobs:
            job.kill()
            job.wait()


def test_claims_in_one_process_use_the_slots_in_order(tmp_path):
    env = {FAKE_COUNT_ENV: "2"}
    first = claim_device(tmp_path, env=dict(env))
    second = claim_device(tmp_path, env=dict(env))
    assert (first.physical, second.physical) == ("0", "1")
    assert "fake GPU slot 1 of 2" in first.reason and first.device == "cpu"
    with pytest.raises(TimeoutError, match="every GPU slot"):
        claim_device(tmp_path, env=dict(env), timeout=0.2, poll_seconds=0.05)
    first.release()
    again = claim_device(tmp_path, env=dict(env), timeout=1)
    assert again.physical == "0"


def test_real_gpu_slots_map_to_torch_indices_of_the_visible_devices(tmp_path):
    visible = {"CUDA_VISIBLE_DEVICES": "4,6"}
    env = dict(visible)
    a = claim_device(tmp_path, env=env, device_count=2)
    b = claim_device(tmp_path, env=dict(visible), device_count=2)
    assert (a.device, a.physical) == ("cuda:0", "4")
    assert (b.device, b.physical) == ("cuda:1", "6")
    assert a.lock_path.name == "gpu4.lock" and b.lock_path.name == "gpu6.lock"
    assert env[DEVICE_ENV] == "cuda:0"  # published for the trainers


def test_a_device_set_by_the_scheduler_is_respected(tmp_path):
    claim = claim_device(tmp_path, env={"CUDA_VISIBLE_DEVICES": "3"}, device_count=1)
    assert claim.device == "cuda:0" and claim.physical == "3" and claim.lock_path is None
    assert "scheduler" in claim.reason
    claim = claim_device(tmp_path, env={"CUDA_VISIBLE_DEVICES": ""}, device_count=0)
    assert claim.device == "cpu" and "empty" in claim.reason


def test_no_gpu_runs_on_the_cpu_and_says_so(tmp_path, caplog):
    env = {}
    with caplog.at_level("INFO"):
        claim = claim_device(tmp_path, env=env, device_count=0, what="train_cyclegan")
    assert claim.device == "cpu" and env[DEVICE_ENV] == "cpu"
    assert "train_cyclegan: device cpu (no CUDA device on this machine" in caplog.text
    assert not list(tmp_path.iterdir())  # no lock taken
    assert claim_device(tmp_path, env={DEVICE_ENV: "cuda:7"}).device == "cuda:7"
    assert claim_device(tmp_path, env={}, gpus_requested=0, device_count=4).device == "cpu"


def test_resolve_device_reads_the_claim(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device().type == "cpu"
    assert str(resolve_device("meta")) == "meta"


def test_start_job_logs_claims_and_retry_halves_the_batch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_ENV, raising=False)  # start_job sets it: undone after the test
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.setenv(FAKE_COUNT_ENV, "1")
    job = SimpleNamespace(
        log=[str(tmp_path / "job.log")],
        threads=1,
        resources={"gpu": 1, "batch_divisor": 1},
        rule="train_cyclegan",
    )
    claim = start_job(job)
    assert claim.physical == "0" and (tmp_path / ".hemaflow-state" / "gpu-slots").is_dir()
    assert "train_cyclegan: device cpu (fake GPU slot 1 of 1" in (tmp_path / "job.log").read_text()
    options = {"preset": "cpu", "iterations": 10}
    assert retry_options(job, options, CycleGANOptions) == options
    job.resources["batch_divisor"] = 2  # the second attempt
    assert retry_options(job, options, CycleGANOptions)["batch_size"] == 4  # cpu preset: 8
    job.resources["batch_divisor"] = 64
    assert (
        retry_options(job, {"preset": "cpu", "batch_size": 3}, CycleGANOptions)["batch_size"] == 1
    )


# the library modules of the jobs that train nothing (ingest, dedup, routes, pools,
# balanced sets, tables, summaries): importing them and starting the job loads no torch
NO_TORCH_JOB = """
import os, sys
from types import SimpleNamespace
from hemaflow.jobs import start_job
import hemaflow.classify.leave_one_out, hemaflow.classify.stages, hemaflow.data.ingest
import hemaflow.normalize.stages, hemaflow.summary, hemaflow.synth.curve
import hemaflow.synth.stages, hemaflow.synth.rare_study_report
start_job(SimpleNamespace(log=[], threads=1, resources={}, rule="table"))
assert "torch" not in sys.modules, "torch loaded"
assert os.environ["OMP_NUM_THREADS"] == "1"
import torch
print(torch.get_num_threads())
start_job(SimpleNamespace(log=[], threads=2, resources={}, rule="second"))
print(torch.get_num_threads())
"""


def test_a_job_that_needs_no_torch_starts_without_it_and_torch_keeps_the_job_threads(
    tmp_path,
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEMAFLOW_", "OMP_"))}
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_JOB],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # torch loaded after the job started takes its threads from the environment; a job
    # started with torch loaded sets them directly
    assert result.stdout.split() == ["1", "2"]
