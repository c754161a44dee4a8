"""Networks of the meta-learned few-shot GAN for rare classes: a task encoder, a
FastGAN-style generator with skip-layer excitation, a spectrally normalized
discriminator (optionally conditioned on the task code by projection), and
differentiable augmentation (DiffAugment) in plain torch.

Layouts follow the reference study's description (FAML-style encoder GAN with a FastGAN
generator): the encoder maps the K images of a task to one feature vector (the task
code); the generator turns (code, noise) into an image through nearest-upsampling blocks
with batch norm and gated linear units, and gates its two highest resolutions channel by
channel with features from a 4x lower resolution (skip-layer excitation, Liu et al.
2021); the discriminator uses spectral norm on every convolution and linear layer
(Miyato et al. 2018) and LeakyReLU. DiffAugment follows Zhao et al. (2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

DIFFAUG_POLICIES = ("color", "translation", "cutout")


def _check_size(name: str, image_size: int) -> None:
    if image_size < 32 or image_size & (image_size - 1):
        raise ValueError(f"{name}: image_size must be a power of two >= 32, got {image_size}")


def _check_positive(name: str, **values: int) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{name}: {key} must be > 0, got {value}")


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """FastGAN's init: convolution and linear weights ~ N(0, gain), biases 0; batch-norm
    scales ~ N(1, gain), shifts 0. Call before adding spectral norm. Returns ``net``."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(module.weight, 0.0, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)
    return net


# ---------------------------------------------------------------------------- encoder


