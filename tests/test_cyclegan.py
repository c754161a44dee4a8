"""CycleGAN networks, WGAN-GP losses, image pool, training with checkpoint/resume on real
cells (zheng_tecom vs pbc), and the Reinhard / identity stain normalizers."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hemaflow.models.cyclegan import (
    NearestUpsampleConv,
    PatchCritic,
    PixelCritic,
    ResnetGenerator,
    UNetGenerator,
    init_weights,
)
from hemaflow.normalize.base import IdentityNormalizer, StainNormalizer
from hemaflow.normalize.cyclegan import load_cyclegan, translate
from hemaflow.normalize.reinhard import ReinhardNormalizer, lab_to_uint8, rgb_to_lab
from hemaflow.train.cyclegan import (
    LOSS_COLUMNS,
    PRESETS,
    CycleGANModel,
    CycleGANOptions,
    build_generator,
    train_cyclegan,
)
from hemaflow.train.ema import MovingAverage
from hemaflow.train.image_pool import ImagePool
from hemaflow.train.loop import list_checkpoints, to_model_range, uint8_tensor
from hemaflow.train.losses import (
    gradient_penalty,
    lsgan_critic_loss,
    lsgan_generator_loss,
    wgan_generator_loss,
    wgan_gp_critic_loss,
)
from tests.realdata import load_square_cells, pbc_cells

# ------------------------------------------------------------------------------ real cells


@pytest.fixture(scope="module")
def cell_paths(shared_datasets: Path) -> tuple[list[Path], list[Path]]:
    """24 zheng_tecom cells (domain A) and 24 pbc cells spread over its classes (B)."""
    zheng = sorted((shared_datasets / "zheng_tecom" / "Dataset 1").glob("*.bmp"))[:24]
    pbc = []
    for folder in sorted(p for p in (shared_datasets / "pbc").iterdir() if p.is_dir()):
        # hidden files (".DS_*.jpg") are known broken entries of the shared data
        pbc += [p for p in sorted(folder.glob("*.jpg")) if not p.name.startswith(".")][:3]
    assert len(zheng) == 24 and len(pbc) == 24
    return zheng, pbc


@pytest.fixture(scope="module")
def cells32(cell_paths) -> tuple[np.ndarray, np.ndarray]:
    return load_square_cells(cell_paths[0], 32), load_square_cells(cell_paths[1], 32)


@pytest.fixture(scope="module")
def cells64(cell_paths) -> tuple[np.ndarray, np.ndarray]:
    return load_square_cells(cell_paths[0], 64), load_square_cells(cell_paths[1], 64)


TINY = dict(
    image_size=32,
    generator="unet",
    ngf=8,
    ndf=8,
    batch_size=4,
    iterations=3,
    decay_iterations=3,
    pool_size=4,
    checkpoint_every=2,
    log_every=1,
    seed=7,
)


def tiny(**overrides) -> CycleGANOptions:
    return CycleGANOptions.from_config({"preset": "cpu", **TINY, **overrides})


def _read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _stopped_after_4_then_resumed(images_a, images_b, options, folder: Path) -> dict:
    """Train in two runs (stopped after 4 iterations, then resumed); the model file."""
    for stop in (4, None):
        train_cyclegan(
            images_a,
            images_b,
            options,
            folder / "state",
            folder / "m.pt",
            max_iterations_this_run=stop,
        )
    return torch.load(folder / "m.pt", weights_only=True)


# ---------------------------------------------------------------------------------- models


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
@pytest.mark.parametrize("size", [32, 64])
def test_unet_generator_shapes(upsample, size):
    net = init_weights(UNetGenerator(ngf=8, image_size=size, upsample=upsample, dropout=0.5))
    out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 3, size, size)
    assert out.abs().max() <= 1.0
    assert len(net.downs) == int(np.log2(size))  # down to a 1x1 bottleneck


@pytest.mark.parametrize("side", [1, 2, 5, 8, 16])
def test_nearest_upsample_conv_is_upsampling_then_a_reflect_padded_conv(side):
    """The sub-pixel form equals the plain one, forward and backward, at every size
    (below min_side it is the plain form itself), and holds the plain form's parameters."""
    torch.manual_seed(side)
    fast = NearestUpsampleConv(6, 5)
    plain = nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(6, 5, kernel_size=3, padding=1, padding_mode="reflect"),
    )
    assert fast.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(3, 6, side, side + 3, requires_grad=True)
    weight = torch.randn(3, 5, 2 * side, 2 * side + 6)
    out_fast, out_plain = fast(x), plain(x)
    assert out_fast.shape == out_plain.shape == (3, 5, 2 * side, 2 * side + 6)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-5)
    grads_fast = torch.autograd.grad((out_fast * weight).sum(), [x, *fast.parameters()])
    grads_plain = torch.autograd.grad((out_plain * weight).sum(), [x, *plain.parameters()])
    for g_fast, g_plain in zip(grads_fast, grads_plain):
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-4)


