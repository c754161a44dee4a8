"""C-WGAN-GP networks, the real-data classifier and the conditional GAN trained on real pbc
cells at 32 px with tiny options: shapes, losses, model files, generation by seed,
bit-exact resume after a kill, refusals and input checks."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hemaflow.models.cwgan import CWGANGenerator, ResidualClassifier, ResidualCritic
from hemaflow.models.dcgan import DCCritic, DCGenerator
from hemaflow.synth.cwgan import (
    CWGAN_LOSS_COLUMNS,
    CWGAN_PRESETS,
    CWGANOptions,
    generate_cwgan,
    load_cwgan,
    load_cwgan_snapshots,
    train_cwgan,
)
from hemaflow.synth.real_classifier import (
    CLASSIFIER_PRESETS,
    RealClassifierOptions,
    classify,
    load_real_classifier,
    train_real_classifier,
)
from hemaflow.train.labelled import BalancedRows
from hemaflow.train.loop import list_checkpoints
from hemaflow.train.losses import hinge_critic_loss, r1_penalty
from hemaflow.train.snapshots import Snapshots, snapshot_iterations
from tests.realdata import load_square_cells

torch.set_num_threads(1)

CLASSES = ("basophil", "eosinophil", "neutrophil")
PER_CLASS = 6

# ------------------------------------------------------------------------------ real cells


@pytest.fixture(scope="module")
def pbc32(shared_datasets: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """6 real pbc cells from each of 3 classes, 32 px, labels indexing CLASSES."""
    paths, labels = [], []
    for index, name in enumerate(CLASSES):
        # hidden files (".DS_*.jpg") are known broken entries of the shared data
        found = [
            p
            for p in sorted((shared_datasets / "pbc" / name).glob("*.jpg"))
            if not p.name.startswith(".")
        ][:PER_CLASS]
        assert len(found) == PER_CLASS
        paths += found
        labels += [index] * PER_CLASS
    return load_square_cells(paths, 32), np.array(labels, np.int64), list(CLASSES)


CLASSIFIER_TINY = dict(
    image_size=32,
    width=8,
    blocks_1=1,
    blocks_2=1,
    blocks_3=1,
    batch_size=6,
    iterations=4,
    checkpoint_every=2,
    log_every=1,
    seed=3,
)
GAN_TINY = dict(
    # the paper's route (residual networks, WGAN-GP), tiny; the cpu preset's DCGAN-shaped
    # route is tested with FAST below
    architecture="residual",
    loss="wgan",
    penalty="gp",
    diffaugment="",
    lambda_class=1.0,
    class_every=1,
    image_size=32,
    width=8,
    z_dim=16,
    embed_dim=4,
    g_blocks_low=1,
    g_blocks_high=1,
    d_blocks_1=1,
    d_blocks_2=1,
    d_blocks_3=0,
    n_critic=2,
    batch_size=6,
    iterations=4,
    checkpoint_every=2,
    log_every=1,
    seed=7,
)
# the GAN's classes, in another order than the classifier's (mapped by name)
ROUTED = ["eosinophil", "basophil"]


def tiny_classifier(**overrides) -> RealClassifierOptions:
    return RealClassifierOptions.from_config({"preset": "cpu", **CLASSIFIER_TINY, **overrides})


def tiny_gan(**overrides) -> CWGANOptions:
    return CWGANOptions.from_config({"preset": "cpu", **GAN_TINY, **overrides})


def routed(pbc32) -> tuple[np.ndarray, np.ndarray]:
    images, labels, names = pbc32
    keep = np.isin(labels, [names.index(n) for n in ROUTED])
    new_labels = np.array([ROUTED.index(names[label]) for label in labels[keep]], np.int64)
    return images[keep], new_labels


def _read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_snapshots(a: list[dict], b: list[dict]) -> bool:
    return [s["iteration"] for s in a] == [s["iteration"] for s in b] and all(
        _same_state(x["state"], y["state"]) for x, y in zip(a, b)
    )


@pytest.fixture(scope="module")
def classifier_file(pbc32, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("classifier")
    summary = train_real_classifier(
        *pbc32, tiny_classifier(), root / "state", root / "model.pt", root / "losses.csv"
    )
    return {"root": root, "path": root / "model.pt", "summary": summary}


@pytest.fixture(scope="module")
def trained(pbc32, classifier_file, tmp_path_factory) -> dict:
    """An uninterrupted tiny C-WGAN-GP run."""
    root = tmp_path_factory.mktemp("cwgan")
    summary = train_cwgan(
        *routed(pbc32),
        ROUTED,
        classifier_file["path"],
        tiny_gan(),
        root / "state",
        root / "model.pt",
        root / "losses.csv",
    )
    return {"root": root, "summary": summary}


# ---------------------------------------------------------------------------------- models


@pytest.mark.parametrize("size", [32, 64])
def test_network_shapes(size):
    torch.manual_seed(0)
    generator = CWGANGenerator(3, z_dim=16, image_size=size, width=8, embed_dim=4, blocks=(2, 4))
    images = generator(torch.randn(2, 16), torch.tensor([0, 2]))
    assert images.shape == (2, 3, size, size) and images.abs().max() <= 1.0
    assert generator.start == size // 2

    critic = ResidualCritic(1, image_size=size, width=8, blocks=(2, 4, 4))
    assert critic(images).shape == (2, 1)
    assert critic.body(images).shape == (2, 8, 8, 8)  # down to width x 8 x 8
    pools = sum(isinstance(m, torch.nn.AvgPool2d) for m in critic.modules())
    assert pools == {32: 1, 64: 2}[size]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in critic.modules())

    classifier = ResidualClassifier(5, image_size=size, width=8, dropout=0.2)
    assert classifier(images).shape == (2, 5)

    projection = ResidualCritic(1, image_size=size, width=8, n_classes=3)
    assert projection(images, torch.tensor([0, 1])).shape == (2, 1)
    with pytest.raises(ValueError, match="labels"):
        projection(images)


def test_network_arguments_are_checked():
    with pytest.raises(ValueError, match="image_size"):
        ResidualCritic(1, image_size=48)
    with pytest.raises(ValueError, match="image_size"):
        CWGANGenerator(2, image_size=100)
    with pytest.raises(ValueError, match="n_classes"):
        CWGANGenerator(0)
    with pytest.raises(ValueError, match="blocks"):
        CWGANGenerator(2, blocks=(2,))


def test_balanced_rows_draw_classes_uniformly():
    labels = np.array([0] * 2 + [1] * 200 + [2] * 20)
    rows, classes = BalancedRows(labels, 3).draw(np.random.default_rng(0), 6000)
    assert np.array_equal(labels[rows], classes)
    assert np.allclose(np.bincount(classes) / 6000, 1 / 3, atol=0.03)
    assert set(rows[classes == 0]) == {0, 1}


# --------------------------------------------------------------------------------- options


def test_presets():
    cpu, paper = CWGANOptions.from_config({"preset": "cpu"}), CWGAN_PRESETS["paper"]
    assert cpu.image_size == 64 and paper.image_size == 64 and paper.width == 64
    assert paper.generator_blocks == (2, 4) and paper.critic_blocks == (2, 4, 4)
    assert paper.iterations == 100_000 and paper.batch_size == 64
    assert (paper.lambda_gp, paper.n_critic, paper.lr) == (10.0, 5, 1e-4)
    assert (paper.beta1, paper.beta2, paper.ema_decay) == (0.0, 0.9, 0.999)
    assert paper.critic_conditioning == "none"
    assert (paper.architecture, paper.loss, paper.penalty) == ("residual", "wgan", "gp")
    assert (cpu.architecture, cpu.loss, cpu.penalty, cpu.n_critic) == ("dcgan", "hinge", "r1", 1)
    assert RealClassifierOptions.from_config({"preset": "paper", "lr": "5e-4"}).lr == 5e-4
    assert CLASSIFIER_PRESETS["cpu"].label_smoothing == 0.1
    # about 5 points on the quality curve, whatever the preset's iterations
    assert cpu.snapshots == paper.snapshots == 5 and CWGANOptions().snapshots == 0
    assert snapshot_iterations(cpu.iterations, cpu.snapshots) == (240, 480, 720, 960, 1_200)


def test_snapshot_iterations_spread_a_count_over_the_run():
    assert snapshot_iterations(10, 3) == (4, 7, 10)
    assert snapshot_iterations(4, 5) == (1, 2, 3, 4)  # fewer iterations than snapshots
    assert snapshot_iterations(0, 5) == () and snapshot_iterations(10, 0) == ()
    with pytest.raises(ValueError, match="total and count"):
        snapshot_iterations(-1, 2)


def test_a_resumed_run_keeps_its_snapshots_when_the_spacing_changed(caplog):
    """A run resumed with another length or count may have passed iterations its new
    spacing wants: it keeps what it took, says which it missed, and takes the rest."""
    snapshots = Snapshots(10, 5)  # at 2, 4, 6, 8, 10
    assert snapshots.load_state_dict([{"iteration": 2, "state": {}}], iteration=3) == []
    assert [s["iteration"] for s in snapshots.state_dict()] == [2]
    assert not caplog.records
    taken = [{"iteration": 3, "state": {"w": 1}}]  # a 6-step run's first of 2
    with caplog.at_level(logging.WARNING, logger="hemaflow.train.snapshots"):
        assert snapshots.load_state_dict(taken, iteration=5) == [2, 4]
    assert "iteration 2, 4, already past and not taken" in caplog.text
    assert "keeps its snapshots of iteration 3" in caplog.text
    assert [s["iteration"] for s in snapshots.state_dict()] == [3]
    assert not snapshots.due(5) and snapshots.due(6) and snapshots.due(10)


@pytest.mark.parametrize(
    ("cls", "section", "key"),
    [
        (CWGANOptions, {"lamda_gp": 5}, "lamda_gp"),
        (CWGANOptions, {"n_critic": 0}, "n_critic"),
        (CWGANOptions, {"image_size": 48}, "image_size"),
        (CWGANOptions, {"beta2": 1.5}, "beta2"),
        (CWGANOptions, {"critic_conditioning": "acgan"}, "critic_conditioning"),
        (CWGANOptions, {"width": "wide"}, "width"),
        (CWGANOptions, {"snapshots": -1}, "snapshots"),
        (RealClassifierOptions, {"dropuot": 0.1}, "dropuot"),
        (RealClassifierOptions, {"label_smoothing": 1.0}, "label_smoothing"),
        (RealClassifierOptions, {"preset": "gpu"}, "preset"),
    ],
)
def test_options_name_the_bad_key(cls, section, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        cls.from_config(section)


# ------------------------------------------------------------------------------ classifier


def test_real_classifier_trains_and_classifies(classifier_file, pbc32):
    summary = classifier_file["summary"]
    assert summary["completed"] and summary["iterations"] == 4
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    rows = _read_log(classifier_file["root"] / "losses.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    net, names, options = load_real_classifier(classifier_file["path"])
    assert names == list(CLASSES) and options == tiny_classifier() and not net.training
    images = pbc32[0]
    probabilities = classify(net, images, batch_size=7)
    assert probabilities.shape == (len(images), 3) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # other sizes are resized to the classifier's
    bigger = np.repeat(np.repeat(images[:2], 2, axis=1), 2, axis=2)
    assert classify(net, bigger).shape == (2, 3)
    with pytest.raises(ValueError, match="images"):
        classify(net, images.astype(np.float32))


# -------------------------------------------------------------------------------- the GAN


def test_cwgan_trains_writes_a_model_and_generates_by_seed(trained):
    summary, root = trained["summary"], trained["root"]
    assert summary["completed"] and summary["iterations"] == 4
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    # no twin classifier in this run: its column stays empty
    unlogged = {"iteration", "lr", "seconds", "loss_twin"}
    assert set(summary["final_losses"]) == set(CWGAN_LOSS_COLUMNS) - unlogged
    rows = _read_log(root / "losses.csv")
    assert list(rows[0]) == list(CWGAN_LOSS_COLUMNS)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(v)) for r in rows for k, v in r.items() if k != "loss_twin")
    assert all(np.isnan(float(r["loss_twin"])) for r in rows)
    assert all(0.0 <= float(r["class_acc_fake"]) <= 1.0 for r in rows)

    generator, names, options = load_cwgan(root / "model.pt")
    assert names == ROUTED and options == tiny_gan() and not generator.training
    images = generate_cwgan(generator, 1, 5, seed=11, batch_size=2)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    torch.manual_seed(123)  # the global RNG plays no part
    assert np.array_equal(images, generate_cwgan(generator, 1, 5, seed=11))
    assert not np.array_equal(images, generate_cwgan(generator, 1, 5, seed=12))
    assert not np.array_equal(images, generate_cwgan(generator, 0, 5, seed=11))
    assert generate_cwgan(generator, 0, 0, seed=1).shape == (0, 32, 32, 3)
    with pytest.raises(ValueError, match="class_index"):
        generate_cwgan(generator, 2, 1, seed=1)
    with pytest.raises(ValueError, match="'n'|n must"):
        generate_cwgan(generator, 0, -1, seed=1)


def test_resume_after_a_kill_is_bit_identical(trained, pbc32, classifier_file, tmp_path):
    state, model, losses = tmp_path / "state", tmp_path / "model.pt", tmp_path / "losses.csv"
    args = (*routed(pbc32), ROUTED, classifier_file["path"], tiny_gan(), state, model, losses)
    stopped = train_cwgan(*args, max_iterations_this_run=3)  # killed after the row of 3
    assert stopped["iterations"] == 3 and not stopped["completed"] and not model.exists()
    assert len(_read_log(losses)) == 3
    resumed = train_cwgan(*args)
    assert resumed["resumed_from"] == 2 and resumed["iterations_this_run"] == 2

    straight = torch.load(trained["root"] / "model.pt", weights_only=True)
    again = torch.load(model, weights_only=True)
    assert straight["G_ema"].keys() == again["G_ema"].keys()
    assert all(torch.equal(straight["G_ema"][k], again["G_ema"][k]) for k in straight["G_ema"])
    last = [
        torch.load(p, weights_only=False)
        for _, p in (list_checkpoints(trained["root"] / "state")[-1], list_checkpoints(state)[-1])
    ]
    for name in ("G", "D"):
        a, b = last[0]["model"][name], last[1]["model"][name]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert _without_seconds(_read_log(losses)) == _without_seconds(
        _read_log(trained["root"] / "losses.csv")
    )
    # the snapshots before the kill came back with the checkpoint
    assert [s["iteration"] for s in again["snapshots"]] == [1, 2, 3, 4]
    assert _same_snapshots(straight["snapshots"], again["snapshots"])


def test_snapshots_are_g_ema_at_their_iterations(trained, pbc32, classifier_file, tmp_path):
    """The cpu preset's 5 snapshots over the tiny run's 4 iterations: one per iteration,
    each the moving average at that iteration; taking them leaves training alone."""
    payload = torch.load(trained["root"] / "model.pt", weights_only=True)
    taken = payload["snapshots"]
    assert [s["iteration"] for s in taken] == [1, 2, 3, 4]
    assert _same_state(taken[-1]["state"], payload["G_ema"])
    (step, path), _ = list_checkpoints(trained["root"] / "state")
    checkpoint = torch.load(path, weights_only=False)["model"]
    assert step == 2 and [s["iteration"] for s in checkpoint["snapshots"]] == [1, 2]
    assert _same_state(taken[1]["state"], checkpoint["G_ema"])
    # a run of 3 iterations without snapshots ends where the snapshot of iteration 3 is
    short = train_cwgan(
        *routed(pbc32),
        ROUTED,
        classifier_file["path"],
        tiny_gan(iterations=3, snapshots=0),
        tmp_path / "state",
        tmp_path / "short.pt",
    )
    assert short["completed"]
    short_payload = torch.load(tmp_path / "short.pt", weights_only=True)
    assert short_payload["snapshots"] == []
    assert _same_state(taken[2]["state"], short_payload["G_ema"])

    generator, names, _ = load_cwgan(trained["root"] / "model.pt")  # ignores them
    snapshots, snapshot_names, options = load_cwgan_snapshots(trained["root"] / "model.pt")
    assert [i for i, _ in snapshots] == [1, 2, 3, 4] and snapshot_names == names
    assert options == tiny_gan() and not any(g.training for _, g in snapshots)
    final = generate_cwgan(generator, 0, 3, seed=1)
    assert np.array_equal(generate_cwgan(snapshots[-1][1], 0, 3, seed=1), final)
    assert not np.array_equal(generate_cwgan(snapshots[0][1], 0, 3, seed=1), final)
    # a file without snapshots: its final generator, at its last iteration
    only, _, _ = load_cwgan_snapshots(tmp_path / "short.pt")
    assert [i for i, _ in only] == [3]


def test_resume_refuses_changed_options(pbc32, classifier_file, tmp_path):
    args = (*routed(pbc32), ROUTED, classifier_file["path"])
    state, model = tmp_path / "state", tmp_path / "model.pt"
    train_cwgan(*args, tiny_gan(), state, model, max_iterations_this_run=2)
    with pytest.raises(ValueError, match="'lambda_class'"):
        train_cwgan(*args, tiny_gan(lambda_class=0.5), state, model)


def test_a_finished_run_asked_for_more_steps_trains_on(trained, pbc32, classifier_file, tmp_path):
    """Raising iterations (and snapshots) resumes a finished run from its last checkpoint:
    2 steps and then 2 more end where the uninterrupted 4-step run ends, bit for bit,
    with its snapshots. Fewer steps than the checkpoint's are refused; a spacing that
    wants a snapshot the run has passed keeps the snapshots it took."""
    args = (*routed(pbc32), ROUTED, classifier_file["path"])
    state, model = tmp_path / "state", tmp_path / "model.pt"
    first = train_cwgan(*args, tiny_gan(iterations=2, snapshots=2), state, model)
    assert first["completed"] and first["iterations"] == 2
    more = train_cwgan(*args, tiny_gan(), state, model)  # 4 steps, 5 snapshots
    assert more["resumed_from"] == 2 and more["iterations_this_run"] == 2
    straight = torch.load(trained["root"] / "model.pt", weights_only=True)
    again = torch.load(model, weights_only=True)
    assert again["iterations"] == 4 and _same_state(straight["G_ema"], again["G_ema"])
    assert _same_snapshots(straight["snapshots"], again["snapshots"])

    with pytest.raises(ValueError, match="written at iteration 4, past the 3 iterations"):
        train_cwgan(*args, tiny_gan(iterations=3), state, model)
    # another spacing: the snapshot it passed (1) is missed, the one taken (2) kept
    other = tmp_path / "other"
    train_cwgan(*args, tiny_gan(iterations=2, snapshots=1), other, tmp_path / "o.pt")
    longer = train_cwgan(*args, tiny_gan(), other, tmp_path / "o.pt")
    assert longer["resumed_from"] == 2 and longer["iterations"] == 4
    snaps, _, _ = load_cwgan_snapshots(tmp_path / "o.pt")
    assert [i for i, _ in snaps] == [2, 3, 4]
    # an option that changes what a step does is still refused
    with pytest.raises(ValueError, match="'lr'"):
        train_cwgan(*args, tiny_gan(iterations=6, lr=1e-3), state, model)


def test_the_workflow_state_of_a_cwgan_is_kept_when_only_its_length_changes(tmp_path):
    """The main job's C-WGAN-GP state folder ignores iterations and snapshots (so raising
    them trains on) and nothing else."""
    from hemaflow.synth.stages import cwgan_state_dir

    pool = pd.DataFrame(
        {
            "record_id": ["a", "b", "c"],
            "split": ["train", "train", "val"],
            "canonical_class": ["basophil", "eosinophil", "basophil"],
        }
    )
    base = cwgan_state_dir(str(tmp_path), tiny_gan(), pool, ROUTED)
    longer = cwgan_state_dir(str(tmp_path), tiny_gan(iterations=40, snapshots=9), pool, ROUTED)
    assert base == longer and base.parent == tmp_path / "cwgan"
    assert cwgan_state_dir(str(tmp_path), tiny_gan(lr=1e-3), pool, ROUTED) != base
    assert cwgan_state_dir(str(tmp_path), tiny_gan(), pool.iloc[:1], ROUTED) != base
    # a run past the length asked for (a user lowered it) is left alone: the shorter run
    # gets a folder of its own, keyed with its length, and a longer one trains on again
    base.mkdir(parents=True)
    (base / "checkpoint-000000030.pt").write_bytes(b"")
    shorter = cwgan_state_dir(str(tmp_path), tiny_gan(iterations=20), pool, ROUTED)
    assert shorter != base and shorter.parent == base.parent
    assert shorter != cwgan_state_dir(str(tmp_path), tiny_gan(iterations=10), pool, ROUTED)
    assert cwgan_state_dir(str(tmp_path), tiny_gan(iterations=30), pool, ROUTED) == base
    assert cwgan_state_dir(str(tmp_path), tiny_gan(iterations=50), pool, ROUTED) == base


def test_projection_critic_trains(pbc32, classifier_file, tmp_path):
    summary = train_cwgan(
        *routed(pbc32),
        ROUTED,
        classifier_file["path"],
        tiny_gan(critic_conditioning="projection", iterations=1, ema_decay=0.0),
        tmp_path / "state",
        tmp_path / "model.pt",
    )
    assert summary["completed"] and all(np.isfinite(v) for v in summary["final_losses"].values())


def test_a_class_missing_from_the_classifier_is_named(pbc32, classifier_file, tmp_path):
    images, labels = routed(pbc32)
    with pytest.raises(ValueError, match="monocyte"):
        train_cwgan(
            images,
            labels,
            ["basophil", "monocyte"],
            classifier_file["path"],
            tiny_gan(),
            tmp_path / "state",
            tmp_path / "model.pt",
        )
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i, lab, n: (i, lab + 1, n), "labels out of range"),
        (lambda i, lab, n: (i, lab.astype(np.float32), n), "labels must be a 1-D integer"),
        (lambda i, lab, n: (i, lab, [*n, "monocyte"]), "empty class: no images labelled monocyte"),
        (lambda i, lab, n: (i.astype(np.float32), lab, n), "images: expected uint8"),
        (lambda i, lab, n: (i, lab[:-1], n), "labels for"),
        (lambda i, lab, n: (i, lab, [n[0], n[0]]), "duplicates"),
        (lambda i, lab, n: (i, lab, []), "class_names is empty"),
    ],
)
def test_inputs_are_checked(pbc32, classifier_file, tmp_path, change, message):
    images, labels, names = change(*routed(pbc32), list(ROUTED))
    with pytest.raises(ValueError, match=message):
        train_cwgan(
            images,
            labels,
            names,
            classifier_file["path"],
            tiny_gan(),
            tmp_path / "state",
            tmp_path / "model.pt",
        )
    with pytest.raises(ValueError, match=message):
        train_real_classifier(
            images, labels, names, tiny_classifier(), tmp_path / "s", tmp_path / "m.pt"
        )


# --------------------------------------------------------- the small DCGAN-shaped route


FAST = dict(
    architecture="dcgan",
    width=4,
    loss="hinge",
    penalty="r1",
    r1_gamma=0.1,
    n_critic=1,
    diffaugment="color,translation,cutout",
)


@pytest.mark.parametrize("size", [32, 64])
def test_dcgan_networks_shapes_and_conditioning(size):
    torch.manual_seed(0)
    generator, critic = DCGenerator(3, z_dim=8, image_size=size, width=4), DCCritic(size, 4, 3)
    for norm in generator.norms:  # class gains and biases that differ by class
        torch.nn.init.normal_(norm.gain.weight, 1.0, 0.5)
        torch.nn.init.normal_(norm.bias.weight, 0.0, 0.5)
    z = torch.randn(4, 8)
    generator.eval()
    a, b = (
        generator(z, torch.zeros(4, dtype=torch.long)),
        generator(z, torch.ones(4, dtype=torch.long)),
    )
    assert a.shape == (4, 3, size, size) and a.abs().max() <= 1
    assert not torch.allclose(a, b)  # the class conditions the image
    assert critic(a, torch.zeros(4, dtype=torch.long)).shape == (4, 1)
    with pytest.raises(ValueError, match="needs labels"):
        critic(a)
    with pytest.raises(ValueError, match="power of two"):
        DCGenerator(3, image_size=48)


def test_hinge_and_r1_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - real) = [0, 0.5] -> 0.25; relu(1 + fake) = [0, 1] -> 0.5
    assert hinge_critic_loss(real, fake).item() == pytest.approx(0.75)
    w = torch.tensor([1.0, -2.0, 3.0])
    x = torch.randn(5, 3, requires_grad=True)
    # a linear critic w.x has gradient w everywhere: gamma / 2 * |w|^2
    assert r1_penalty(x @ w, x, 0.4).item() == pytest.approx(0.2 * 14.0)


def test_dcgan_route_options_are_checked():
    with pytest.raises(ValueError, match="'diffaugment'"):
        tiny_gan(diffaugment="color,zoom")
    with pytest.raises(ValueError, match="'architecture'"):
        tiny_gan(architecture="stylegan")
    with pytest.raises(ValueError, match="'r1_every'"):
        tiny_gan(r1_every=0)


def test_dcgan_route_trains_resumes_bit_identically_and_generates(pbc32, classifier_file, tmp_path):
    options = tiny_gan(**FAST, r1_every=2, class_every=2)
    args = (*routed(pbc32), ROUTED, classifier_file["path"], options)
    straight = train_cwgan(*args, tmp_path / "a", tmp_path / "a.pt", tmp_path / "a.csv")
    assert straight["completed"]
    rows = _read_log(tmp_path / "a.csv")
    # lazy regularization: R1 and the classifier's term on even generator steps only
    gp = [float(r["gp"]) for r in rows]
    assert all(v > 0 for v in gp[0::2]) and all(v == 0 for v in gp[1::2])
    # the classifier's term on even steps; the odd steps log its latest values
    class_loss = [float(r["loss_G_class"]) for r in rows]
    assert all(np.isfinite(class_loss)) and class_loss[1::2] == class_loss[0::2]
    assert len(set(class_loss[0::2])) == len(class_loss[0::2])
    stopped = train_cwgan(
        *args, tmp_path / "b", tmp_path / "b.pt", tmp_path / "b.csv", max_iterations_this_run=3
    )
    assert not stopped["completed"]
    resumed = train_cwgan(*args, tmp_path / "b", tmp_path / "b.pt", tmp_path / "b.csv")
    assert resumed["resumed_from"] == 2
    a = torch.load(tmp_path / "a.pt", weights_only=True)["G_ema"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["G_ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the log too, the lazy term's carried values included (all but the clock)
    untimed = [
        [{k: v for k, v in r.items() if k != "seconds"} for r in _read_log(tmp_path / f)]
        for f in ("a.csv", "b.csv")
    ]
    assert untimed[0] == untimed[1]
    generator, names, loaded = load_cwgan(tmp_path / "a.pt", "cpu")
    assert isinstance(generator, DCGenerator) and loaded == options and names == ROUTED
    images = generate_cwgan(generator, 1, 5, seed=3)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, generate_cwgan(generator, 1, 5, seed=3))


def test_quality_curve_stage_of_the_cwgan(trained, classifier_file, tmp_path):
    """The curve of the tiny run's 4 snapshots from pool files, against the validation
    and held-out rows of each class (never the test rows)."""
    import pandas as pd

    from hemaflow.synth.metric_stages import quality_curve_stage
    from tests.realdata import pbc_cells

    images, names = pbc_cells(11, 64, classes=ROUTED, offset=20)
    splits = ["val"] * 4 + ["held_out"] * 2 + ["test"] * 3 + ["train"] * 2
    pool = pd.DataFrame(
        {
            "canonical_class": names,
            "split": splits * len(ROUTED),
            "pool_index": np.arange(len(images)),
        }
    )
    np.save(tmp_path / "images.npy", images)
    pool.to_parquet(tmp_path / "index.parquet", index=False)
    # the gate's fairness table: the first class's own threshold 0 (every image accepted),
    # the second's min_confidence
    pd.DataFrame({"canonical_class": ROUTED, "min_confidence": [0.0, 0.5]}).to_csv(
        tmp_path / "fair.csv", index=False
    )
    stage = dict(
        pool_images=str(tmp_path / "images.npy"),
        pool_index=str(tmp_path / "index.parquet"),
        generator="cwgan",
        model_path=str(trained["root"] / "model.pt"),
        losses_csv=str(trained["root"] / "losses.csv"),
        curve_section={"images_per_class": 4, "real_per_class": 50, "in_default_target": False},
        seed=0,
        out_csv=str(tmp_path / "curve.csv"),
        out_plot=str(tmp_path / "curve.png"),
        judge_model=str(classifier_file["path"]),
        min_confidence=0.5,
    )
    table = quality_curve_stage(**stage, thresholds_csv=str(tmp_path / "fair.csv"))
    assert table.equals(pd.read_csv(tmp_path / "curve.csv"))
    assert table["acceptance"].between(0, 1).all()
    assert (table.loc[table["canonical_class"] == ROUTED[0], "acceptance"] == 1.0).all()
    assert set(table["generator"]) == {"cwgan"} and sorted(set(table["canonical_class"])) == sorted(
        ROUTED
    )
    logged = {
        int(r["iteration"]): float(r["seconds"]) for r in _read_log(trained["root"] / "losses.csv")
    }
    for _, rows in table.groupby("canonical_class"):
        assert rows["iteration"].tolist() == [1, 2, 3, 4]
        assert rows["seconds"].tolist() == [logged[i] for i in (1, 2, 3, 4)]
    assert (table["real_images"] == 6).all() and (table["fake_images"] == 4).all()
    assert table["kid"].notna().all() and table["precision"].between(0, 1).all()
    assert (tmp_path / "curve.png").stat().st_size > 5_000
    # a fairness table without the column is refused by name, before any image is made
    pd.DataFrame({"canonical_class": ROUTED}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv: no column min_confidence"):
        quality_curve_stage(**{**stage, "thresholds_csv": str(tmp_path / "bad.csv")})


def test_projected_critic_options_are_checked():
    with pytest.raises(ValueError, match="'critic'"):
        tiny_gan(critic="vgg")
    with pytest.raises(ValueError, match="'projected_taps'"):
        tiny_gan(critic="projected", projected_taps=4)
    with pytest.raises(ValueError, match="'projected_input'"):
        tiny_gan(critic="projected", projected_input=32)


def test_projected_critic_route_trains_and_resumes_bit_identically(
    pbc32, classifier_file, tmp_path
):
    options = tiny_gan(
        **{**FAST, "r1_gamma": 0.0},
        critic="projected",
        critic_conditioning="projection",
        projected_input=64,
    )
    args = (*routed(pbc32), ROUTED, classifier_file["path"], options)
    straight = train_cwgan(*args, tmp_path / "a", tmp_path / "a.pt", tmp_path / "a.csv")
    assert straight["completed"]
    assert all(np.isfinite(float(r["loss_D"])) for r in _read_log(tmp_path / "a.csv"))
    train_cwgan(
        *args, tmp_path / "b", tmp_path / "b.pt", tmp_path / "b.csv", max_iterations_this_run=3
    )
    resumed = train_cwgan(*args, tmp_path / "b", tmp_path / "b.pt", tmp_path / "b.csv")
    assert resumed["resumed_from"] == 2
    a = torch.load(tmp_path / "a.pt", weights_only=True)["G_ema"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["G_ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _resumes_bit_identically(args, root: Path, log: bool = False) -> dict:
    """Train ``args`` uninterrupted into ``root``/a, then stopped after 3 steps and resumed
    into ``root``/b; the two models' G_ema must be equal. Returns a's G_ema."""
    train_cwgan(*args, root / "a", root / "a.pt", root / "a.csv" if log else None)
    train_cwgan(*args, root / "b", root / "b.pt", max_iterations_this_run=3)
    assert train_cwgan(*args, root / "b", root / "b.pt")["resumed_from"] == 2
    a = torch.load(root / "a.pt", weights_only=True)["G_ema"]
    b = torch.load(root / "b.pt", weights_only=True)["G_ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    return a


def test_minibatch_std_critic_trains_and_resumes_bit_identically(pbc32, classifier_file, tmp_path):
    with pytest.raises(ValueError, match="'minibatch_std'"):
        tiny_gan(**FAST, minibatch_std=1)
    options = tiny_gan(**FAST, minibatch_std=2)
    _resumes_bit_identically((*routed(pbc32), ROUTED, classifier_file["path"], options), tmp_path)


def test_cpu_bf16_trains_in_bfloat16_and_resumes_bit_identically(
    pbc32, classifier_file, tmp_path, monkeypatch
):
    from hemaflow.train.amp import MixedPrecision

    # the bfloat16 path, whether or not this processor has the instructions for it
    monkeypatch.setenv("HEMAFLOW_CPU_BF16", "on")

    trainer = MixedPrecision()
    trainer.init_amp(torch.device("cpu"), amp=True, cpu_bf16=True)
    conv = torch.nn.Conv2d(3, 4, 3)
    with trainer.autocast():
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.bfloat16
    trainer.init_amp(torch.device("cpu"), amp=True)  # float16 amp is CUDA-only
    with trainer.autocast():
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.float32
    assert trainer.scaler_G is None

    options = tiny_gan(**FAST, cpu_bf16=True)
    args = (*routed(pbc32), ROUTED, classifier_file["path"], options)
    summary = train_cwgan(*args, tmp_path / "a", tmp_path / "a.pt", tmp_path / "a.csv")
    assert summary["completed"] and summary["cpu_bf16"] and not summary["amp"]
    with open(tmp_path / "a.csv") as handle:
        losses = [float(row["loss_D"]) for row in csv.DictReader(handle)]
    assert losses and np.isfinite(losses).all()
    train_cwgan(*args, tmp_path / "b", tmp_path / "b.pt", max_iterations_this_run=3)
    assert train_cwgan(*args, tmp_path / "b", tmp_path / "b.pt")["resumed_from"] == 2
    a = torch.load(tmp_path / "a.pt", weights_only=True)["G_ema"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["G_ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the model is kept in float32 and is not the float32 run's
    assert all(v.dtype != torch.bfloat16 for v in a.values())
    fp32 = (*args[:-1], tiny_gan(**FAST, cpu_bf16=False))
    train_cwgan(*fp32, tmp_path / "c", tmp_path / "c.pt")
    c = torch.load(tmp_path / "c.pt", weights_only=True)["G_ema"]
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # a checkpoint of the float32 run is not resumed as a bfloat16 one
    train_cwgan(*fp32, tmp_path / "d", tmp_path / "d.pt", max_iterations_this_run=3)
    with pytest.raises(ValueError, match="'cpu_bf16'"):
        train_cwgan(*args, tmp_path / "d", tmp_path / "d.pt")


def test_cpu_bf16_is_used_only_where_the_processor_has_it(monkeypatch, caplog):
    """On a processor without bfloat16 (emulated there, 2-15x slower: an AVX2 EPYC) the
    option is ignored with one warning; HEMAFLOW_CPU_BF16 forces it on or off; a bad
    value is refused by name. On a GPU the option does nothing."""
    from hemaflow.train import amp

    trainer = amp.MixedPrecision()
    cpu = torch.device("cpu")
    monkeypatch.delenv("HEMAFLOW_CPU_BF16", raising=False)
    assert isinstance(amp.cpu_has_bf16(), bool)  # the real check runs on this machine
    monkeypatch.setattr(amp, "cpu_has_bf16", lambda: False)
    amp._warn_no_bf16.cache_clear()
    with caplog.at_level(logging.WARNING, logger="hemaflow.train.amp"):
        trainer.init_amp(cpu, amp=True, cpu_bf16=True)
        trainer.init_amp(cpu, amp=True, cpu_bf16=True)
    assert not trainer.use_bf16
    warnings = [r for r in caplog.records if "no bfloat16 support" in r.getMessage()]
    assert len(warnings) == 1 and "HEMAFLOW_CPU_BF16=on" in warnings[0].getMessage()
    with trainer.autocast():
        assert torch.nn.Conv2d(3, 4, 3)(torch.randn(1, 3, 8, 8)).dtype == torch.float32
    monkeypatch.setenv("HEMAFLOW_CPU_BF16", "on")
    trainer.init_amp(cpu, amp=True, cpu_bf16=True)
    assert trainer.use_bf16
    trainer.init_amp(cpu, amp=True, cpu_bf16=False)
    assert not trainer.use_bf16  # on forces nothing that was not asked for

    monkeypatch.setattr(amp, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv("HEMAFLOW_CPU_BF16", "auto")
    trainer.init_amp(cpu, amp=True, cpu_bf16=True)
    assert trainer.use_bf16
    monkeypatch.setenv("HEMAFLOW_CPU_BF16", "off")
    trainer.init_amp(cpu, amp=True, cpu_bf16=True)
    assert not trainer.use_bf16
    trainer.init_amp(torch.device("cuda"), amp=False, cpu_bf16=True)
    assert not trainer.use_bf16
    monkeypatch.setenv("HEMAFLOW_CPU_BF16", "yes")
    with pytest.raises(ValueError, match="HEMAFLOW_CPU_BF16='yes'"):
        trainer.init_amp(cpu, amp=True, cpu_bf16=True)


def test_mode_seeking_pairs_classes_logs_its_term_and_resumes(pbc32, classifier_file, tmp_path):
    with pytest.raises(ValueError, match="'lambda_ms'"):
        tiny_gan(**FAST, lambda_ms=-1.0)
    options = tiny_gan(**FAST, lambda_ms=1.0)
    args = (*routed(pbc32), ROUTED, classifier_file["path"], options)
    a = _resumes_bit_identically(args, tmp_path, log=True)
    rows = _read_log(tmp_path / "a.csv")
    assert rows and all(float(row["loss_G_ms"]) > 0 for row in rows)
    # off, the term is 0 in the log and the run is not the mode-seeking one
    off = (*args[:-1], tiny_gan(**FAST))
    train_cwgan(*off, tmp_path / "c", tmp_path / "c.pt", tmp_path / "c.csv")
    with open(tmp_path / "c.csv") as handle:
        assert all(float(row["loss_G_ms"]) == 0.0 for row in csv.DictReader(handle))
    c = torch.load(tmp_path / "c.pt", weights_only=True)["G_ema"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _model(options, pbc32, classifier_file):
    """A C-WGAN-GP model over the routed classes, ready to train (no loop around it)."""
    from hemaflow.synth.cwgan import CWGANModel
    from hemaflow.synth.real_classifier import load_real_classifier
    from hemaflow.train.loop import ImageSampler, seed_everything

    images, labels = routed(pbc32)
    classifier, names, _ = load_real_classifier(classifier_file["path"], "cpu")
    class_map = torch.tensor([names.index(name) for name in ROUTED])
    model = CWGANModel(
        options, len(ROUTED), classifier, class_map, torch.device("cpu"), seed_everything(0)
    )
    model.sampler = ImageSampler(images, torch.device("cpu"))
    model.balanced = BalancedRows(labels, len(ROUTED))
    return model


def test_mode_seeking_draws_pairs_of_one_class(pbc32, classifier_file):
    model = _model(tiny_gan(**FAST, lambda_ms=1.0, batch_size=16), pbc32, classifier_file)
    seen = []
    generator_forward = model.G.forward
    model.G.forward = lambda z, y: seen.append(y.clone()) or generator_forward(z, y)
    model.train_iteration()
    y = seen[-1]  # the generator step's batch (the critic step's is drawn first)
    assert torch.equal(y[:8], y[8:]) and len(y) == 16 and len(set(y.tolist())) > 1


def test_twin_classifier_learns_the_generators_images_and_enters_its_loss(pbc32, classifier_file):
    model = _model(tiny_gan(**FAST, twin_classifier=True, class_every=2), pbc32, classifier_file)
    guide = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    twin = model.twin.state_dict()
    assert all(torch.equal(guide[k], twin[k]) for k in guide)  # it starts as the guide
    logs = [model.train_iteration() for _ in range(4)]
    # the twin learns (on the guide's steps only), the guide stays frozen
    assert any(not torch.equal(guide[k], v) for k, v in model.twin.state_dict().items())
    assert all(torch.equal(guide[k], v) for k, v in model.classifier.state_dict().items())
    assert all(p.grad is None for p in model.classifier.parameters())
    # the loop logs float() of each value: the class terms are kept as tensors (no sync)
    logs = [{name: float(value) for name, value in log.items()} for log in logs]
    for step, log in enumerate(logs):
        if step % 2:  # no classifier term: the log carries the last one's values
            assert log["loss_twin"] == logs[step - 1]["loss_twin"]
            assert log["loss_G_class"] == logs[step - 1]["loss_G_class"]
            assert log["loss_G"] == pytest.approx(log["loss_G_adv"], rel=1e-5)
            continue
        # the generator's loss: adversarial + lambda * every * (guide's CE - twin's CE)
        weight = model.options.lambda_class * model.options.class_every
        term = weight * (log["loss_G_class"] - log["loss_twin"])
        assert np.isfinite(log["loss_twin"])
        assert log["loss_G"] == pytest.approx(log["loss_G_adv"] + term, abs=1e-5)
    # the first step's twin is still the guide: the two cross-entropies cancel
    assert logs[0]["loss_G_class"] == pytest.approx(logs[0]["loss_twin"], abs=1e-3)
    assert logs[2]["loss_G_class"] != pytest.approx(logs[2]["loss_twin"], abs=1e-6)
    # without the classifier's term there is nothing to twin
    assert (
        _model(
            tiny_gan(**FAST, twin_classifier=True, lambda_class=0.0), pbc32, classifier_file
        ).twin
        is None
    )
    assert _model(tiny_gan(**FAST), pbc32, classifier_file).twin is None


def test_twin_classifier_run_resumes_bit_identically_and_is_its_own_run(
    pbc32, classifier_file, tmp_path
):
    options = tiny_gan(**FAST, twin_classifier=True)
    args = (*routed(pbc32), ROUTED, classifier_file["path"], options)
    a = _resumes_bit_identically(args, tmp_path, log=True)
    rows = _read_log(tmp_path / "a.csv")
    assert rows and any(np.isfinite(float(row["loss_twin"])) for row in rows)
    _, last = list_checkpoints(tmp_path / "b")[-1]
    assert {"twin", "optimizer_twin"} <= set(torch.load(last, weights_only=False)["model"])
    # off: no twin in the log, another generator, and the twin run's checkpoint is refused
    off = (*args[:-1], tiny_gan(**FAST))
    train_cwgan(*off, tmp_path / "c", tmp_path / "c.pt", tmp_path / "c.csv")
    assert all(np.isnan(float(row["loss_twin"])) for row in _read_log(tmp_path / "c.csv"))
    c = torch.load(tmp_path / "c.pt", weights_only=True)["G_ema"]
    assert not all(torch.equal(a[k], c[k]) for k in a)
    train_cwgan(*args, tmp_path / "d", tmp_path / "d.pt", max_iterations_this_run=3)
    with pytest.raises(ValueError, match="'twin_classifier'"):
        train_cwgan(*off, tmp_path / "d", tmp_path / "d.pt")


def test_classifier_judge_accepts_by_the_class_asked_for(pbc32, classifier_file):
    from hemaflow.synth.curve import classifier_judge
    from hemaflow.synth.real_classifier import classify, load_real_classifier

    images, labels, names = pbc32
    net, classes, _ = load_real_classifier(classifier_file["path"], "cpu")
    for name in ROUTED:
        cells = images[labels == names.index(name)][:12]
        probability = classify(net, cells)[:, classes.index(name)]
        for confidence in (0.0, 0.5, 0.9):
            judge = classifier_judge(classifier_file["path"], confidence, "cpu")
            assert judge(name, cells) == pytest.approx((probability >= confidence).mean())
    assert classifier_judge(classifier_file["path"], 0.0, "cpu")(ROUTED[0], cells) == 1.0
    # a class's own threshold (the gate's with fair_confidence) over min_confidence
    own = classifier_judge(classifier_file["path"], 1.0, "cpu", per_class={ROUTED[1]: 0.0})
    assert own(ROUTED[1], cells) == 1.0 and own(ROUTED[0], cells) == pytest.approx(
        (classify(net, cells)[:, classes.index(ROUTED[0])] >= 1.0).mean()
    )
    with pytest.raises(ValueError, match="eosinophil's threshold"):
        classifier_judge(classifier_file["path"], 0.5, per_class={"eosinophil": -0.1})
    with pytest.raises(ValueError, match="'no_such_class' is not among"):
        classifier_judge(classifier_file["path"], 0.5, "cpu")("no_such_class", cells)
    with pytest.raises(ValueError, match="min_confidence"):
        classifier_judge(classifier_file["path"], 1.5)


def test_classifier_judge_reads_its_model_file_once(classifier_file, monkeypatch, tmp_path):
    from hemaflow.synth.curve import classifier_judge

    reads = []
    load = torch.load

    def counted(path, *args, **kwargs):
        reads.append(Path(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    classifier_judge(classifier_file["path"], 0.5, "cpu")
    assert reads == [Path(classifier_file["path"])]
    # a file of another kind is still refused by its kind, after the one read
    other = tmp_path / "other.pt"
    torch.save({"kind": "hemaflow-cwgan", "options": {}}, other)
    with pytest.raises(ValueError, match="not a .* model file"):
        classifier_judge(other, 0.5, "cpu")
