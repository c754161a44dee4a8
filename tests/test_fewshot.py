"""Few-shot GAN for rare classes: networks, DiffAugment, the Reptile update, meta-training
with checkpoint/resume on real pbc cells, adaptation to another class, generation."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from hemaflow.models.dcgan import CodeDCCritic, CodeDCGenerator
from hemaflow.models.fewshot import (
    FewShotDiscriminator,
    FewShotGenerator,
    SkipLayerExcitation,
    TaskEncoder,
    diff_augment,
)
from hemaflow.synth.fewshot import (
    LOSS_COLUMNS,
    PRESETS,
    FewShotOptions,
    build_networks,
    mode_seeking_loss,
    reptile_update,
    train_fewshot_meta,
)
from hemaflow.synth.fewshot_adapt import (
    adapt_fewshot,
    generate_fewshot,
    load_fewshot,
    load_fewshot_snapshots,
)
from hemaflow.train.loop import list_checkpoints
from tests.realdata import load_square_cells, pbc_cells

torch.set_num_threads(1)

META_CLASSES = ("basophil", "eosinophil", "neutrophil")
RARE_CLASS = "monocyte"

# ------------------------------------------------------------------------------ real cells


def _class_paths(shared_datasets: Path, name: str, count: int) -> list[Path]:
    # hidden files (".DS_*.jpg") are known broken entries of the shared data
    folder = shared_datasets / "pbc" / name
    paths = [p for p in sorted(folder.glob("*.jpg")) if not p.name.startswith(".")][:count]
    assert len(paths) == count
    return paths


@pytest.fixture(scope="module")
def meta_cells(shared_datasets: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """6 cells of each of 3 pbc classes at 32 px, with labels."""
    images = [load_square_cells(_class_paths(shared_datasets, c, 6), 32) for c in META_CLASSES]
    labels = np.repeat(np.arange(len(META_CLASSES)), 6)
    return np.concatenate(images), labels, list(META_CLASSES)


@pytest.fixture(scope="module")
def rare_cells(shared_datasets: Path) -> np.ndarray:
    """5 cells of a class the meta-training never saw."""
    return load_square_cells(_class_paths(shared_datasets, RARE_CLASS, 5), 32)


TINY = dict(
    # the study's FastGAN route, tiny (the cpu preset's DCGAN-shaped route is tested below)
    architecture="fastgan",
    lambda_rec=1.0,
    lambda_ms=1.0,
    adapt_support=100,
    image_size=32,
    width=4,
    code_dim=8,
    noise_dim=8,
    shots=3,
    batch_size=4,
    meta_iterations=4,
    inner_steps=2,
    meta_lr=0.5,
    adapt_iterations=3,
    checkpoint_every=2,
    log_every=1,
    seed=5,
    # Reptile as published, float32, generation from the trained weights (the cpu
    # preset's kept optimizers, moving average and bfloat16 are tested on their own)
    inner_optimizer="fresh",
    adapt_ema_decay=0.0,
    cpu_bf16=False,
)


def tiny(**overrides) -> FewShotOptions:
    return FewShotOptions.from_config({"preset": "cpu", **TINY, **overrides})


def _read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------- models


@pytest.mark.parametrize("size", [32, 64])
def test_network_shapes(size):
    torch.manual_seed(0)
    encoder = TaskEncoder(width=4, z_dim=8)
    generator = FewShotGenerator(image_size=size, width=4, code_dim=8, noise_dim=6)
    critic = FewShotDiscriminator(image_size=size, width=4, code_dim=8)
    plain = FewShotDiscriminator(image_size=size, width=4)
    support = torch.rand(5, 3, size, size) * 2 - 1
    code = encoder(support)
    assert code.shape == (8,)
    assert encoder(support.expand(2, -1, -1, -1, -1)).shape == (2, 8)
    # the set is mean-pooled: the order of the images does not matter
    assert torch.allclose(encoder(support.flip(0)), code, atol=1e-6)
    fake = generator(code, torch.randn(3, 6))
    assert fake.shape == (3, 3, size, size) and fake.abs().max() <= 1.0
    assert generator(code.expand(3, -1), torch.randn(3, 6)).shape == (3, 3, size, size)
    assert generator.sle_pairs == [(size // 8, size // 2), (size // 4, size)]
    assert critic(fake, code).shape == (3,) and plain(fake).shape == (3,)
    with pytest.raises(ValueError, match="code"):
        critic(fake)


def test_networks_reject_bad_sizes_and_inputs():
    with pytest.raises(ValueError, match="image_size"):
        FewShotGenerator(image_size=48)
    with pytest.raises(ValueError, match="image_size"):
        FewShotDiscriminator(image_size=16)
    generator = FewShotGenerator(image_size=32, width=2, code_dim=4, noise_dim=4)
    with pytest.raises(ValueError, match="noise"):
        generator(torch.zeros(4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="code"):
        generator(torch.zeros(3, 4), torch.zeros(2, 4))


def test_discriminator_has_spectral_norm_on_every_layer():
    critic = FewShotDiscriminator(image_size=32, width=4, code_dim=8)
    layers = [m for m in critic.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) >= 6
    assert all(hasattr(m, "parametrizations") and "weight" in m.parametrizations for m in layers)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) for m in critic.modules())


def test_skip_layer_excitation_gates_channels_in_zero_one():
    torch.manual_seed(0)
    sle = SkipLayerExcitation(low_channels=16, high_channels=6)
    low, high = torch.randn(2, 16, 8, 8), torch.randn(2, 6, 32, 32)
    gate = sle.gate(low)
    assert gate.shape == (2, 6, 1, 1)
    assert (gate > 0).all() and (gate < 1).all()
    out = sle(low, high)
    assert out.shape == high.shape
    assert torch.allclose(out, high * gate)
    assert sle(torch.randn(2, 16, 4, 4), high).shape == high.shape  # any low resolution


# ----------------------------------------------------------------------------- DiffAugment


def test_diff_augment_keeps_shape_passes_gradients_and_is_seeded():
    torch.manual_seed(0)
    x = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    out = diff_augment(x, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        again = diff_augment(x, generator=torch.Generator().manual_seed(1))
        other = diff_augment(x, generator=torch.Generator().manual_seed(2))
        assert torch.equal(out.detach(), again)
        assert not torch.equal(again, other)
        assert not torch.equal(again, x)
        for policy in ("color", "translation", "cutout"):
            assert diff_augment(x, policy).shape == x.shape
        assert torch.equal(diff_augment(x, ""), x)
    with pytest.raises(ValueError, match="'rotate'"):
        diff_augment(x, "color,rotate")


def test_cutout_zeroes_a_square_and_translation_shifts():
    x = torch.ones(2, 3, 32, 32)
    cut = diff_augment(x, "cutout", generator=torch.Generator().manual_seed(0))
    zeros = (cut[:, 0] == 0).flatten(1).sum(dim=1)
    assert ((zeros > 0) & (zeros <= 16 * 16)).all()
    moved = diff_augment(x, "translation", generator=torch.Generator().manual_seed(3))
    assert set(moved.unique().tolist()) <= {0.0, 1.0}  # shifted in, zero-padded


# ------------------------------------------------------------------------------- Reptile


def test_reptile_update_moves_weights_by_exactly_meta_lr():
    torch.manual_seed(0)
    meta = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    fast = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    fast.train()
    fast(torch.randn(5, 3))  # running statistics and the batch counter move
    with torch.no_grad():
        for parameter in fast.parameters():
            parameter.add_(torch.randn_like(parameter))
    before = {k: v.clone() for k, v in meta.state_dict().items()}
    target = {k: v.clone() for k, v in fast.state_dict().items()}
    reptile_update(meta, fast, 0.25)
    after = meta.state_dict()
    for key, value in before.items():
        if value.is_floating_point():
            assert not torch.equal(target[key], value)
            expected = value + 0.25 * (target[key] - value)
            assert torch.allclose(after[key], expected, rtol=0, atol=1e-7), key
        else:
            assert torch.equal(after[key], target[key])  # integer buffers are copied
    assert _same_state(fast.state_dict(), target)  # the fast weights are left alone
    reptile_update(meta, fast, 1.0)
    assert all(torch.allclose(meta.state_dict()[k], target[k]) for k in target)


def test_mode_seeking_loss_rewards_distance_per_noise():
    z1, z2 = torch.zeros(2, 4), torch.ones(2, 4)
    same = mode_seeking_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), z1, z2)
    apart = mode_seeking_loss(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4), z1, z2)
    assert float(same) == pytest.approx(1e5) and float(apart) == pytest.approx(1.0, rel=1e-4)


# --------------------------------------------------------------------------------- options


def test_presets():
    cpu = FewShotOptions.from_config({"preset": "cpu"})
    assert cpu == PRESETS["cpu"] and cpu.image_size == 64 and cpu.architecture == "dcgan"
    assert cpu.lambda_rec == 0.0 and cpu.meta_iterations * cpu.inner_steps <= 4_000
    paper = FewShotOptions.from_config({"preset": "paper", "inner_lr": "1e-4"})
    assert paper.meta_iterations == 20_000 and paper.inner_lr == 1e-4
    assert paper.lambda_ms == 1.0 and paper.loss == "hinge"
    assert FewShotOptions.KIND == "fewshot"
    # the adaptation's snapshots: about 5 points on the quality curve
    assert cpu.snapshots == paper.snapshots == 5 and FewShotOptions().snapshots == 0
    # 0.11.0's cpu route; the paper preset stays the study's Reptile in float32
    assert cpu.inner_optimizer == "kept" and cpu.adapt_ema_decay > 0 and cpu.cpu_bf16
    assert paper.inner_optimizer == "fresh" and paper.adapt_ema_decay == 0
    assert not paper.cpu_bf16


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"preset": "cpu", "shot": 5}, "shot"),
        ({"preset": "tpu"}, "preset"),
        ({"preset": "cpu", "image_size": 48}, "image_size"),
        ({"preset": "cpu", "meta_lr": 1.5}, "meta_lr"),
        ({"preset": "cpu", "meta_lr": 0}, "meta_lr"),
        ({"preset": "cpu", "shots": 0}, "shots"),
        ({"preset": "cpu", "loss": "wasserstein"}, "loss"),
        ({"preset": "cpu", "diffaug": "color,blur"}, "diffaug"),
        ({"preset": "cpu", "lambda_ms": -1.0}, "lambda_ms"),
        ({"preset": "cpu", "width": "wide"}, "width"),
        ({"preset": "cpu", "snapshots": -2}, "snapshots"),
        ({"preset": "cpu", "inner_optimizer": "sgd"}, "inner_optimizer"),
        ({"preset": "cpu", "adapt_ema_decay": 1.0}, "adapt_ema_decay"),
        ({"preset": "cpu", "adapt_freeze_d": -1}, "adapt_freeze_d"),
    ],
)
def test_option_errors_name_the_key(section, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        FewShotOptions.from_config(section)


# ------------------------------------------------------------------------- meta-training


@pytest.fixture(scope="module")
def meta_run(meta_cells, tmp_path_factory) -> dict:
    """One complete tiny meta-training (4 outer iterations of 2 inner steps)."""
    root = tmp_path_factory.mktemp("fewshot-meta")
    images, labels, names = meta_cells
    summary = train_fewshot_meta(
        images,
        labels,
        names,
        tiny(),
        state_dir=root / "state",
        out_model=root / "meta.pt",
        log_csv=root / "losses.csv",
    )
    return {"root": root, "summary": summary}


def test_meta_training_on_real_cells_writes_a_model(meta_run):
    summary, root = meta_run["summary"], meta_run["root"]
    assert summary["completed"] and summary["iterations"] == 4 and summary["device"] == "cpu"
    assert set(summary["final_losses"]) == set(LOSS_COLUMNS) - {"iteration", "lr", "seconds"}
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    rows = _read_log(root / "losses.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r[c])) for r in rows for c in LOSS_COLUMNS)
    assert {float(r["task"]) for r in rows} <= {0.0, 1.0, 2.0}
    assert len(list_checkpoints(root / "state")) == 2
    payload = torch.load(root / "meta.pt", weights_only=True)
    assert payload["class_names"] == list(META_CLASSES)
    assert FewShotOptions.from_dict(payload["options"]) == tiny()
    assert {"encoder", "generator", "discriminator"} <= set(payload)
    torch.manual_seed(5)  # the seed of the run: its initial weights
    _, initial, _ = build_networks(tiny(), torch.device("cpu"))
    assert not _same_state(initial.state_dict(), payload["generator"])  # it learned


def test_meta_kill_and_resume_is_bit_identical(meta_run, meta_cells, tmp_path, caplog):
    images, labels, names = meta_cells
    state, model, losses = tmp_path / "state", tmp_path / "meta.pt", tmp_path / "losses.csv"
    stopped = train_fewshot_meta(
        images, labels, names, tiny(), state, model, losses, max_iterations_this_run=3
    )
    assert stopped["iterations"] == 3 and not stopped["completed"] and not model.exists()
    caplog.set_level(logging.INFO, logger="hemaflow.train")
    resumed = train_fewshot_meta(images, labels, names, tiny(), state, model, losses)
    assert "resuming from checkpoint at iteration 2" in caplog.text
    assert resumed["resumed_from"] == 2 and resumed["completed"]
    straight = torch.load(meta_run["root"] / "meta.pt", weights_only=True)
    again = torch.load(model, weights_only=True)
    for name in ("encoder", "generator", "discriminator"):
        assert _same_state(straight[name], again[name]), name
    assert _without_seconds(_read_log(losses)) == _without_seconds(
        _read_log(meta_run["root"] / "losses.csv")
    )


def test_meta_resume_refuses_changed_options(meta_cells, tmp_path):
    images, labels, names = meta_cells
    state = tmp_path / "state"
    train_fewshot_meta(
        images, labels, names, tiny(), state, tmp_path / "m.pt", max_iterations_this_run=2
    )
    with pytest.raises(ValueError, match="'meta_lr'"):
        train_fewshot_meta(images, labels, names, tiny(meta_lr=0.1), state, tmp_path / "m.pt")
    # options of the adaptation stage do not change the meta-training run
    summary = train_fewshot_meta(
        images,
        labels,
        names,
        tiny(adapt_lr=1e-3, meta_iterations=3),
        tmp_path / "other",
        tmp_path / "m2.pt",
        max_iterations_this_run=2,
    )
    assert summary["iterations"] == 2
    resumed = train_fewshot_meta(
        images,
        labels,
        names,
        tiny(adapt_lr=5e-4, snapshots=2, meta_iterations=3),
        tmp_path / "other",
        tmp_path / "m2.pt",
    )
    assert resumed["resumed_from"] == 2 and resumed["completed"]


def test_meta_training_validates_its_inputs(meta_cells, tmp_path):
    images, labels, names = meta_cells
    out = tmp_path / "m.pt"
    few = labels != 2
    few[np.flatnonzero(labels == 2)[:4]] = True
    with pytest.raises(ValueError, match="'neutrophil' has 4 images, fewer than shots=5"):
        train_fewshot_meta(images[few], labels[few], names, tiny(shots=5), tmp_path / "s", out)
    with pytest.raises(ValueError, match="images: expected uint8"):
        train_fewshot_meta(images.astype(np.float32), labels, names, tiny(), tmp_path / "s", out)
    with pytest.raises(ValueError, match="labels: expected one label per image"):
        train_fewshot_meta(images, labels[:-1], names, tiny(), tmp_path / "s", out)
    with pytest.raises(ValueError, match="labels: 3 is not an index"):
        train_fewshot_meta(images, np.where(labels == 2, 3, labels), names, tiny(), tmp_path, out)
    with pytest.raises(ValueError, match="class_names"):
        train_fewshot_meta(images, labels, [], tiny(), tmp_path / "s", out)
    assert not out.exists()


# ---------------------------------------------------------------------------- adaptation


@pytest.fixture(scope="module")
def adapted(meta_run, rare_cells, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fewshot-adapt")
    summary = adapt_fewshot(
        meta_run["root"] / "meta.pt",
        rare_cells,
        tiny(),
        state_dir=root / "state",
        out_model=root / "adapted.pt",
        log_csv=root / "losses.csv",
    )
    return {"root": root, "summary": summary}


def test_adaptation_to_an_unseen_class_writes_a_model(adapted, meta_run):
    summary, root = adapted["summary"], adapted["root"]
    assert summary["completed"] and summary["iterations"] == 3 and summary["n_images"] == 5
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    assert [int(r["iteration"]) for r in _read_log(root / "losses.csv")] == [1, 2, 3]
    payload = torch.load(root / "adapted.pt", weights_only=True)
    assert payload["code"].shape == (8,) and torch.isfinite(payload["code"]).all()
    meta = torch.load(meta_run["root"] / "meta.pt", weights_only=True)
    assert not _same_state(meta["generator"], payload["generator"])  # fine-tuned


def test_adaptation_resumes_bit_identically(adapted, meta_run, rare_cells, tmp_path):
    meta = meta_run["root"] / "meta.pt"
    state, model = tmp_path / "state", tmp_path / "adapted.pt"
    stopped = adapt_fewshot(meta, rare_cells, tiny(), state, model, max_iterations_this_run=2)
    assert not stopped["completed"] and not model.exists()
    resumed = adapt_fewshot(meta, rare_cells, tiny(), state, model)
    assert resumed["resumed_from"] == 2
    straight = torch.load(adapted["root"] / "adapted.pt", weights_only=True)
    again = torch.load(model, weights_only=True)
    assert _same_state(straight["generator"], again["generator"])
    assert torch.equal(straight["code"], again["code"])
    # the snapshot of iteration 1 came back with the checkpoint, 2 and 3 were taken again
    assert [s["iteration"] for s in again["snapshots"]] == [1, 2, 3]
    for a, b in zip(straight["snapshots"], again["snapshots"]):
        assert a["iteration"] == b["iteration"]
        assert _same_state(a["state"]["generator"], b["state"]["generator"])
        assert torch.equal(a["state"]["code"], b["state"]["code"])


def test_adaptation_snapshots_are_the_model_at_their_iterations(
    adapted, meta_run, rare_cells, tmp_path
):
    """The cpu preset's 5 snapshots over 3 adaptation iterations: one per iteration, each
    the generator and task code the model file would hold had the run ended there."""
    payload = torch.load(adapted["root"] / "adapted.pt", weights_only=True)
    taken = payload["snapshots"]
    assert [s["iteration"] for s in taken] == [1, 2, 3]
    assert _same_state(taken[-1]["state"]["generator"], payload["generator"])
    assert torch.equal(taken[-1]["state"]["code"], payload["code"])
    # 2 iterations without snapshots end where the snapshot of iteration 2 is: taking
    # them left the training alone
    short = adapt_fewshot(
        meta_run["root"] / "meta.pt",
        rare_cells,
        tiny(adapt_iterations=2, snapshots=0),
        tmp_path / "state",
        tmp_path / "short.pt",
    )
    assert short["completed"]
    short_payload = torch.load(tmp_path / "short.pt", weights_only=True)
    assert short_payload["snapshots"] == []
    assert _same_state(taken[1]["state"]["generator"], short_payload["generator"])
    assert torch.equal(taken[1]["state"]["code"], short_payload["code"])

    generator, code, _ = load_fewshot(adapted["root"] / "adapted.pt")  # ignores them
    snapshots, options = load_fewshot_snapshots(adapted["root"] / "adapted.pt")
    assert [i for i, _, _ in snapshots] == [1, 2, 3] and options == tiny()
    final = generate_fewshot(generator, code, 3, seed=1)
    assert np.array_equal(generate_fewshot(snapshots[-1][1], snapshots[-1][2], 3, seed=1), final)
    assert not np.array_equal(generate_fewshot(snapshots[0][1], snapshots[0][2], 3, 1), final)
    only, _ = load_fewshot_snapshots(tmp_path / "short.pt")
    assert [i for i, _, _ in only] == [2]


def test_fewshot_quality_curve_counts_meta_training_time(adapted, meta_run):
    from hemaflow.synth.curve import CurveSettings, fewshot_curve, training_seconds

    held_out, _ = pbc_cells(6, 32, classes=[RARE_CLASS], offset=10)
    table = fewshot_curve(
        adapted["root"] / "adapted.pt",
        adapted["root"] / "losses.csv",
        RARE_CLASS,
        held_out,
        CurveSettings(images_per_class=4, real_per_class=5),
        meta_losses_csv=meta_run["root"] / "losses.csv",
    )
    assert table["iteration"].tolist() == [1, 2, 3]
    assert set(table["generator"]) == {"fewshot"} and set(table["canonical_class"]) == {RARE_CLASS}
    meta_seconds = training_seconds(meta_run["root"] / "losses.csv")
    adapt = {
        int(r["iteration"]): float(r["seconds"]) for r in _read_log(adapted["root"] / "losses.csv")
    }
    assert np.allclose(table["seconds"], [meta_seconds + adapt[i] for i in (1, 2, 3)])
    assert (table["real_images"] == 5).all() and (table["fake_images"] == 4).all()
    assert table["kid"].notna().all() and table["recall"].between(0, 1).all()


def test_adaptation_to_a_large_class_subsamples_its_support_set(
    meta_run, rare_cells, tmp_path, monkeypatch
):
    """The ablation's few-shot-for-all adapts to classes of thousands of images: each step
    sees at most adapt_support of them, chosen anew (seeded), not the whole class."""
    from hemaflow.train.loop import ImageSampler

    seen = []
    original = ImageSampler.sample_rows

    def spy(self, rng, rows):
        seen.append(tuple(int(r) for r in rows))
        return original(self, rng, rows)

    monkeypatch.setattr(ImageSampler, "sample_rows", spy)
    summary = adapt_fewshot(
        meta_run["root"] / "meta.pt",
        rare_cells,
        tiny(adapt_support=3),
        tmp_path / "state",
        tmp_path / "adapted.pt",
    )
    assert summary["completed"] and summary["n_images"] == 5
    # per step: the support set (3 distinct rows, sorted), then the real batch
    support = seen[0::2]
    assert len(support) == 3 and all(len(set(rows)) == len(rows) == 3 for rows in support)
    assert all(list(rows) == sorted(rows) for rows in support)
    assert len(set(support)) > 1  # a new subset each step
    assert not any(len(rows) == 5 for rows in seen)  # never the whole class


def test_adaptation_validates_its_inputs(meta_run, rare_cells, tmp_path):
    meta = meta_run["root"] / "meta.pt"
    out = tmp_path / "a.pt"
    with pytest.raises(ValueError, match="empty adaptation set"):
        adapt_fewshot(meta, rare_cells[:0], tiny(), tmp_path / "s", out)
    with pytest.raises(ValueError, match="images: expected uint8"):
        adapt_fewshot(meta, rare_cells.astype(np.int32), tiny(), tmp_path / "s", out)
    with pytest.raises(ValueError, match="'width'"):
        adapt_fewshot(meta, rare_cells, tiny(width=8), tmp_path / "s", out)
    with pytest.raises(FileNotFoundError, match="meta_model_path"):
        adapt_fewshot(tmp_path / "missing.pt", rare_cells, tiny(), tmp_path / "s", out)
    with pytest.raises(ValueError, match="adapt it"):
        load_fewshot(meta)
    assert not out.exists()


# ---------------------------------------------------------------------------- generation


def test_generation_is_deterministic_by_seed(adapted):
    generator, code, options = load_fewshot(adapted["root"] / "adapted.pt")
    assert options == tiny() and not generator.training and code.shape == (8,)
    state = torch.get_rng_state()
    images = generate_fewshot(generator, code, 6, seed=11, batch_size=4)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, generate_fewshot(generator, code, 6, seed=11))
    assert not np.array_equal(images, generate_fewshot(generator, code, 6, seed=12))
    assert not np.array_equal(images[0], images[1])  # different noise, different images
    assert generate_fewshot(generator, code, 0, seed=1).shape == (0, 32, 32, 3)


def test_dcgan_architecture_meta_trains_resumes_adapts_and_generates(
    meta_cells, rare_cells, tmp_path
):
    options = tiny(architecture="dcgan", width=8)
    encoder, generator, discriminator = build_networks(options, torch.device("cpu"))
    assert isinstance(generator, CodeDCGenerator) and isinstance(discriminator, CodeDCCritic)
    assert encoder.width == 4  # a quarter of the width, at least 4
    code = torch.randn(8)
    assert generator(code, torch.randn(3, 8)).shape == (3, 3, 32, 32)
    assert discriminator(torch.randn(3, 3, 32, 32), code).shape == (3,)

    images, labels, names = meta_cells
    args = (images, labels, names, options)
    straight = train_fewshot_meta(*args, tmp_path / "a", tmp_path / "a.pt", tmp_path / "a.csv")
    assert straight["completed"]
    train_fewshot_meta(*args, tmp_path / "b", tmp_path / "b.pt", max_iterations_this_run=3)
    assert train_fewshot_meta(*args, tmp_path / "b", tmp_path / "b.pt")["resumed_from"] == 2
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "ab")
    for name in ("encoder", "generator", "discriminator"):
        assert _same_state(a[name], b[name]), name
    # an adaptation must use the meta model's architecture
    with pytest.raises(ValueError, match="'architecture'"):
        adapt_fewshot(
            tmp_path / "a.pt", rare_cells, tiny(width=8), tmp_path / "c", tmp_path / "c.pt"
        )
    adapt_fewshot(tmp_path / "a.pt", rare_cells, options, tmp_path / "d", tmp_path / "d.pt")
    generator, code, loaded = load_fewshot(tmp_path / "d.pt", "cpu")
    assert loaded == options
    out = generate_fewshot(generator, code, 4, seed=1)
    assert out.shape == (4, 32, 32, 3) and np.array_equal(
        out, generate_fewshot(generator, code, 4, seed=1)
    )


def test_projected_critic_meta_trains_resumes_and_adapts(meta_cells, rare_cells, tmp_path):
    from hemaflow.models.projected import CodeProjectedCritic

    options = tiny(architecture="dcgan", width=8, critic="projected", projected_input=64)
    _, _, discriminator = build_networks(options, torch.device("cpu"))
    assert isinstance(discriminator, CodeProjectedCritic)
    code = torch.randn(options.code_dim)
    scores = discriminator(torch.randn(3, 3, 32, 32), code)
    assert scores.shape[0] == 3 and scores.dim() == 2
    with pytest.raises(ValueError, match="task code"):
        discriminator(torch.randn(3, 3, 32, 32))
    backbone = discriminator.backbone[0].weight.clone()

    images, labels, names = meta_cells
    args = (images, labels, names, options)
    assert train_fewshot_meta(*args, tmp_path / "a", tmp_path / "a.pt")["completed"]
    train_fewshot_meta(*args, tmp_path / "b", tmp_path / "b.pt", max_iterations_this_run=3)
    assert train_fewshot_meta(*args, tmp_path / "b", tmp_path / "b.pt")["resumed_from"] == 2
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "ab")
    for name in ("encoder", "generator", "discriminator"):
        assert _same_state(a[name], b[name]), name
    # the pretrained backbone is not trained by the Reptile updates
    assert torch.equal(a["discriminator"]["backbone.0.weight"], backbone)
    # an adaptation must use the meta model's critic
    with pytest.raises(ValueError, match="'critic'"):
        adapt_fewshot(
            tmp_path / "a.pt",
            rare_cells,
            tiny(architecture="dcgan", width=8),
            tmp_path / "c",
            tmp_path / "c.pt",
        )
    adapt_fewshot(tmp_path / "a.pt", rare_cells, options, tmp_path / "d", tmp_path / "d.pt")
    generator, code, _ = load_fewshot(tmp_path / "d.pt", "cpu")
    assert generate_fewshot(generator, code, 2, seed=1).shape == (2, 32, 32, 3)


def test_projected_critic_options_are_checked():
    with pytest.raises(ValueError, match="'critic'"):
        tiny(critic="vgg")
    with pytest.raises(ValueError, match="'projected_taps'"):
        tiny(critic="projected", projected_taps=0)


def test_cpu_bf16_meta_trains_resumes_and_adapts(meta_cells, rare_cells, tmp_path, monkeypatch):
    monkeypatch.setenv("HEMAFLOW_CPU_BF16", "on")  # on any processor
    options = tiny(architecture="dcgan", width=8, cpu_bf16=True)
    images, labels, names = meta_cells
    args = (images, labels, names, options)
    straight = train_fewshot_meta(*args, tmp_path / "a", tmp_path / "a.pt")
    assert straight["completed"] and straight["cpu_bf16"]
    train_fewshot_meta(*args, tmp_path / "b", tmp_path / "b.pt", max_iterations_this_run=3)
    assert train_fewshot_meta(*args, tmp_path / "b", tmp_path / "b.pt")["resumed_from"] == 2
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "ab")
    for name in ("encoder", "generator", "discriminator"):
        assert _same_state(a[name], b[name]), name
    assert all(v.dtype != torch.bfloat16 for v in a["generator"].values())
    adapted = adapt_fewshot(
        tmp_path / "a.pt", rare_cells, options, tmp_path / "d", tmp_path / "d.pt"
    )
    assert adapted["cpu_bf16"]
    generator, code, _ = load_fewshot(tmp_path / "d.pt", "cpu")
    out = generate_fewshot(generator, code, 3, seed=1)
    assert out.shape == (3, 32, 32, 3) and out.std() > 0


def _adapted_straight_and_resumed(meta, cells, options, tmp_path):
    """The model files of an adaptation run straight through and of one stopped after 2
    iterations and resumed (checked to resume from 2), in tmp_path's straight/ and resumed/."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    adapt_fewshot(meta, cells, options, straight / "state", straight / "model.pt")
    state, model = resumed / "state", resumed / "model.pt"
    adapt_fewshot(meta, cells, options, state, model, max_iterations_this_run=2)
    assert adapt_fewshot(meta, cells, options, state, model)["resumed_from"] == 2
    return [torch.load(d / "model.pt", weights_only=True) for d in (straight, resumed)]


