"""Small, fast conditional GAN networks for a CPU: a DCGAN-shaped generator with
class-conditional batch normalization and a strided-convolution critic with an optional
projection head.

The residual networks of ``hemaflow.models.cwgan`` (the paper's layout) run every residual
block at full width at 32 and 64 px, which costs a 2-core CPU seconds per step. Here the
resolution doubles while the width halves (DCGAN, Radford et al. 2016), so each stage costs
about the same and the whole generator a fraction of the residual one:

Generator: z -> FC -> ``8 w`` x 4 x 4 -> per stage: conditional BN, ReLU, 4x4 stride-2
transposed convolution (width halves, at least ``w / 2``) until ``image_size`` -> conditional
BN, ReLU, 3x3 convolution to RGB -> tanh. The class enters every normalization as a learned
gain and bias (conditional batch normalization, de Vries et al. 2017; Miyato & Koyama 2018),
which conditions every stage rather than only the input.

Critic: per stage a 4x4 stride-2 convolution (width doubles, at most ``8 w``), LeakyReLU(0.2),
down to 4 x 4 -> sum over positions -> linear score, plus ``<embedding(y), h>`` when it is a
projection critic. No normalization, so a gradient penalty applies sample by sample.

Plain torch."""

from __future__ import annotations

import math

import torch
from torch import nn

SLOPE = 0.2
START = 4


def _check(name: str, image_size: int, width: int) -> None:
    if not isinstance(image_size, int) or image_size < 2 * START or image_size & (image_size - 1):
        raise ValueError(f"{name}: image_size must be a power of two >= 8, got {image_size!r}")
    if not isinstance(width, int) or width < 2:
        raise ValueError(f"{name}: width must be an int >= 2, got {width!r}")