class _ResidualBlock(nn.Module):
    """conv 3x3 -> LeakyReLU -> conv 3x3, plus the input (1x1 projected if the width
    changes), then LeakyReLU. No batch norm: a task's set has only K images."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.body(x) + self.skip(x), 0.2)


class TaskEncoder(nn.Module):
    """The K images of one task -> one task code.

    Each image goes through a stem convolution and 4 residual blocks (max-pool after the
    first 3) and is global-average-pooled to a vector; the vectors are mean-pooled over
    the set (so the code does not depend on the order or the number of images) and a
    two-layer MLP maps the mean to ``z_dim``. Input (K, 3, H, W) -> (z_dim,), or a batch
    of sets (B, K, 3, H, W) -> (B, z_dim). Fully convolutional: any image size."""

    def __init__(self, width: int = 32, z_dim: int = 128):
        super().__init__()
        _check_positive("TaskEncoder", width=width, z_dim=z_dim)
        self.width, self.z_dim = width, z_dim
        channels = [width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)]
        previous = width
        for index, out in enumerate(channels):
            layers.append(_ResidualBlock(previous, out))
            if index < 3:
                layers.append(nn.MaxPool2d(2))
            previous = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(previous, previous), nn.LeakyReLU(0.2), nn.Linear(previous, z_dim)
        )
        init_weights(self)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, features): one vector per image, before pooling the set."""
        return self.features(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:
            return self.head(self.embed(images).mean(dim=0))
        if images.dim() != 5:
            raise ValueError(
                f"TaskEncoder: expected (K, 3, H, W) or (B, K, 3, H, W), got {tuple(images.shape)}"
            )
        sets, shots = images.shape[:2]
        vectors = self.embed(images.flatten(0, 1)).unflatten(0, (sets, shots))
        return self.head(vectors.mean(dim=1))


# -------------------------------------------------------------------------- generator


class SkipLayerExcitation(nn.Module):
    """FastGAN's skip-layer excitation: a low-resolution map gates a high-resolution one
    channel by channel: adaptive average pool to 4x4 -> 4x4 convolution (to 1x1) ->
    LeakyReLU -> 1x1 convolution -> sigmoid -> multiply."""

    def __init__(self, low_channels: int, high_channels: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(low_channels, high_channels, 4, bias=False),
            nn.LeakyReLU(0.1),
            nn.Conv2d(high_channels, high_channels, 1, bias=False),
            nn.Sigmoid(),
        )

    def gate(self, low: torch.Tensor) -> torch.Tensor:
        """(N, C_low, h, w) -> (N, C_high, 1, 1) gates in (0, 1)."""
        return self.main(low)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return high * self.gate(low)


class _UpBlock(nn.Sequential):
    """Nearest upsampling x2 -> conv 3x3 -> batch norm -> GLU (halves 2 * out to out)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, 2 * out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * out_channels),
            nn.GLU(dim=1),
        )


def generator_channels(resolution: int, width: int) -> int:
    """FastGAN's widths, relative: 16 * width at 4x4, halving per doubling down to width."""
    return width * max(1, 64 // resolution)


class FewShotGenerator(nn.Module):
    """(task code, noise) -> image in [-1, 1], FastGAN-style.

    concat(code, noise) -> linear -> 4x4 map -> batch norm -> GLU, then one upsampling
    block per doubling up to ``image_size``; the two highest resolutions are gated by
    skip-layer excitation from the map 4x lower (8 -> 32 and 16 -> 64 at 64 px; 4 -> 16
    and 8 -> 32 at 32 px); a 3x3 convolution and tanh give the 3-channel image.
    ``code`` may be (code_dim,) or (1, code_dim): it is then shared by every noise row."""

    def __init__(
        self, image_size: int = 64, width: int = 16, code_dim: int = 128, noise_dim: int = 128
    ):
        super().__init__()
        _check_size("FewShotGenerator", image_size)
        _check_positive("FewShotGenerator", width=width, code_dim=code_dim, noise_dim=noise_dim)
        self.image_size, self.width = image_size, width
        self.code_dim, self.noise_dim = code_dim, noise_dim
        self.resolutions = [2**k for k in range(2, int(math.log2(image_size)) + 1)]
        first = generator_channels(4, width)
        self.init = nn.Linear(code_dim + noise_dim, 2 * first * 16, bias=False)
        self.init_norm = nn.Sequential(nn.BatchNorm2d(2 * first), nn.GLU(dim=1))
        self.ups = nn.ModuleDict(
            {
                str(res): _UpBlock(
                    generator_channels(res // 2, width), generator_channels(res, width)
                )
                for res in self.resolutions[1:]
            }
        )
        # the two highest resolutions, each gated from 4x lower
        self.sle_pairs = [(res // 4, res) for res in self.resolutions[-2:]]
        self.sle = nn.ModuleDict(
            {
                str(high): SkipLayerExcitation(
                    generator_channels(low, width), generator_channels(high, width)
                )
                for low, high in self.sle_pairs
            }
        )
        self.to_rgb = nn.Conv2d(generator_channels(image_size, width), 3, 3, padding=1)
        init_weights(self)

    def forward(self, code: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if noise.dim() != 2 or noise.shape[1] != self.noise_dim:
            raise ValueError(
                f"FewShotGenerator: noise must be (N, {self.noise_dim}), got {tuple(noise.shape)}"
            )
        if code.dim() == 1:
            code = code.unsqueeze(0)
        if code.shape[-1] != self.code_dim or code.shape[0] not in (1, noise.shape[0]):
            raise ValueError(
                f"FewShotGenerator: code must be ({noise.shape[0]} or 1, {self.code_dim}), "
                f"got {tuple(code.shape)}"
            )
        code = code.expand(noise.shape[0], -1)
        x = self.init(torch.cat([code, noise], dim=1)).unflatten(1, (-1, 4, 4))
        feats = {4: self.init_norm(x)}
        for res in self.resolutions[1:]:
            x = self.ups[str(res)](feats[res // 2])
            if str(res) in self.sle:
                x = self.sle[str(res)](feats[res // 4], x)
            feats[res] = x
        return torch.tanh(self.to_rgb(feats[self.image_size]))


# ---------------------------------------------------------------------- discriminator


def discriminator_channels(resolution: int, image_size: int, width: int) -> int:
    """width at full resolution, doubling per halving, at most 8 * width."""
    return width * min(8, image_size // resolution)


class FewShotDiscriminator(nn.Module):
    """Image (and task code) -> one unbounded score per image.

    Spectral norm on every convolution and linear layer, LeakyReLU(0.2), no
    normalization layers: a 3x3 stem convolution at full resolution, 4x4 stride-2
    convolutions down to 4x4, a 3x3 convolution, a linear layer to a feature vector phi,
    and the score ``w . phi + b`` (plus ``<embed(code), phi>``, the projection
    discriminator of Miyato & Koyama 2018, when ``code_dim`` > 0)."""

    def __init__(self, image_size: int = 64, width: int = 16, code_dim: int = 0):
        super().__init__()
        _check_size("FewShotDiscriminator", image_size)
        _check_positive("FewShotDiscriminator", width=width)
        if code_dim < 0:
            raise ValueError(f"FewShotDiscriminator: code_dim must be >= 0, got {code_dim}")
        self.image_size, self.width, self.code_dim = image_size, width, code_dim

        def channels(res: int) -> int:
            return discriminator_channels(res, image_size, width)

        def sn(layer: nn.Module) -> nn.Module:
            return spectral_norm(init_weights(layer))

        layers: list[nn.Module] = [sn(nn.Conv2d(3, channels(image_size), 3, padding=1))]
        layers.append(nn.LeakyReLU(0.2))
        res = image_size
        while res > 4:
            layers += [
                sn(nn.Conv2d(channels(res), channels(res // 2), 4, stride=2, padding=1)),
                nn.LeakyReLU(0.2),
            ]
            res //= 2
        last = channels(4)
        layers += [sn(nn.Conv2d(last, last, 3, padding=1)), nn.LeakyReLU(0.2), nn.Flatten()]
        layers += [sn(nn.Linear(16 * last, last)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.score = sn(nn.Linear(last, 1))
        self.embed = sn(nn.Linear(code_dim, last, bias=False)) if code_dim > 0 else None

    def forward(self, images: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
        phi = self.features(images)
        out = self.score(phi).squeeze(1)
        if self.embed is not None:
            if code is None:
                raise ValueError("FewShotDiscriminator: conditioned on a task code, none given")
            if code.dim() == 1:
                code = code.unsqueeze(0)
            out = out + (self.embed(code.to(phi.dtype)) * phi).sum(dim=1)
        return out


# ----------------------------------------------------------------------- DiffAugment


def parse_policy(policy: str) -> list[str]:
    """``"color,translation,cutout"`` -> the names; ``""`` -> none. Unknown names raise."""
    names = [name.strip() for name in policy.split(",") if name.strip()]
    unknown = [name for name in names if name not in DIFFAUG_POLICIES]
    if unknown:
        raise ValueError(
            f"diffaug policy: unknown {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(DIFFAUG_POLICIES)})"
        )
    return names


def _rand(x: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None):
    return torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)


def _randint(
    x: torch.Tensor, low: int, high: int, shape: tuple[int, ...], generator
) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=generator, device=x.device)


def _color(x: torch.Tensor, generator) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_rand(x, (n, 1, 1, 1), generator) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, (n, 1, 1, 1), generator) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, (n, 1, 1, 1), generator) + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, generator, ratio: float = 0.125) -> torch.Tensor:
    n, _, height, width = x.shape
    shift_x, shift_y = int(height * ratio + 0.5), int(width * ratio + 0.5)
    tx = _randint(x, -shift_x, shift_x + 1, (n, 1, 1), generator)
    ty = _randint(x, -shift_y, shift_y + 1, (n, 1, 1), generator)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(height, device=x.device),
        torch.arange(width, device=x.device),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + tx + 1, 0, height + 1)
    grid_y = torch.clamp(grid_y + ty + 1, 0, width + 1)
    padded = F.pad(x, [1, 1, 1, 1])  # zeros: what leaves the frame becomes 0 (mid-grey)
    return padded.permute(0, 2, 3, 1)[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, generator, ratio: float = 0.5) -> torch.Tensor:
    n, _, height, width = x.shape
    size_x, size_y = int(height * ratio + 0.5), int(width * ratio + 0.5)
    offset_x = _randint(x, 0, height + (1 - size_x % 2), (n, 1, 1), generator)
    offset_y = _randint(x, 0, width + (1 - size_y % 2), (n, 1, 1), generator)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(size_x, device=x.device),
        torch.arange(size_y, device=x.device),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + offset_x - size_x // 2, min=0, max=height - 1)
    grid_y = torch.clamp(grid_y + offset_y - size_y // 2, min=0, max=width - 1)
    mask = torch.ones(n, height, width, dtype=x.dtype, device=x.device)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


_AUGMENTS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(
    x: torch.Tensor,
    policy: str = "color,translation,cutout",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) of an NCHW batch in [-1, 1]: every operation is
    differentiable in ``x``, so it is applied to real and generated images alike before
    the discriminator. ``color``: random brightness, saturation, contrast per image;
    ``translation``: random shift by up to 1/8 of the side, zero-padded; ``cutout``: a
    zeroed square of half the side at a random place. Randomness comes from
    ``generator`` (on ``x``'s device) if given, else from torch's global RNG."""
    if x.dim() != 4:
        raise ValueError(f"diff_augment: expected an NCHW batch, got {tuple(x.shape)}")
    for name in parse_policy(policy):
        x = _AUGMENTS[name](x, generator)
    return x.contiguous()