def test_unet_rejects_sizes_that_are_not_powers_of_two():
    with pytest.raises(ValueError, match="image_size"):
        UNetGenerator(image_size=48)
    with pytest.raises(ValueError, match="upsample"):
        UNetGenerator(image_size=32, upsample="bilinear")


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_residual_unet_starts_as_the_identity_and_learns_a_change(upsample, cells32):
    torch.manual_seed(0)
    net = init_weights(UNetGenerator(ngf=8, image_size=32, upsample=upsample, residual=True))
    real = to_model_range(uint8_tensor(cells32[0][:4]))
    before = net(real)
    # the identity up to the clamp of saturated pixels inside (-1, 1) before atanh
    assert torch.allclose(before, real, atol=1.1e-3)
    # a step towards a colour shift moves the output: the zero output layer still learns
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    target = (real * 0.5 + 0.3).clamp(-1, 1)
    for _ in range(10):
        optimizer.zero_grad()
        loss = (net(real) - target).abs().mean()
        loss.backward()
        optimizer.step()
    after = net(real)
    assert after.abs().max() <= 1.0
    assert (after - target).abs().mean() < (before - target).abs().mean() - 0.01


def test_residual_unet_can_shift_every_pixel_alike(cells32):
    """A stain change is close to one shift everywhere. The change comes out of the last
    convolution unnormalized: with an instance norm there (the first residual design) a
    uniform change was impossible, and the network drew an 8 px blob into every
    translation to put the norm's fixed spread somewhere."""
    net = init_weights(UNetGenerator(ngf=8, image_size=32, upsample="resize", residual=True))
    assert not [m for m in net.ups[-1].modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    with torch.no_grad():
        net.output_layer().bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    real = to_model_range(uint8_tensor(cells32[0][:2]))
    limit = 1.0 - 1e-3
    expected = torch.tanh(
        torch.atanh(real.clamp(-limit, limit)) + torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    )
    assert torch.allclose(net(real), expected, atol=1e-5)


def _affine_unet(cell: int) -> UNetGenerator:
    return init_weights(
        UNetGenerator(
            ngf=8,
            image_size=32,
            upsample="resize",
            residual=True,
            residual_mode="affine",
            affine_cell=cell,
        )
    )


def test_affine_unet_starts_as_the_identity_and_scales_every_detail(cells32):
    """The affine residual U-Net outputs ``tanh((I + M) atanh(x) + b)``: zero-initialized,
    it is the identity; with ``M = I`` everywhere it doubles the contrast of every pixel
    in atanh space (a gain), which the shift form could only get by drawing each detail."""
    torch.manual_seed(0)
    net = _affine_unet(8)
    assert net.output_layer().out_channels == 12  # a 3x3 matrix and a bias per pixel
    real = to_model_range(uint8_tensor(cells32[0][:2]))
    assert torch.allclose(net(real), real, atol=1.1e-3)
    with torch.no_grad():
        net.output_layer().bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0, 1, 0.2, 0, -0.2]))
    limit = 1.0 - 1e-3
    shift = torch.tensor([0.2, 0.0, -0.2]).view(1, 3, 1, 1)
    expected = torch.tanh(2 * torch.atanh(real.clamp(-limit, limit)) + shift)
    assert torch.allclose(net(real), expected, atol=1e-5)