def generator_channels(image_size: int, width: int) -> list[int]:
    """Channels at 4, 8, ..., image_size px: 8 w at 4 px, halving per stage, at least w / 2."""
    stages = int(math.log2(image_size // START))
    return [max(width // 2, width * 8 // 2**k) for k in range(stages + 1)]


class ConditionalBatchNorm2d(nn.Module):
    """Batch normalization without its own affine map, then a per-class gain and bias
    (gain initialized to 1, bias to 0)."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(n_classes, channels)
        self.bias = nn.Embedding(n_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        # the bias is added in place: the product's backward needs h and the gain, not
        # the product (same numbers as h * gain + bias, one full-size tensor less)
        out = h * self.gain(y)[:, :, None, None]
        return out.add_(self.bias(y)[:, :, None, None])


class DCGenerator(nn.Module):
    """G(z, y) -> images in [-1, 1], NCHW, ``image_size`` square (see the module text)."""

    def __init__(self, n_classes: int, z_dim: int = 128, image_size: int = 64, width: int = 32):
        super().__init__()
        _check(type(self).__name__, image_size, width)
        if not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"DCGenerator: n_classes must be >= 1, got {n_classes!r}")
        if not isinstance(z_dim, int) or z_dim < 1:
            raise ValueError(f"DCGenerator: z_dim must be an int >= 1, got {z_dim!r}")
        self.n_classes = n_classes
        self.z_dim = z_dim
        self.image_size = image_size
        self.width = width
        channels = generator_channels(image_size, width)
        self.start_channels = channels[0]
        self.fc = nn.Linear(z_dim, channels[0] * START * START)
        self.norms = nn.ModuleList(ConditionalBatchNorm2d(c, n_classes) for c in channels)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1)
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        self.to_rgb = nn.Conv2d(channels[-1], 3, kernel_size=3, padding=1)
        # in place: each activation's input is a normalization's fresh output, which no
        # backward needs
        self.act = nn.ReLU(inplace=True)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, self.start_channels, START, START)
        for norm, up in zip(self.norms[:-1], self.ups, strict=True):
            x = up(self.act(norm(x, y)))
        return torch.tanh(self.to_rgb(self.act(self.norms[-1](x, y))))


def _group_std(h: torch.Tensor, group: int) -> torch.Tensor:
    """(N, 1, H, W): per image, the standard deviation of the features over its group of
    ``group`` images (the batch split into groups in order; a batch that does not divide
    evenly uses its largest divisor <= group), averaged over channels and positions."""
    n = h.shape[0]
    size = max(d for d in range(1, min(group, n) + 1) if n % d == 0)
    grouped = h.float().reshape(size, n // size, *h.shape[1:])
    std = (grouped.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    return std.to(h.dtype).repeat(size)[:, None, None, None].expand(n, 1, *h.shape[2:])


class DCCritic(nn.Module):
    """Critic score per image (no sigmoid); a projection critic when ``n_classes`` > 0
    (``forward`` then needs the labels ``y``)."""

    def __init__(
        self, image_size: int = 64, width: int = 32, n_classes: int = 0, minibatch_std: int = 0
    ):
        super().__init__()
        _check(type(self).__name__, image_size, width)
        if not isinstance(minibatch_std, int) or minibatch_std < 0 or minibatch_std == 1:
            raise ValueError(
                f"{type(self).__name__}: minibatch_std must be 0 (off) or a group size >= 2, "
                f"got {minibatch_std!r}"
            )
        stages = int(math.log2(image_size // START))
        layers: list[nn.Module] = []
        c_in = 3
        for k in range(stages):
            c_out = width * min(2**k, 8)
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1)]
            # in place: a convolution's output is needed by no backward (nor by the double
            # backward of a gradient penalty)
            layers += [nn.LeakyReLU(SLOPE, inplace=True)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.image_size = image_size
        self.n_classes = n_classes
        # ProGAN's minibatch standard deviation (Karras et al. 2018): the spread of the
        # 4 x 4 features over a group of images enters as one more channel, so that a
        # batch of near-identical fakes (mode collapse) is told from varied real images
        self.minibatch_std = minibatch_std
        self.group_conv = (
            nn.Sequential(
                nn.Conv2d(c_in + 1, c_in, kernel_size=3, padding=1),
                nn.LeakyReLU(SLOPE, inplace=True),
            )
            if minibatch_std
            else None
        )
        self.out = nn.Linear(c_in, 1)
        self.projection = nn.Embedding(n_classes, c_in) if n_classes > 0 else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features (N, channels) that the score is read from."""
        h = self.body(x)
        if self.group_conv is not None:
            h = self.group_conv(torch.cat([h, _group_std(h, self.minibatch_std)], dim=1))
        return h.sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        out = self.out(h)
        if self.projection is not None:
            if y is None:
                raise ValueError(f"{type(self).__name__}: a projection critic needs labels y")
            out = out + (self.projection(y) * h).sum(dim=1, keepdim=True)
        return out


class CodeDCGenerator(DCGenerator):
    """The few-shot GAN's generator in the DCGAN shape: (task code, noise) -> image.
    ``concat(code, noise)`` enters the fully connected layer; the normalizations are plain
    batch norms (one class). ``code`` may be (code_dim,) or (1, code_dim): it is then
    shared by every noise row. Same interface as ``FewShotGenerator``."""

    def __init__(
        self, image_size: int = 64, width: int = 32, code_dim: int = 128, noise_dim: int = 128
    ):
        if not isinstance(code_dim, int) or code_dim < 1:
            raise ValueError(f"CodeDCGenerator: code_dim must be an int >= 1, got {code_dim!r}")
        super().__init__(1, z_dim=code_dim + noise_dim, image_size=image_size, width=width)
        self.code_dim, self.noise_dim = code_dim, noise_dim

    def forward(self, code: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if noise.dim() != 2 or noise.shape[1] != self.noise_dim:
            raise ValueError(
                f"CodeDCGenerator: noise must be (N, {self.noise_dim}), got {tuple(noise.shape)}"
            )
        if code.dim() == 1:
            code = code.unsqueeze(0)
        if code.shape[-1] != self.code_dim or code.shape[0] not in (1, noise.shape[0]):
            raise ValueError(
                f"CodeDCGenerator: code must be ({noise.shape[0]} or 1, {self.code_dim}), "
                f"got {tuple(code.shape)}"
            )
        z = torch.cat([code.to(noise.dtype).expand(noise.shape[0], -1), noise], dim=1)
        y = torch.zeros(noise.shape[0], dtype=torch.long, device=noise.device)
        return super().forward(z, y)


class CodeDCCritic(DCCritic):
    """The few-shot GAN's discriminator in the DCGAN shape: one score per image (shape
    (N,)), plus ``<W code, h>`` (projection on the task code) when ``code_dim`` > 0. Same
    interface as ``FewShotDiscriminator``."""

    def __init__(self, image_size: int = 64, width: int = 32, code_dim: int = 0):
        super().__init__(image_size=image_size, width=width, n_classes=0)
        if not isinstance(code_dim, int) or code_dim < 0:
            raise ValueError(f"CodeDCCritic: code_dim must be an int >= 0, got {code_dim!r}")
        self.code_dim = code_dim
        features = self.out.in_features
        self.embed = nn.Linear(code_dim, features, bias=False) if code_dim > 0 else None

    def forward(self, images: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        h = self.features(images)
        out = self.out(h).squeeze(1)
        if self.embed is not None:
            if code is None:
                raise ValueError("CodeDCCritic: conditioned on a task code, none given")
            if code.dim() == 1:
                code = code.unsqueeze(0)
            out = out + (self.embed(code.to(h.dtype)) * h).sum(dim=1)
        return out
