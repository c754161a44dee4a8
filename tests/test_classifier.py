"""The white-blood-cell classifier: SENet-GE / SE-ResNeXt / ResNet-18 networks (shapes, a
gradient step, norms, the gather-excite ablation, the full SENet-154 size), and training
on real pbc cells at 32 px with tiny options: model file, probabilities, early stopping,
bit-exact resume after a kill, option and input checks."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hemaflow.classify.augment import color_jitter
from hemaflow.classify.options import PRESETS, ClassifierOptions
from hemaflow.classify.predict import load_classifier, predict_proba
from hemaflow.classify.train import (
    LOSS_COLUMNS,
    LRSchedule,
    balanced_accuracy,
    train_classifier,
)
from hemaflow.models.classifier import (
    GatherExcite,
    ResNet18,
    SENetGE,
    SEResNeXtBottleneck,
    SqueezeExcite,
    build_classifier,
    group_count,
)
from hemaflow.train.loop import list_checkpoints

from .realdata import pbc_cells

torch.set_num_threads(1)

CLASSES = ["basophil", "eosinophil", "neutrophil"]
# SENet-154's block structure at toy size (32 px, 4 stages)
TINY_SENET = dict(
    image_size=32,
    stage_blocks=[1, 1, 2, 1],
    widths=[16, 32, 64, 128],
    cardinality=4,
    base_width=2,
    stem_width=8,
)
TRAIN_TINY = dict(
    image_size=32,
    stage_blocks=[1, 1],
    widths=[16, 32],
    cardinality=4,
    base_width=2,
    stem_width=8,
    stem_stride=2,
    color_jitter=True,
    # every augmentation on, so that the bit-identical resume covers their draws
    stain_augment=0.5,
    scale_augment=0.3,
    grayscale_augment=0.3,
    batch_size=6,
    iterations=4,
    warmup_iterations=1,
    eval_every=2,
    early_stopping_patience=0,
    checkpoint_every=2,
    log_every=1,
    seed=3,
)


def tiny(**overrides) -> ClassifierOptions:
    return ClassifierOptions.from_config({"preset": "small", **TRAIN_TINY, **overrides})


def _indices(names: np.ndarray) -> np.ndarray:
    return np.array([CLASSES.index(name) for name in names], np.int64)


@pytest.fixture(scope="module")
def cells() -> dict[str, np.ndarray]:
    """4 training and 2 validation real pbc cells of each of 3 classes, 32 px."""
    train, train_names = pbc_cells(4, 32, classes=CLASSES)
    val, val_names = pbc_cells(2, 32, classes=CLASSES, offset=4)
    return {
        "train": train,
        "train_labels": _indices(train_names),
        "val": val,
        "val_labels": _indices(val_names),
    }


def _data(cells) -> tuple:
    return cells["train"], cells["train_labels"], cells["val"], cells["val_labels"], CLASSES


@pytest.fixture(scope="module")
def trained(cells, tmp_path_factory) -> dict:
    """An uninterrupted tiny run."""
    root = tmp_path_factory.mktemp("classifier")
    summary = train_classifier(
        *_data(cells), tiny(), root / "state", root / "model.pt", root / "losses.csv"
    )
    return {"root": root, "summary": summary}


def _read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("small", {"image_size": 32}),
        ("senet154_ge", TINY_SENET),
        ("resnet18", {"image_size": 32}),
    ],
)
def test_preset_networks_shapes_and_a_gradient_step(preset, overrides):
    torch.manual_seed(0)
    options = ClassifierOptions.from_config({"preset": preset, **overrides, "dropout": 0.0})
    net = build_classifier(options.architecture, 5, options)
    assert net.image_size == 32 and net.n_classes == 5
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 4])
    logits = net(x)
    assert logits.shape == (4, 5)
    assert net(torch.randn(2, 3, 48, 48)).shape == (2, 5)  # other sizes run too

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("preset", ["small", "resnet18"])
def test_build_network_is_channels_last_and_computes_the_same_function(preset):
    """The trained classifier's weights are channels-last (a faster CPU step,
    bench/bench_layout.py); the function is the default layout's, to float rounding."""
    from hemaflow.classify.options import build_network

    torch.manual_seed(0)
    options = ClassifierOptions.from_config({"preset": preset, "image_size": 32})
    net = build_network(options, 5).eval()
    convolutions = [p for p in net.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convolutions
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert not all(p.is_contiguous() for p in convolutions)
    plain = build_classifier(options.architecture, 5, options).eval()
    plain.load_state_dict(net.state_dict())  # the same weights in the default layout
    assert all(p.is_contiguous() for p in plain.parameters())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-5)


