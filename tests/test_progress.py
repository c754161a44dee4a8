"""Progress lines: steady interval, rate and ETA of this run, read back by hemaflow status;
every trainer (through run_training), generation and feature extraction write them."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from hemaflow.progress import Progress, format_duration, parse_progress
from hemaflow.synth.generate import generate_gated
from hemaflow.synth.quality import CopyDetector, GateSettings
from hemaflow.train.loop import run_training


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def progress_lines(caplog):
    return [r.getMessage() for r in caplog.records if parse_progress(r.getMessage())]


def test_lines_come_at_a_steady_interval_and_at_the_end(caplog):
    clock = FakeClock()
    progress = Progress("train x", 100, "iterations", interval=30, clock=clock)
    logged = []
    with caplog.at_level(logging.INFO, logger="hemaflow"):
        for step in range(1, 101):
            clock.now += 1.0  # one second per step
            logged.append(progress.update(step))
    # at 30, 60 and 90 s, then the last step
    assert [k + 1 for k, flag in enumerate(logged) if flag] == [30, 60, 90, 100]
    lines = progress_lines(caplog)
    assert lines[0] == (
        "train x: progress 30/100 iterations (30.0%), 1 iterations/s, elapsed 30 s, ETA 1 min 10 s"
    )
    assert lines[-1].endswith("ETA 0 s")


def test_rate_and_eta_count_only_this_run_after_a_resume():
    clock = FakeClock()
    progress = Progress("train x", 1000, "iterations", start_at=800, interval=30, clock=clock)
    assert progress.line().endswith("ETA ?")  # no step done in this run yet
    clock.now += 50.0
    progress.update(900)  # 100 steps in 50 s: 2 per second, 100 left
    assert progress.rate() == pytest.approx(2.0)
    assert progress.eta() == pytest.approx(50.0)


def test_finish_logs_where_a_short_run_ended_once(caplog):
    clock = FakeClock()
    progress = Progress("generate basophil", 50, "images", interval=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="hemaflow"):
        clock.now += 5
        progress.update(20)  # inside the interval: silent
        progress.finish("60 candidates of at most 150")
        progress.finish()  # nothing new: no second line
    lines = progress_lines(caplog)
    assert len(lines) == 1
    assert lines[0].startswith("generate basophil: progress 20/50 images (40.0%)")
    assert lines[0].endswith("60 candidates of at most 150")


def test_a_logged_line_reads_back_with_its_logging_prefix():
    line = (
        "2025-01-02 10:11:12,345 INFO hemaflow.train.loop: cyclegan: progress 300/1500 "
        "iterations (20.0%), 0.52 iterations/s, elapsed 9 min 36 s, ETA 38 min 28 s"
    )
    parsed = parse_progress(line)
    assert parsed is not None
    assert (parsed.what, parsed.done, parsed.total, parsed.unit) == (
        "cyclegan",
        300,
        1500,
        "iterations",
    )
    assert parsed.text.startswith("cyclegan: progress 300/1500") and not parsed.finished
    assert parse_progress("2025-01-02 10:11:12,345 INFO hemaflow: wrote model.pt") is None
    # a colon in the name would end it when read back: it is replaced
    assert Progress("a: b", 1).what == "a  b"


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0 s"), (59.4, "59 s"), (61, "1 min 01 s"), (7380, "2 h 03 min"), (float("nan"), "?")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("HEMAFLOW_PROGRESS_SECONDS", "5")
    assert Progress("x", 1).interval == 5.0
    monkeypatch.setenv("HEMAFLOW_PROGRESS_SECONDS", "soon")
    with pytest.raises(ValueError, match="HEMAFLOW_PROGRESS_SECONDS"):
        Progress("x", 1)


class LinearTrainer:
    def __init__(self):
        self.net = nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1)

    def train_iteration(self):
        loss = self.net(torch.ones(4, 2)).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def state_dict(self):
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])

    def modules(self):
        return [self.net]


def train(tmp_path, total, max_this_run=None):
    return run_training(
        LinearTrainer(),
        kind="toy",
        options={"lr": 0.1},
        total_iterations=total,
        data_fingerprint="data",
        rng=np.random.default_rng(0),
        state_dir=tmp_path / "state",
        checkpoint_every=2,
        log_every=100,
        log_csv=None,
        loss_columns=("iteration", "loss"),
        device=torch.device("cpu"),
        max_iterations_this_run=max_this_run,
    )


def test_every_trainer_reports_progress_through_run_training(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HEMAFLOW_PROGRESS_SECONDS", "0")  # a line per iteration
    with caplog.at_level(logging.INFO, logger="hemaflow"):
        train(tmp_path, 6, max_this_run=4)  # killed after 4 of 6
        first = [parse_progress(line) for line in progress_lines(caplog)]
        caplog.clear()
        train(tmp_path, 6)  # resumed at 4
        second = [parse_progress(line) for line in progress_lines(caplog)]
    assert [p.done for p in first] == [1, 2, 3, 4] and {p.total for p in first} == {6}
    assert [p.done for p in second] == [5, 6] and second[-1].finished
    assert {p.what for p in first + second} == {"toy"}


def test_generation_reports_accepted_images_and_a_shortfall(caplog):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)

    def sample(n, seed):
        return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)

    with caplog.at_level(logging.INFO, logger="hemaflow"):
        generate_gated(
            sample,
            lambda batch: np.tile([0.1, 0.9], (len(batch), 1)),  # never believed
            "basophil",
            ["basophil", "other"],
            5,
            CopyDetector(train_images, max_hamming=8),
            GateSettings(),
            seed=3,
            max_candidates_factor=2.0,
        )
    lines = progress_lines(caplog)
    assert len(lines) == 1
    assert lines[0].startswith("generate basophil: progress 0/5 images (0.0%)")
    assert lines[0].endswith("10 candidates of at most 10")
