"""C-WGAN-GP networks: a class-conditional residual generator, a residual critic, and a
classifier with the critic's body (see REFERENCE.md, "C-WGAN-GP for classes with more
than 1000 images").

Generator: concat(z, embedding(class)) -> fully connected to ``width`` x (S/2) x (S/2) ->
``blocks[0]`` residual blocks (3x3) -> 5x5 stride-2 transposed convolution to
``width`` x S x S -> ``blocks[1]`` residual blocks -> 3x3 convolution to RGB -> tanh
(the paper's 128 px generator has one more upsampling stage; ``blocks`` with three
entries gives it: the fully connected layer then starts at S/4).

Critic: 5x5 stride-2 convolution to ``width`` x S/2 x S/2 -> groups of residual blocks
(``blocks``, (2, 4, 4) in the paper) with a 2x2 average pooling after each group while the
maps are larger than 8x8 (64 px: 32 -> 16 -> 8; 128 px: 64 -> 32 -> 16 -> 8; 32 px:
16 -> 8) -> flatten -> FC 128 -> LeakyReLU -> FC ``n_outputs``. No normalization (batch
norm would couple the samples that the gradient penalty treats one by one). The
classifier is the same body with ``n_outputs = n_classes`` and optional dropout.

Plain torch; LeakyReLU(0.2) throughout."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

SLOPE = 0.2
CRITIC_CONDITIONINGS = ("none", "projection")
FINAL_RESOLUTION = 8


def _check_size(name: str, image_size: int, smallest: int) -> None:
    if not isinstance(image_size, int) or image_size < smallest or image_size & (image_size - 1):
        raise ValueError(
            f"{name}: image_size must be a power of two >= {smallest}, got {image_size}"
        )


def _check_blocks(name: str, blocks: Sequence[int], length: tuple[int, ...]) -> tuple[int, ...]:
    blocks = tuple(blocks)
    if len(blocks) not in length or any(not isinstance(b, int) or b < 0 for b in blocks):
        raise ValueError(
            f"{name}: blocks must be {' or '.join(map(str, length))} counts >= 0, got {blocks}"
        )
    return blocks


class GeneratorBlock(nn.Module):
    """Pre-activation residual block: (BN, LeakyReLU, 3x3 conv) twice, plus the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(SLOPE),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.LeakyReLU(SLOPE),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CriticBlock(nn.Module):
    """Pre-activation residual block without normalization: (LeakyReLU, 3x3 conv) twice,
    plus the identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.LeakyReLU(SLOPE),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.LeakyReLU(SLOPE),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CWGANGenerator(nn.Module):
    """G(z, y) -> images in [-1, 1], NCHW, ``image_size`` square.

    ``blocks``: residual blocks at each resolution, lowest first; ``len(blocks) - 1``
    upsamplings by 5x5 stride-2 transposed convolutions, so the fully connected layer
    starts at ``image_size / 2 ** (len(blocks) - 1)``. (2, 4): the paper's layout at 64 px.
    The class enters as a learned embedding of ``embed_dim`` concatenated to ``z``."""

    def __init__(
        self,
        n_classes: int,
        z_dim: int = 128,
        image_size: int = 64,
        width: int = 64,
        embed_dim: int = 32,
        blocks: Sequence[int] = (2, 4),
    ):
        super().__init__()
        if not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"CWGANGenerator: n_classes must be >= 1, got {n_classes!r}")
        for name, value in (("z_dim", z_dim), ("width", width), ("embed_dim", embed_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CWGANGenerator: {name} must be an int >= 1, got {value!r}")
        blocks = _check_blocks("CWGANGenerator", blocks, (2, 3))
        _check_size("CWGANGenerator", image_size, 2 ** len(blocks))
        self.n_classes = n_classes
        self.z_dim = z_dim
        self.image_size = image_size
        self.width = width
        self.start = image_size // 2 ** (len(blocks) - 1)
        self.embedding = nn.Embedding(n_classes, embed_dim)
        self.fc = nn.Linear(z_dim + embed_dim, width * self.start * self.start)
        layers: list[nn.Module] = []
        for stage, count in enumerate(blocks):
            if stage > 0:
                layers += [
                    nn.BatchNorm2d(width),
                    nn.LeakyReLU(SLOPE),
                    nn.ConvTranspose2d(
                        width, width, kernel_size=5, stride=2, padding=2, output_padding=1
                    ),
                ]
            layers += [GeneratorBlock(width) for _ in range(count)]
        layers += [
            nn.BatchNorm2d(width),
            nn.LeakyReLU(SLOPE),
            nn.Conv2d(width, 3, kernel_size=3, padding=1),
            nn.Tanh(),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.fc(torch.cat([z, self.embedding(y)], dim=1))
        x = x.view(-1, self.width, self.start, self.start)
        return self.body(x)


class ResidualCritic(nn.Module):
    """Residual critic (``n_outputs=1``, no sigmoid) or classifier body (``n_outputs`` =
    number of classes, logits). ``dropout`` applies before the last layer.

    ``n_classes`` > 0 makes it a projection critic (Miyato & Koyama 2018): the score adds
    ``<embedding(y), h>`` to the unconditional ``FC(h)``, with ``h`` the 128 features, and
    ``forward`` then needs the labels ``y``."""

    def __init__(
        self,
        n_outputs: int = 1,
        image_size: int = 64,
        width: int = 64,
        blocks: Sequence[int] = (2, 4, 4),
        dropout: float = 0.0,
        n_classes: int = 0,
        hidden: int = 128,
    ):
        super().__init__()
        name = type(self).__name__
        if not isinstance(n_outputs, int) or n_outputs < 1:
            raise ValueError(f"{name}: n_outputs must be >= 1, got {n_outputs!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"{name}: width must be an int >= 1, got {width!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout!r}")
        blocks = _check_blocks(name, blocks, tuple(range(1, 9)))
        _check_size(name, image_size, 2 * FINAL_RESOLUTION)
        self.image_size = image_size
        self.n_outputs = n_outputs
        self.n_classes = n_classes
        pools = int(math.log2(image_size // 2 // FINAL_RESOLUTION))
        layers: list[nn.Module] = [nn.Conv2d(3, width, kernel_size=5, stride=2, padding=2)]
        for group, count in enumerate(blocks):
            layers += [CriticBlock(width) for _ in range(count)]
            if group < pools:
                layers.append(nn.AvgPool2d(2))
        # fewer groups than pools (a 128 px critic with two groups): pool the rest at the end
        layers += [nn.AvgPool2d(2) for _ in range(pools - len(blocks))]
        layers.append(nn.LeakyReLU(SLOPE))
        self.body = nn.Sequential(*layers)
        features = width * FINAL_RESOLUTION * FINAL_RESOLUTION
        self.fc = nn.Sequential(nn.Linear(features, hidden), nn.LeakyReLU(SLOPE))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(hidden, n_outputs)
        self.projection = nn.Embedding(n_classes, hidden) if n_classes > 0 else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(self.body(x).flatten(1))
        out = self.out(self.dropout(h))
        if self.projection is not None:
            if y is None:
                raise ValueError(f"{type(self).__name__}: a projection critic needs labels y")
            out = out + (self.projection(y) * h).sum(dim=1, keepdim=True)
        return out


class ResidualClassifier(ResidualCritic):
    """The critic's body with ``n_classes`` logits (and dropout before them)."""

    def __init__(
        self,
        n_classes: int,
        image_size: int = 64,
        width: int = 64,
        blocks: Sequence[int] = (2, 4, 4),
        dropout: float = 0.0,
    ):
        super().__init__(
            n_outputs=n_classes, image_size=image_size, width=width, blocks=blocks, dropout=dropout
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)