def test_senet154_preset_has_the_papers_size():
    options = PRESETS["senet154_ge"]
    assert options.architecture == "senet_ge" and options.image_size == 224
    assert options.stage_blocks == (3, 8, 36, 3) and options.widths == (256, 512, 1024, 2048)
    assert (options.cardinality, options.base_width, options.stem_stride) == (64, 4, 4)
    assert (options.dropout, options.label_smoothing, options.gather_excite) == (0.2, 0.1, True)
    net = build_classifier("senet_ge", 8, options)
    blocks = [len(stage) for stage in net.stages]
    assert blocks == [3, 8, 36, 3] and net.feature_size == 7 and net.channels == 2048
    first = net.stages[0][0]
    grouped = first.body[1][0]
    assert grouped.groups == 64 and grouped.out_channels == 256
    assert first.body[0][0].out_channels == 128  # first 1x1 halved
    shortcut = net.stages[1][0].shortcut[0]
    assert shortcut.kernel_size == (3, 3) and shortcut.stride == (2, 2)
    assert [conv[0].kernel_size for conv in net.stem] == [(3, 3)] * 3
    # SENet-154 has 115 M parameters with 1000 classes; the head adds a few million
    assert 100e6 < _n_parameters(net) < 130e6
    assert sum(isinstance(m, SqueezeExcite) for m in net.modules()) == 50 + 1
    assert len(net.ge.gather) == 3 * 2 + 2  # 7 -> 4 -> 2 -> 1: global extent


def test_group_norm_option_has_no_batch_norm():
    options = ClassifierOptions.from_config({"preset": "senet154_ge", **TINY_SENET})
    for architecture in ("senet_ge", "resnet18"):
        net = build_classifier(architecture, 3, options.with_overrides({"norm": "group"}))
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        assert any(isinstance(m, nn.GroupNorm) for m in net.modules())
        assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
        with_bn = build_classifier(architecture, 3, options)
        assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert [group_count(c) for c in (1, 2, 8, 24, 64, 2048)] == [1, 1, 4, 12, 32, 32]