def test_affine_unet_cannot_paint_texture_finer_than_its_cells():
    """On a flat image every pixel has the same colour, so all the output's texture comes
    from the colour transform varying in space; averaged over 8 px cells and interpolated,
    it has a small fraction of the per-pixel transform's fine detail (same weights)."""
    torch.manual_seed(0)
    per_pixel, smooth = _affine_unet(1), _affine_unet(8)
    smooth.load_state_dict(per_pixel.state_dict())
    with torch.no_grad():
        per_pixel.output_layer().weight.normal_(0, 0.5)
        smooth.output_layer().weight.copy_(per_pixel.output_layer().weight)
    flat = torch.full((2, 3, 32, 32), 0.3)
    flat[:, 1] = -0.2

    def fine_detail(image: torch.Tensor) -> float:
        laplacian = (
            4 * image[..., 1:-1, 1:-1]
            - image[..., :-2, 1:-1]
            - image[..., 2:, 1:-1]
            - image[..., 1:-1, :-2]
            - image[..., 1:-1, 2:]
        )
        return float(laplacian.pow(2).mean())

    with torch.no_grad():
        rough, fine = fine_detail(per_pixel(flat)), fine_detail(smooth(flat))
    assert rough > 1e-3  # the per-pixel transform does texture a flat image
    assert fine < 0.05 * rough


def test_affine_mode_options_are_checked():
    # the form of the residual U-Net: `residual: false` works with the preset's affine mode
    plain = CycleGANOptions.from_config({"preset": "cpu", "residual": False})
    assert not build_generator(plain).residual
    with pytest.raises(ValueError, match="'affine_cell'"):
        CycleGANOptions.from_config({"preset": "cpu", "residual_mode": "affine", "affine_cell": 6})
    with pytest.raises(ValueError, match="residual_mode"):
        CycleGANOptions.from_config({"preset": "cpu", "residual_mode": "multiply"})
    with pytest.raises(ValueError, match="affine_cell"):
        UNetGenerator(image_size=32, residual=True, residual_mode="affine", affine_cell=64)


def test_affine_generators_train_and_load(cells32, tmp_path):
    options = tiny(residual_mode="affine", affine_cell=4, iterations=3, decay_iterations=1)
    summary = train_cyclegan(*cells32, options, tmp_path / "state", tmp_path / "model.pt")
    assert summary["completed"] and all(np.isfinite(v) for v in summary["final_losses"].values())
    g_ab, g_ba, loaded = load_cyclegan(tmp_path / "model.pt")
    assert loaded.residual_mode == "affine" and g_ab.affine and g_ab.affine_cell == 4
    translated = translate(g_ab, cells32[0][:3])
    assert translated.shape == (3, 32, 32, 3) and translated.dtype == np.uint8
    # three steps from the identity: a small colour change, the same cells
    assert 0 < np.abs(translated.astype(int) - cells32[0][:3]).mean() < 20


def test_cycle_noise_reaches_only_the_reverse_generator_input():
    quiet = CycleGANModel(tiny(cycle_noise=0.0), torch.device("cpu"), np.random.default_rng(0))
    translated = torch.zeros(8, 3, 32, 32)
    assert quiet._cycle_input(translated) is translated
    noisy = CycleGANModel(tiny(cycle_noise=0.1), torch.device("cpu"), np.random.default_rng(0))
    seen = noisy._cycle_input(translated)
    assert abs(float(seen.std()) - 0.1) < 0.01 and abs(float(seen.mean())) < 0.01
    assert float(translated.abs().max()) == 0  # the translation itself is left alone
    with pytest.raises(ValueError, match="'cycle_noise'"):
        tiny(cycle_noise=-0.1)


def test_residual_needs_the_unet_generator():
    with pytest.raises(ValueError, match="'residual'"):
        CycleGANOptions.from_config({"preset": "cpu", "generator": "resnet", "residual": True})


@pytest.mark.parametrize("size", [32, 64])
def test_resnet_generator_shapes(size):
    net = init_weights(ResnetGenerator(ngf=8, n_blocks=6))
    out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 3, size, size)
    assert out.abs().max() <= 1.0
    assert sum(type(m).__name__ == "ResnetBlock" for m in net.modules()) == 6


@pytest.mark.parametrize(("size", "patches"), [(32, 2), (64, 6), (256, 30)])
def test_patch_critic_returns_a_patch_map(size, patches):
    critic = init_weights(PatchCritic(ndf=8, n_layers=3))
    out = critic(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, patches, patches)  # 30x30 at 256 px: the 70x70 PatchGAN
    assert not any(isinstance(m, nn.Sigmoid | nn.BatchNorm2d) for m in critic.modules())
    assert any(isinstance(m, nn.InstanceNorm2d) for m in critic.modules())