def test_kept_inner_optimizers_and_adaptation_average_resume_bit_identically(
    meta_run, adapted, meta_cells, rare_cells, tmp_path
):
    images, labels, names = meta_cells
    kept = tiny(inner_optimizer="kept")
    args = (images, labels, names, kept)
    straight = train_fewshot_meta(*args, tmp_path / "a", tmp_path / "a.pt")
    assert straight["completed"]
    train_fewshot_meta(*args, tmp_path / "b", tmp_path / "b.pt", max_iterations_this_run=3)
    assert train_fewshot_meta(*args, tmp_path / "b", tmp_path / "b.pt")["resumed_from"] == 2
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "ab")
    fresh = torch.load(meta_run["root"] / "meta.pt", weights_only=True)
    for name in ("encoder", "generator", "discriminator"):
        assert _same_state(a[name], b[name]), name
    # the kept moments change the run: it is not the published Reptile's
    assert not _same_state(a["generator"], fresh["generator"])
    # a meta checkpoint of fresh optimizers is not resumed as a kept-optimizer run
    train_fewshot_meta(
        images, labels, names, tiny(), tmp_path / "c", tmp_path / "c.pt", max_iterations_this_run=2
    )
    with pytest.raises(ValueError, match="inner_optimizer"):
        train_fewshot_meta(*args, tmp_path / "c", tmp_path / "c.pt")

    # the adaptation's moving average: resumed bit for bit, generation from the average
    meta = meta_run["root"] / "meta.pt"
    d, e = _adapted_straight_and_resumed(meta, rare_cells, tiny(adapt_ema_decay=0.5), tmp_path)
    plain = torch.load(adapted["root"] / "adapted.pt", weights_only=True)
    assert _same_state(d["generator"], e["generator"]) and torch.equal(d["code"], e["code"])
    for x, y in zip(d["snapshots"], e["snapshots"], strict=True):
        assert _same_state(x["state"]["generator"], y["state"]["generator"])
    # same training (the average does not feed back), other weights to generate with
    assert _same_state(d["discriminator"], plain["discriminator"])
    assert not _same_state(d["generator"], plain["generator"])
    generator, code, _ = load_fewshot(tmp_path / "straight" / "model.pt", "cpu")
    assert generate_fewshot(generator, code, 2, seed=1).std() > 0