def test_without_gather_excite_is_the_plain_se_resnext():
    torch.manual_seed(0)
    options = ClassifierOptions.from_config({"preset": "senet154_ge", **TINY_SENET})
    with_ge = build_classifier("senet_ge", 3, options)
    plain = build_classifier("senet_ge", 3, options.with_overrides({"gather_excite": False}))
    assert any(isinstance(m, GatherExcite) for m in with_ge.modules())
    assert not any(isinstance(m, GatherExcite) for m in plain.modules())
    assert _n_parameters(plain) < _n_parameters(with_ge)
    assert all(isinstance(b, SEResNeXtBottleneck) for s in plain.stages for b in s)
    assert plain(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_gather_excite_gates_the_features():
    torch.manual_seed(0)
    module = GatherExcite(6, n_convs=2, norm="group")
    x = torch.rand(2, 6, 4, 4)
    out = module(x)
    assert out.shape == x.shape and torch.all(out.abs() <= x.abs())
    assert module.gather(x).shape == (2, 6, 1, 1)


def test_network_arguments_are_checked():
    with pytest.raises(ValueError, match="norm"):
        SENetGE(3, (1,), (16,), cardinality=4, norm="layer")
    with pytest.raises(ValueError, match="widths"):
        SENetGE(3, (1, 1), (16,))
    with pytest.raises(ValueError, match="n_classes"):
        ResNet18(0)
    with pytest.raises(ValueError, match="architecture"):
        build_classifier("vgg19", 3, PRESETS["small"])


# ------------------------------------------------------------------------- options, pieces


def test_presets_and_yaml_overrides():
    small = ClassifierOptions.from_config(None)
    assert small == PRESETS["small"] and small.image_size == 64
    assert PRESETS["resnet18"].architecture == "resnet18"
    changed = ClassifierOptions.from_config(
        {"preset": "senet154_ge", "image_size": 64, "widths": [8, 16, 32, 64], "lr": "5e-4"}
    )
    assert changed.widths == (8, 16, 32, 64) and changed.lr == 5e-4
    assert ClassifierOptions.from_dict(changed.as_dict()) == changed
    defaults = ClassifierOptions()
    assert (defaults.color_jitter, defaults.class_balanced, defaults.norm) == (
        False,
        True,
        "batch",
    )


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"architecure": "senet_ge"}, "architecure"),
        ({"architecture": "vgg19"}, "architecture"),
        ({"norm": "layer"}, "norm"),
        ({"widths": [16, 0, 32, 64]}, "widths"),
        ({"stage_blocks": "3,8,36,3"}, "stage_blocks"),
        ({"stage_blocks": [1, 1, 1]}, "stage_blocks"),
        ({"stem_stride": 3}, "stem_stride"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"eval_every": 0}, "eval_every"),
        ({"early_stopping_patience": -1}, "early_stopping_patience"),
        ({"color_jitter": "yes"}, "color_jitter"),
        ({"image_size": 8}, "image_size"),
        ({"preset": "huge"}, "preset"),
    ],
)
def test_options_name_the_bad_key(section, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        ClassifierOptions.from_config(section)


def test_schedule_color_jitter_and_balanced_accuracy():
    cosine = LRSchedule("cosine", total=10, warmup=2, step_every=1, gamma=0.1)
    assert [cosine(0), cosine(1), cosine(2)] == [0.5, 1.0, 1.0]
    assert math.isclose(cosine(6), 0.5) and cosine(10) == 0.0
    step = LRSchedule("step", total=10, warmup=0, step_every=3, gamma=0.5)
    assert [step(s) for s in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]

    batch = torch.rand(5, 3, 8, 8) * 2 - 1
    jittered = color_jitter(batch, np.random.default_rng(0))
    assert jittered.shape == batch.shape and jittered.abs().max() <= 1.0
    assert not torch.equal(jittered, batch)
    assert torch.equal(jittered, color_jitter(batch, np.random.default_rng(0)))

    # classes weigh equally however many images they have; absent classes do not count
    labels = np.array([0, 0, 0, 0, 2])
    assert balanced_accuracy(np.array([0, 0, 0, 0, 1]), labels) == 0.5


# -------------------------------------------------------------------------------- training


def test_classifier_trains_writes_a_model_and_predicts(trained, cells):
    summary, root = trained["summary"], trained["root"]
    assert summary["completed"] and summary["iterations"] == 4 and not summary["stopped_early"]
    assert np.isfinite(summary["final_losses"]["loss"])
    assert [row[0] for row in summary["evaluations"]] == [2, 4]
    rows = _read_log(root / "losses.csv")
    assert list(rows[0]) == list(LOSS_COLUMNS)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert 0.0 <= float(rows[-1]["val_balanced_accuracy"]) <= 1.0

    payload = torch.load(root / "model.pt", weights_only=True)
    assert payload["best_iteration"] in (2, 4) and payload["iterations"] == 4
    assert payload["best_val_balanced_accuracy"] == summary["best_val_balanced_accuracy"]
    net, names, options = load_classifier(root / "model.pt")
    assert names == CLASSES and options == tiny() and not net.training
    assert isinstance(net, SENetGE)
    images = cells["val"]
    probabilities = predict_proba(net, images, batch_size=4)
    assert probabilities.shape == (len(images), 3) and probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    predicted = probabilities.argmax(axis=1)
    best = balanced_accuracy(predicted, cells["val_labels"])
    assert math.isclose(best, payload["best_val_balanced_accuracy"])
    averaged = predict_proba(net, images, tta=True)
    assert np.allclose(averaged.sum(axis=1), 1.0, atol=1e-5)
    bigger = np.repeat(np.repeat(images[:2], 2, axis=1), 2, axis=2)
    assert predict_proba(net, bigger).shape == (2, 3)
    assert predict_proba(net, images[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match="images_uint8"):
        predict_proba(net, images.astype(np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        predict_proba(net, images, batch_size=0)


def test_resume_after_a_kill_is_bit_identical(trained, cells, tmp_path):
    state, model, losses = tmp_path / "state", tmp_path / "model.pt", tmp_path / "losses.csv"
    args = (*_data(cells), tiny(), state, model, losses)
    stopped = train_classifier(*args, max_iterations_this_run=3)  # killed after the row of 3
    assert stopped["iterations"] == 3 and not stopped["completed"] and not model.exists()
    assert len(_read_log(losses)) == 3
    resumed = train_classifier(*args)
    assert resumed["resumed_from"] == 2 and resumed["iterations_this_run"] == 2
    assert resumed["evaluations"] == trained["summary"]["evaluations"]

    straight = torch.load(trained["root"] / "model.pt", weights_only=True)
    again = torch.load(model, weights_only=True)
    assert straight["state_dict"].keys() == again["state_dict"].keys()
    assert all(torch.equal(v, again["state_dict"][k]) for k, v in straight["state_dict"].items())
    last = [
        torch.load(p, weights_only=True)["model"]["net"]
        for _, p in (list_checkpoints(trained["root"] / "state")[-1], list_checkpoints(state)[-1])
    ]
    assert all(torch.equal(v, last[1][k]) for k, v in last[0].items())
    assert _without_seconds(_read_log(losses)) == _without_seconds(
        _read_log(trained["root"] / "losses.csv")
    )


def test_early_stopping_when_validation_cannot_improve(cells, tmp_path):
    # lr 0 and group norm (no running statistics): the network never changes
    options = tiny(lr=0.0, norm="group", iterations=8, eval_every=1, early_stopping_patience=1)
    summary = train_classifier(*_data(cells), options, tmp_path / "state", tmp_path / "m.pt")
    assert summary["completed"] and summary["stopped_early"]
    assert summary["iterations"] == 2 and summary["best_iteration"] == 1
    assert [row[0] for row in summary["evaluations"]] == [1, 2]
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["stopped_early"] and payload["iterations"] == 2
    # the finished state is resumed as finished: nothing more runs
    again = train_classifier(*_data(cells), options, tmp_path / "state", tmp_path / "m.pt")
    assert again["iterations"] == 2 and again["iterations_this_run"] == 0 and again["completed"]


def test_resume_refuses_changed_options(cells, tmp_path):
    state, model = tmp_path / "state", tmp_path / "model.pt"
    train_classifier(*_data(cells), tiny(), state, model, max_iterations_this_run=2)
    with pytest.raises(ValueError, match="'label_smoothing'"):
        train_classifier(*_data(cells), tiny(label_smoothing=0.0), state, model)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: {**d, "val_labels": d["val_labels"] + 5}, "val_labels out of range"),
        (lambda d: {**d, "val_labels": d["val_labels"][:-1]}, "val_labels for"),
        (lambda d: {**d, "val": d["val"].astype(np.float32)}, "val_images: expected uint8"),
        (lambda d: {**d, "val": d["val"][:0], "val_labels": d["val_labels"][:0]}, "empty"),
        (lambda d: {**d, "train_labels": d["train_labels"] + 1}, "labels out of range"),
        (lambda d: {**d, "train": d["train"][..., 0]}, "images: expected uint8"),
    ],
)
def test_inputs_are_checked(cells, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        train_classifier(*_data(change(cells)), tiny(), tmp_path / "state", tmp_path / "m.pt")
    assert not (tmp_path / "state").exists()
    with pytest.raises(ValueError, match="options"):
        train_classifier(*_data(cells), {"lr": 1.0}, tmp_path / "state", tmp_path / "m.pt")
    with pytest.raises(ValueError, match="max_iterations_this_run"):
        train_classifier(
            *_data(cells), tiny(), tmp_path / "s", tmp_path / "m.pt", max_iterations_this_run=-1
        )


def test_the_gate_classifier_judges_a_quality_curve(trained, cells):
    """The workflow's curves judge with the gate's classifier (this module's kind): the
    share of images given their class at the confidence, as predict_proba says."""
    from hemaflow.classify.predict import load_classifier, predict_proba
    from hemaflow.synth.curve import classifier_judge

    path = trained["root"] / "model.pt"
    net, names, _ = load_classifier(path, "cpu")
    for k, name in enumerate(CLASSES):
        images = cells["val"][cells["val_labels"] == k]
        probability = predict_proba(net, images)[:, names.index(name)]
        for confidence in (0.0, 0.4, 0.9):
            judge = classifier_judge(path, confidence, "cpu")
            assert judge(name, images) == pytest.approx((probability >= confidence).mean())
    with pytest.raises(ValueError, match="'smudge' is not among"):
        classifier_judge(path, 0.5, "cpu")("smudge", images)