@pytest.mark.parametrize(
    ("norm", "layer_type"),
    [("instance", nn.InstanceNorm2d), ("layer", nn.GroupNorm), ("none", None)],
)
def test_every_critic_norm_scores_each_sample_alone(norm, layer_type):
    # the gradient penalty takes the gradient of each sample's score with respect to that
    # sample only: a norm coupling the batch (batch norm) would break it
    torch.manual_seed(0)
    critic = init_weights(PatchCritic(ndf=8, n_layers=2, norm=norm)).eval()
    norms = [m for m in critic.modules() if isinstance(m, nn.InstanceNorm2d | nn.GroupNorm)]
    assert (layer_type is None and not norms) or all(type(m) is layer_type for m in norms)
    batch = torch.rand(3, 3, 32, 32) * 2 - 1
    alone = critic(batch[:1])
    together = critic(batch)[:1]
    assert torch.allclose(alone, together, atol=1e-6)
    shifted = batch.clone()
    shifted[1:] = shifted[1:] * 0.5  # other samples change: sample 0's score must not
    assert torch.allclose(critic(shifted)[:1], together, atol=1e-6)
    with pytest.raises(ValueError, match="norm must be one of"):
        PatchCritic(norm="batch")


def test_pixel_critic_scores_each_pixel_by_its_colour_alone():
    torch.manual_seed(0)
    critic = init_weights(PixelCritic(ndf=8)).eval()
    batch = torch.rand(2, 3, 16, 16) * 2 - 1
    scores = critic(batch)
    assert scores.shape == (2, 1, 16, 16)
    changed = batch.clone()
    changed[0, :, 5, 7] = torch.tensor([0.9, -0.9, 0.1])
    moved = (critic(changed) - scores).abs() > 0
    assert moved[0, 0, 5, 7] and moved.sum() == 1  # a receptive field of one pixel
    # the same colour scores the same wherever it is: no shapes, only colours
    flat = torch.zeros(1, 3, 16, 16) + torch.tensor([0.3, -0.2, 0.5]).view(1, 3, 1, 1)
    assert torch.allclose(critic(flat), critic(flat)[0, 0, 0, 0].expand(1, 1, 16, 16))


def test_pixel_critics_train_log_and_resume(cells32, tmp_path):
    images_a, images_b = cells32
    options = tiny(lambda_pixel=1.0)
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    log_csv = straight_dir / "losses.csv"
    summary = train_cyclegan(
        images_a, images_b, options, straight_dir / "state", straight_dir / "m.pt", log_csv
    )
    assert summary["completed"] and all(np.isfinite(v) for v in summary["final_losses"].values())
    assert all(float(r["loss_P"]) != 0.0 for r in _read_log(log_csv))
    last = torch.load(list_checkpoints(straight_dir / "state")[-1][1], weights_only=False)
    assert set(last["model"]["pixel"]) == {"P_A", "P_B"}
    again = _stopped_after_4_then_resumed(images_a, images_b, options, resumed_dir)
    straight = torch.load(straight_dir / "m.pt", weights_only=True)
    for name in ("G_AB", "G_BA"):
        assert all(torch.equal(straight[name][k], again[name][k]) for k in straight[name])
    # the pixel critics change what the generators learn
    without = train_cyclegan(
        images_a, images_b, tiny(), tmp_path / "plain" / "state", tmp_path / "plain" / "m.pt"
    )
    assert without["final_losses"]["loss_P"] == 0.0
    plain = torch.load(tmp_path / "plain" / "m.pt", weights_only=True)
    assert any(not torch.equal(plain["G_AB"][k], straight["G_AB"][k]) for k in plain["G_AB"])


def test_init_weights_is_normal_with_the_given_gain():
    net = init_weights(PatchCritic(ndf=64), gain=0.02)
    weights = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, nn.Conv2d)])
    assert abs(float(weights.detach().std()) - 0.02) < 0.002
    assert all(
        float(m.bias.detach().abs().max()) == 0 for m in net.modules() if isinstance(m, nn.Conv2d)
    )


def test_a_gradient_step_changes_the_weights():
    torch.manual_seed(0)
    generator = init_weights(UNetGenerator(ngf=8, image_size=32, upsample="resize"))
    critic = init_weights(PatchCritic(ndf=8))
    before = {name: p.detach().clone() for name, p in generator.named_parameters()}
    before_critic = [p.detach().clone() for p in critic.parameters()]
    optimizer = torch.optim.Adam([*generator.parameters(), *critic.parameters()], lr=1e-3)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    fake = generator(real)
    loss = (fake - real).abs().mean() + wgan_generator_loss(critic(fake))
    loss = loss + gradient_penalty(critic, real, fake)
    loss.backward()
    optimizer.step()
    changed = [name for name, p in generator.named_parameters() if not torch.equal(p, before[name])]
    names = list(before)
    assert names[0] in changed and names[-2] in changed  # first and last convolution weights
    assert len(changed) >= 0.9 * len(before)
    assert all(not torch.equal(a, b) for a, b in zip(before_critic, critic.parameters()))