def test_frozen_discriminator_layers_keep_their_meta_weights_and_resume(
    meta_run, rare_cells, tmp_path
):
    """adapt_freeze_d (FreezeD): the discriminator's first convolutions keep the meta
    model's weights through the adaptation, the rest are trained; resumed bit for bit; a
    checkpoint of another setting is refused, as is a count past the network's."""
    meta = meta_run["root"] / "meta.pt"
    a, b = _adapted_straight_and_resumed(meta, rare_cells, tiny(adapt_freeze_d=2), tmp_path)
    for name in ("generator", "discriminator"):
        assert _same_state(a[name], b[name]), name
    start = torch.load(meta, weights_only=True)["discriminator"]
    convolutions = [k for k in start if start[k].dim() == 4]  # the kernels, in order
    assert len(convolutions) > 2
    for k in convolutions[:2]:
        assert torch.equal(a["discriminator"][k], start[k]), k
    for k in convolutions[2:]:
        assert not torch.equal(a["discriminator"][k], start[k]), k
    with pytest.raises(ValueError, match="adapt_freeze_d"):
        state = tmp_path / "resumed" / "state"
        adapt_fewshot(meta, rare_cells, tiny(adapt_freeze_d=1), state, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="adapt_freeze_d = 9"):
        adapt_fewshot(meta, rare_cells, tiny(adapt_freeze_d=9), tmp_path / "d", tmp_path / "d.pt")


def test_the_workflow_meta_state_ignores_the_adaptation_options(tmp_path):
    from hemaflow.synth.stages import fewshot_meta_state_dir

    pool = pd.DataFrame(
        {
            "record_id": ["a", "b"],
            "split": ["train", "train"],
            "canonical_class": ["neutrophil", "eosinophil"],
        }
    )
    classes = ["eosinophil", "neutrophil"]
    base = fewshot_meta_state_dir(str(tmp_path), tiny(), pool, classes)
    assert base.parent == tmp_path / "fewshot"
    assert base == fewshot_meta_state_dir(
        str(tmp_path), tiny(adapt_freeze_d=2, adapt_iterations=9, adapt_lr=1e-3), pool, classes
    )
    assert base != fewshot_meta_state_dir(str(tmp_path), tiny(meta_lr=0.2), pool, classes)
    assert base != fewshot_meta_state_dir(str(tmp_path), tiny(), pool.iloc[:1], classes)