# ---------------------------------------------------------------------------------- losses


class _LinearCritic(nn.Module):
    """f(x) = <w, x>: its gradient is w everywhere, so ||grad|| = ||w||."""

    def __init__(self, shape: tuple[int, ...], norm: float):
        super().__init__()
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        self.weight = nn.Parameter(weight / weight.norm() * norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).flatten(1).sum(dim=1, keepdim=True)


def test_gradient_penalty_vanishes_for_a_unit_gradient_linear_critic():
    real, fake = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    penalty = gradient_penalty(_LinearCritic((3, 16, 16), norm=1.0), real, fake, lambda_gp=10)
    assert penalty.item() < 1e-6


def test_gradient_penalty_is_positive_otherwise():
    real, fake = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    steep = gradient_penalty(_LinearCritic((3, 16, 16), norm=3.0), real, fake, lambda_gp=10)
    assert steep.item() == pytest.approx(10 * (3 - 1) ** 2, rel=1e-4)
    critic = init_weights(PatchCritic(ndf=8))
    real, fake = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    penalty = gradient_penalty(critic, real, fake, lambda_gp=10)
    assert penalty.item() > 0 and torch.isfinite(penalty)
    penalty.backward()  # create_graph=True: the penalty reaches the critic's weights
    # every weight (the final bias alone does not move an input gradient)
    weights = [p for name, p in critic.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights)


def test_adversarial_loss_values():
    real, fake = torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -1.0)
    assert float(wgan_gp_critic_loss(real, fake)) == -3.0
    assert float(wgan_generator_loss(fake)) == 1.0
    assert float(lsgan_critic_loss(torch.ones(4), torch.zeros(4))) == 0.0
    assert float(lsgan_critic_loss(torch.zeros(4), torch.ones(4))) == 1.0
    assert float(lsgan_generator_loss(torch.zeros(4))) == 1.0


# ------------------------------------------------------------------------------ image pool


def test_image_pool_fills_then_mixes_and_its_state_resumes():
    pool = ImagePool(size=4, seed=1)
    first = torch.arange(4.0).reshape(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first) and len(pool) == 4
    copy = ImagePool(size=4, seed=99)
    copy.load_state_dict(pool.state_dict())
    for step in range(5):
        batch = torch.full((3, 1, 1, 1), 10.0 + step)
        out = pool.query(batch)
        assert torch.equal(out, copy.query(batch))
        assert out.shape == batch.shape
    assert torch.equal(ImagePool(size=0).query(first), first)


# --------------------------------------------------------------------------------- options


def test_options_from_config_presets_and_overrides():
    cpu = CycleGANOptions.from_config({"preset": "cpu"})
    assert cpu == PRESETS["cpu"] and cpu.image_size == 64 and cpu.ngf <= 32
    paper = CycleGANOptions.from_config({"preset": "paper", "batch_size": 2, "lr": "1e-4"})
    assert paper.image_size == 128 and paper.ngf == 64 and paper.generator == "unet"
    assert paper.batch_size == 2 and paper.lr == 1e-4  # YAML's "1e-4" string accepted
    assert paper.total_iterations >= 100_000 and paper.decay_iterations == paper.iterations
    assert CycleGANOptions().lambda_identity == 0.5 and CycleGANOptions().lambda_cycle == 10.0


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"preset": "cpu", "lamda_cycle": 5}, "lamda_cycle"),
        ({"preset": "gpu"}, "preset"),
        ({"preset": "cpu", "generator": "vit"}, "generator"),
        ({"preset": "cpu", "image_size": 100}, "image_size"),
        ({"preset": "cpu", "batch_size": 0}, "batch_size"),
        ({"preset": "cpu", "ngf": "wide"}, "ngf"),
    ],
)
def test_options_errors_name_the_key(section, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        CycleGANOptions.from_config(section)


# -------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(cells32, tmp_path_factory) -> dict:
    """One complete tiny run (6 iterations) on real cells."""
    root = tmp_path_factory.mktemp("cyclegan")
    images_a, images_b = cells32
    summary = train_cyclegan(
        images_a,
        images_b,
        tiny(),
        state_dir=root / "state",
        out_model=root / "model.pt",
        log_csv=root / "losses.csv",
    )
    return {"root": root, "summary": summary}


def test_training_on_real_cells_writes_a_usable_model(trained, cells32):
    summary, root = trained["summary"], trained["root"]
    assert summary["iterations"] == 6 and summary["completed"] and summary["device"] == "cpu"
    assert set(summary["final_losses"]) == set(LOSS_COLUMNS) - {"iteration", "lr", "seconds"}
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    rows = _read_log(root / "losses.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(float(r[c])) for r in rows for c in LOSS_COLUMNS)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[:3] == [2e-4] * 3 and lrs[3] > lrs[4] > lrs[5] > 0  # linear decay after 3
    assert len(list_checkpoints(root / "state")) == 2  # the latest two only

    g_ab, g_ba, options = load_cyclegan(root / "model.pt")
    assert options == tiny() and not g_ab.training and not g_ba.training
    images_a, _ = cells32
    out = translate(g_ab, images_a[:5], batch_size=2)
    assert out.dtype == np.uint8 and out.shape == images_a[:5].shape
    larger = np.asarray(Image.fromarray(images_a[0]).resize((48, 48)))[None]
    assert translate(g_ba, larger).shape == (1, 48, 48, 3)  # resized to 32 and back


def test_training_logs_the_device(cells32, tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    caplog.set_level(logging.INFO, logger="hemaflow.train")
    options = tiny(iterations=1, decay_iterations=0)
    train_cyclegan(*cells32, options, tmp_path / "state", tmp_path / "model.pt")
    assert "training on cpu (no CUDA device visible)" in caplog.text


def test_kill_and_resume_gives_the_same_weights_and_log(trained, cells32, tmp_path, caplog):
    images_a, images_b = cells32
    options = tiny()
    state, model, losses = tmp_path / "state", tmp_path / "model.pt", tmp_path / "losses.csv"
    stopped = train_cyclegan(
        images_a, images_b, options, state, model, losses, max_iterations_this_run=4
    )
    assert stopped["iterations"] == 4 and not stopped["completed"] and not model.exists()
    caplog.set_level(logging.INFO, logger="hemaflow.train")
    resumed = train_cyclegan(images_a, images_b, options, state, model, losses)
    assert "resuming from checkpoint at iteration 4" in caplog.text
    assert resumed["resumed_from"] == 4 and resumed["iterations_this_run"] == 2

    straight = torch.load(trained["root"] / "model.pt", weights_only=True)
    again = torch.load(model, weights_only=True)
    for name in ("G_AB", "G_BA"):
        assert straight[name].keys() == again[name].keys()
        assert all(torch.equal(straight[name][k], again[name][k]) for k in straight[name])
    assert _without_seconds(_read_log(losses)) == _without_seconds(
        _read_log(trained["root"] / "losses.csv")
    )


def test_resume_after_a_kill_between_checkpoints_drops_the_rows_it_redoes(
    trained, cells32, tmp_path, caplog
):
    images_a, images_b = cells32
    options = tiny()
    state, model, losses = tmp_path / "state", tmp_path / "model.pt", tmp_path / "losses.csv"
    train_cyclegan(images_a, images_b, options, state, model, losses, max_iterations_this_run=5)
    assert len(_read_log(losses)) == 5  # row 5 was logged after the checkpoint at 4
    caplog.set_level(logging.INFO, logger="hemaflow.train")
    train_cyclegan(images_a, images_b, options, state, model, losses)
    assert "resuming from checkpoint at iteration 4" in caplog.text
    rows = _read_log(losses)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert _without_seconds(rows) == _without_seconds(_read_log(trained["root"] / "losses.csv"))


def test_resume_refuses_changed_options(trained, cells32, tmp_path):
    state = tmp_path / "state"
    train_cyclegan(*cells32, tiny(), state, tmp_path / "model.pt", max_iterations_this_run=2)
    with pytest.raises(ValueError, match="'lambda_cycle'"):
        train_cyclegan(*cells32, tiny(lambda_cycle=5.0), state, tmp_path / "model.pt")


def test_moving_average_follows_its_half_life():
    net = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    average = MovingAverage(net, decay=0.9, rampup=0.0)
    with torch.no_grad():
        net.weight.fill_(3.0)
    average.update()  # 3 + (1 - 3) * 0.9
    assert torch.allclose(average.average.weight, torch.full((1, 2), 1.2))
    assert not average.average.weight.requires_grad and not average.average.training
    ramped = MovingAverage(net, decay=0.999, rampup=0.5)
    ramped.update()  # step 1: half-life min(693, 0.5) steps: beta 0.25
    assert math.isclose(ramped.beta(), 0.25) and ramped.steps == 1
    assert MovingAverage(net, decay=0.0, rampup=0.05).beta() == 0.0
    with pytest.raises(ValueError, match="decay"):
        MovingAverage(net, decay=1.0, rampup=0.0)


def test_ema_generators_resume_and_are_what_the_model_file_holds(cells32, tmp_path):
    images_a, images_b = cells32
    options = tiny(ema_decay=0.9, ema_rampup=0.0)
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    train_cyclegan(images_a, images_b, options, straight_dir / "state", straight_dir / "m.pt")
    again = _stopped_after_4_then_resumed(images_a, images_b, options, resumed_dir)
    straight = torch.load(straight_dir / "m.pt", weights_only=True)
    last = torch.load(list_checkpoints(straight_dir / "state")[-1][1], weights_only=False)
    for name in ("G_AB", "G_BA"):
        assert all(torch.equal(straight[name][k], again[name][k]) for k in straight[name])
        trained = last["model"][name]  # the last trained weights differ from the average
        assert any(not torch.equal(straight[name][k], trained[k]) for k in trained)
        average = last["model"]["ema"][name]["average"]
        assert all(torch.equal(straight[name][k], average[k]) for k in average)
    g_ab, _, loaded = load_cyclegan(straight_dir / "m.pt")
    assert loaded.ema_decay == 0.9 and translate(g_ab, images_a[:2]).shape == images_a[:2].shape


def test_lsgan_mode_with_the_resnet_generator_trains(cells32, tmp_path):
    options = tiny(
        gan_mode="lsgan",
        generator="resnet",
        residual=False,
        n_blocks=2,
        n_critic=2,
        iterations=2,
        decay_iterations=1,
    )
    summary = train_cyclegan(
        *cells32,
        options,
        tmp_path / "state",
        tmp_path / "model.pt",
        log_csv=tmp_path / "losses.csv",
    )
    assert summary["completed"] and all(np.isfinite(v) for v in summary["final_losses"].values())
    assert summary["final_losses"]["gp"] == 0.0
    g_ab, _, _ = load_cyclegan(tmp_path / "model.pt")
    assert translate(g_ab, cells32[0][:3]).shape == (3, 32, 32, 3)


def test_training_resizes_images_of_another_size(cells64, tmp_path):
    summary = train_cyclegan(
        *cells64, tiny(iterations=1, decay_iterations=0), tmp_path / "state", tmp_path / "model.pt"
    )
    assert summary["completed"]


# ------------------------------------------------------------------------ stain normalizers


def test_rgb_lab_round_trip_within_one_grey_level(cells64):
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(1, 256, 256, 3), dtype=np.uint8)
    corners = np.array(
        [[[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]]], dtype=np.uint8
    )
    for images in (colours, corners, cells64[0]):
        back = lab_to_uint8(rgb_to_lab(images))
        assert np.abs(back.astype(int) - images.astype(int)).max() <= 1
    white = rgb_to_lab(np.array([[255, 255, 255]], np.uint8))[0]
    assert white == pytest.approx([100.0, 0.0, 0.0], abs=1e-3)


def _mean_lab(images: np.ndarray) -> np.ndarray:
    return rgb_to_lab(images).mean(axis=(1, 2)).mean(axis=0)


def test_reinhard_moves_the_mean_colour_onto_the_target(cells64):
    source, target = cells64
    normalizer = ReinhardNormalizer().fit(target)
    assert isinstance(normalizer, StainNormalizer)
    before = np.abs(_mean_lab(source) - normalizer.target_mean)
    out = normalizer.transform(source)
    after = np.abs(_mean_lab(out) - normalizer.target_mean)
    assert out.dtype == np.uint8 and out.shape == source.shape
    assert before.max() > 5  # zheng_tecom and pbc stains differ
    assert after.max() < 1.0
    assert normalizer.target_mean == pytest.approx(_mean_lab(target))
    restored = ReinhardNormalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))
    assert np.array_equal(restored.transform(source), out)


def test_reinhard_rejects_bad_statistics():
    with pytest.raises(ValueError, match="target_std"):
        ReinhardNormalizer.from_dict(
            {"method": "reinhard", "target_mean": [1, 2, 3], "target_std": [1, 2]}
        )
    with pytest.raises(ValueError, match="fit"):
        ReinhardNormalizer().transform(np.zeros((1, 4, 4, 3), np.uint8))


def test_identity_normalizer_returns_the_input(cells32):
    images = cells32[0]
    normalizer = IdentityNormalizer().fit(cells32[1])
    assert isinstance(normalizer, StainNormalizer) and normalizer.name == "none"
    assert normalizer.transform(images) is images


def test_structure_loss_ignores_stain_and_penalizes_moved_edges():
    from hemaflow.train.losses import structure_loss

    images, _ = pbc_cells(1, 32)
    cells = torch.from_numpy(images.astype("float32") / 127.5 - 1).permute(0, 3, 1, 2)
    assert structure_loss(cells, cells).item() < 1e-4
    # a stain change: another colour balance, brightness and contrast, same structure
    weights = torch.tensor([0.6, 1.1, 0.8]).view(1, 3, 1, 1)
    restained = (cells * weights * 0.7 + 0.1).clamp(-1, 1)
    assert structure_loss(cells, restained).item() < 0.05
    moved = torch.roll(cells, shifts=(4, 4), dims=(2, 3))
    noise = torch.rand_like(cells) * 2 - 1
    assert structure_loss(cells, moved).item() > 5 * structure_loss(cells, restained).item()
    assert structure_loss(cells, noise).item() > 0.5
    # differentiable, as a generator loss must be
    fake = restained.clone().requires_grad_(True)
    structure_loss(cells, fake).backward()
    assert torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0


def test_contrast_structure_charges_for_texture_hidden_in_a_flat_region():
    from hemaflow.train.losses import structure_loss

    images, _ = pbc_cells(1, 32)
    cells = torch.from_numpy(images.astype("float32") / 127.5 - 1).permute(0, 3, 1, 2)
    flat = cells.clone()
    flat[:, :, 8:24, 8:24] = flat[:, :, 8:24, 8:24].mean(dim=(2, 3), keepdim=True)
    # a high-contrast code drawn into the flat square, as a CycleGAN hides one there
    coded = flat.clone()
    coded[:, :, 12:20, 12:20] = torch.where(
        torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5, 1.0, -1.0
    )
    plain = structure_loss(flat, coded, mode="structure").item()
    charged = structure_loss(flat, coded, mode="contrast_structure").item()
    assert charged > 2 * plain
    # a stain change still costs (almost) nothing in either mode
    restained = (cells * torch.tensor([0.6, 1.1, 0.8]).view(1, 3, 1, 1) + 0.1).clamp(-1, 1)
    assert structure_loss(cells, restained, mode="contrast_structure").item() < 0.05
    with pytest.raises(ValueError, match="mode"):
        structure_loss(cells, cells, mode="ssim")


def test_rgb_structure_charges_for_an_isoluminant_code():
    """The code the CycleGAN drew on the shared data: a red-green patch of the brightness
    around it. Luminance cannot see it; the per-channel term can, and a stain change is
    still (almost) free."""
    from hemaflow.train.losses import _LUMA, structure_loss

    images, _ = pbc_cells(1, 32)
    cells = torch.from_numpy(images.astype("float32") / 127.5 - 1).permute(0, 3, 1, 2)
    flat = cells.clone()
    flat[:, :, 8:24, 8:24] = flat[:, :, 8:24, 8:24].mean(dim=(2, 3), keepdim=True)
    bits = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5
    # +red / -green in the code's cells, balanced so the luminance does not change
    red, green, _ = _LUMA
    shift = torch.where(bits, 0.4, -0.4)
    coded = flat.clone()
    coded[:, 0:1, 12:20, 12:20] += shift
    coded[:, 1:2, 12:20, 12:20] -= shift * red / green
    kwargs = {"mode": "contrast_structure"}
    luma = structure_loss(flat, coded, channels="luma", **kwargs).item()
    rgb = structure_loss(flat, coded, channels="rgb", **kwargs).item()
    assert luma < 1e-3 and rgb > 0.02
    restained = (cells * torch.tensor([0.6, 1.1, 0.8]).view(1, 3, 1, 1) + 0.1).clamp(-1, 1)
    assert structure_loss(cells, restained, channels="rgb", **kwargs).item() < 0.05
    assert structure_loss(cells, cells, channels="rgb", **kwargs).item() < 1e-4
    with pytest.raises(ValueError, match="channels"):
        structure_loss(cells, cells, channels="lab")
