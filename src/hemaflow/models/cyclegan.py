"""CycleGAN networks for stain translation: U-Net and ResNet generators, PatchGAN critic.

Layouts follow junyanz/pytorch-CycleGAN-and-pix2pix (``networks.py``) with the changes of
the W-CycleGAN-GP stain normalizer: a U-Net generator (LeakyReLU, instance normalization,
transposed convolutions, skip connections) and a critic without sigmoid, so that it can
score images for a Wasserstein loss."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

UPSAMPLE_MODES = ("transpose", "resize")
CRITIC_NORMS = ("instance", "layer", "none")
RESIDUAL_MODES = ("shift", "affine")


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True)


def _phase_taps(weight: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3x3 kernel on a 2x nearest-upsampled image as two kernels on the low-resolution
    image along ``dim``: for even output pixels the taps (-1, 0, +1) fall on low-res
    pixels (-1, 0, 0), for odd ones on (0, 0, +1)."""
    w0, w1, w2 = weight.split(1, dim)
    zero = torch.zeros_like(w0)
    return torch.cat([w0, w1 + w2, zero], dim), torch.cat([zero, w0 + w1, w2], dim)


class NearestUpsampleConv(nn.Sequential):
    """2x nearest-neighbour upsampling, then a 3x3 convolution with reflection padding:
    ``Sequential(Upsample, Conv2d)`` in its parameters and its result, computed without
    making the upsampled image.

    On the upsampled image every output pixel reads three rows and three columns that
    are copies of two low-resolution ones, and reflection at the border repeats the edge
    pixel. So the convolution equals, for each of the four output phases (even or odd row
    and column), a 3x3 convolution of the low-resolution input (replicate padding) whose
    kernel sums the taps that land on the same pixel; the four phase maps are interleaved
    by ``pixel_shuffle``. One convolution at a quarter of the pixels with four times the
    outputs: the same result up to float rounding (~1e-6), about 3x faster forward and
    backward at the U-Net's outer level on a CPU, where these convolutions were most of a
    CycleGAN iteration. Inputs under ``min_side`` pixels (the inner levels, where
    building the kernels costs more than it saves) take the plain form. Model files of
    the plain form load unchanged (same parameters)."""

    min_side = 8

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, padding_mode="reflect"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self[1]
        if min(x.shape[-2:]) < self.min_side:
            return conv(self[0](x))
        # (out, row phase, column phase, in, 3, 3) -> 4 * out kernels on the low-res input
        kernels = [column for row in _phase_taps(conv.weight, 2) for column in _phase_taps(row, 3)]
        kernel = torch.stack(kernels, 1).reshape(-1, conv.in_channels, 3, 3)
        bias = None if conv.bias is None else conv.bias.repeat_interleave(4)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, bias)
        return F.pixel_shuffle(y, 2)


class UNetGenerator(nn.Module):
    """pix2pix U-Net: ``log2(image_size)`` stride-2 4x4 convolutions down to a 1x1
    bottleneck, the same number of upsampling steps back, and skip connections that
    concatenate each encoder level's features to the decoder's input at that level.

    Channels double per level from ``ngf`` up to ``min(8 * ngf, max_channels)``.
    ``upsample="resize"`` replaces each transposed convolution by nearest-neighbour
    upsampling and a 3x3 convolution, which avoids checkerboard artefacts. ``dropout`` is
    applied in the three innermost decoder levels, as in pix2pix. Output in [-1, 1].

    ``residual=True`` makes the network predict a change of its input instead of a new
    image: ``tanh(atanh(x) + r(x))``, with the last convolution initialized to zero, so
    that an untrained generator is the identity. A stain translation changes colour and
    texture but not where the cells are; starting from the identity, a short training
    run cannot lose the source's content, which the plain U-Net must first learn to
    copy through its skip connections.

    ``residual_mode="affine"`` (with ``residual``) predicts, instead of a change, a colour
    transform per pixel: a 3x3 matrix ``M`` and a bias ``b`` applied to the input's colour,
    ``tanh((I + M) atanh(x) + b)``, with ``M`` and ``b`` averaged over cells of
    ``affine_cell`` pixels and interpolated bilinearly between cell centres. A stain is a
    colour mapping that varies slowly over a slide: this generator can remap every colour
    and scale the contrast of every detail (a gain, where the shift must draw the detail
    anew), but it cannot paint texture finer than a cell, so no speckle and no invented
    edges."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        image_size: int = 64,
        upsample: str = "transpose",
        max_channels: int = 512,
        dropout: float = 0.0,
        residual: bool = False,
        residual_mode: str = "shift",
        affine_cell: int = 8,
    ):
        super().__init__()
        if residual_mode not in RESIDUAL_MODES:
            raise ValueError(
                f"UNetGenerator: residual_mode must be one of {RESIDUAL_MODES}, "
                f"got {residual_mode!r}"
            )
        if (
            residual
            and residual_mode == "affine"
            and (affine_cell < 1 or affine_cell & (affine_cell - 1) or affine_cell > image_size)
        ):
            raise ValueError(
                f"UNetGenerator: affine_cell must be a power of two <= image_size "
                f"({image_size}), got {affine_cell}"
            )
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(
                f"UNetGenerator: image_size must be a power of two >= 8, got {image_size}"
            )
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(
                f"UNetGenerator: upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}"
            )
        self.image_size = image_size
        self.upsample = upsample
        self.residual = residual
        self.affine = residual and residual_mode == "affine"
        self.affine_cell = affine_cell
        if self.affine:
            out_channels = out_channels * (out_channels + 1)  # the matrix and the bias
        n_levels = int(math.log2(image_size))
        cap = min(8 * ngf, max_channels)
        channels = [min(ngf * 2**level, cap) for level in range(n_levels)]

        self.downs = nn.ModuleList()
        for level, width in enumerate(channels):
            layers: list[nn.Module] = []
            if level > 0:
                layers.append(nn.LeakyReLU(0.2, inplace=False))
            previous = in_channels if level == 0 else channels[level - 1]
            layers.append(nn.Conv2d(previous, width, kernel_size=4, stride=2, padding=1))
            # neither the first level (raw image features) nor the 1x1 bottleneck, where
            # instance statistics over a single pixel are undefined, is normalized
            if 0 < level < n_levels - 1:
                layers.append(_instance_norm(width))
            self.downs.append(nn.Sequential(*layers))

        # ups[k] produces the features of level (n_levels - 2 - k), outermost last
        self.ups = nn.ModuleList()
        for level in reversed(range(n_levels)):
            inner = channels[level] if level == n_levels - 1 else 2 * channels[level]
            outermost = level == 0
            width = out_channels if outermost else channels[level - 1]
            layers = [nn.ReLU(inplace=False), self._upsampling(inner, width)]
            if outermost:
                # the image, or (residual) the change of it, unnormalized: an instance norm
                # here fixes each channel's spread of the change, so a near-uniform stain
                # shift must put all that spread into one spot (measured: an 8 px blob
                # on every translation, the "droplet" of StyleGAN2's Fig. 1)
                if not residual:
                    layers.append(nn.Tanh())
            else:
                layers.append(_instance_norm(width))
                if dropout > 0 and level >= n_levels - 3:
                    layers.append(nn.Dropout(dropout))
            self.ups.append(nn.Sequential(*layers))

    def _upsampling(self, in_channels: int, out_channels: int) -> nn.Module:
        if self.upsample == "transpose":
            return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
        return NearestUpsampleConv(in_channels, out_channels)

    def output_layer(self) -> nn.Conv2d | nn.ConvTranspose2d:
        """The convolution that produces the image (or, residual, the change)."""
        layers = [
            m for m in self.ups[-1].modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
        ]
        return layers[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = x
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = skips.pop()
        for up in self.ups[:-1]:
            x = torch.cat([up(x), skips.pop()], dim=1)
        out = self.ups[-1](x)
        if not self.residual:
            return out
        # atanh of inputs clamped inside (-1, 1): exact 0/255 pixels stay finite
        limit = 1.0 - 1e-3
        z = torch.atanh(source.clamp(-limit, limit))
        if not self.affine:
            return torch.tanh(z + out)
        return torch.tanh(z + self._colour_change(out, z))

    def _colour_change(self, params: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``M z + b`` from the per-pixel parameters, smoothed over ``affine_cell`` cells."""
        n, c, h, w = z.shape
        if self.affine_cell > 1:
            params = F.interpolate(
                F.avg_pool2d(params, self.affine_cell),
                size=(h, w),
                mode="bilinear",
                align_corners=False,
            )
        matrix = params[:, : c * c].reshape(n, c, c, h, w)
        bias = params[:, c * c :]
        return torch.einsum("nijhw,njhw->nihw", matrix, z) + bias


class ResnetBlock(nn.Module):
    """Two reflection-padded 3x3 convolutions with instance norm, plus the identity."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            _instance_norm(channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            _instance_norm(channels),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """The original CycleGAN generator: reflection pad + 7x7 convolution, two stride-2
    downsamplings, ``n_blocks`` residual blocks (6 for 128 px, 9 for 256 px in the paper),
    two transposed-convolution upsamplings, 7x7 convolution, tanh. Fully convolutional;
    ``image_size`` is only recorded (``translate`` resizes inputs to it)."""

    def __init__(
        self,
        ngf: int = 64,
        n_blocks: int = 9,
        in_channels: int = 3,
        out_channels: int = 3,
        image_size: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"ResnetGenerator: n_blocks must be >= 0, got {n_blocks}")
        self.image_size = image_size
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7),
            _instance_norm(ngf),
            nn.ReLU(inplace=True),
        ]
        width = ngf
        for _ in range(2):
            layers += [
                nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1),
                _instance_norm(2 * width),
                nn.ReLU(inplace=True),
            ]
            width *= 2
        layers += [ResnetBlock(width, dropout) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(
                    width, width // 2, kernel_size=3, stride=2, padding=1, output_padding=1
                ),
                _instance_norm(width // 2),
                nn.ReLU(inplace=True),
            ]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchCritic(nn.Module):
    """The 70x70 PatchGAN of pix2pix/CycleGAN (for ``n_layers=3``) as a Wasserstein
    critic: 4x4 convolutions, LeakyReLU(0.2), no sigmoid, and ``norm``: ``instance`` (as
    in CycleGAN), ``layer`` (WGAN-GP's advice for critics) or ``none``; never batch norm,
    which would couple the samples that the gradient penalty treats one by one. Instance
    norm removes each feature map's mean over the image, and with it most of a global
    colour cast: a critic that should judge stain is then nearly blind to it.
    Returns an (N, 1, H', W') map of unbounded patch scores."""

    def __init__(
        self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance"
    ):
        super().__init__()
        if norm not in CRITIC_NORMS:
            raise ValueError(f"PatchCritic: norm must be one of {CRITIC_NORMS}, got {norm!r}")
        if n_layers < 1:
            raise ValueError(f"PatchCritic: n_layers must be >= 1, got {n_layers}")

        def normalization(channels: int) -> list[nn.Module]:
            if norm == "instance":
                return [_instance_norm(channels)]
            if norm == "layer":
                # over channels and positions together: per-sample, as the gradient
                # penalty needs, and it keeps each channel's mean relative to the others
                return [nn.GroupNorm(1, channels, affine=True)]
            return []

        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = ndf
        for layer in range(1, n_layers + 1):
            stride = 2 if layer < n_layers else 1
            next_width = ndf * min(2**layer, 8)
            layers += [
                nn.Conv2d(width, next_width, kernel_size=4, stride=stride, padding=1),
                *normalization(next_width),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = next_width
        layers.append(nn.Conv2d(width, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PixelCritic(nn.Module):
    """pix2pix's PixelGAN (``netD=pixel``) as a Wasserstein critic: 1x1 convolutions only,
    so each score sees one pixel's colour and nothing of the shapes around it. Without a
    normalization it judges exactly what an instance-normed patch critic is blind to, the
    distribution of colours (Isola et al. 2017: the PixelGAN "increases colourfulness" and
    leaves spatial structure alone). Returns an (N, 1, H, W) map of unbounded scores."""

    def __init__(self, in_channels: int = 3, ndf: int = 64):
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, ndf, kernel_size=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, 2 * ndf, kernel_size=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * ndf, 1, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """CycleGAN's ``normal`` init: convolution and linear weights ~ N(0, gain), biases 0;
    normalization scales ~ N(1, gain), shifts 0; a residual U-Net's output layer 0 (the
    identity). Returns ``net``."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(module.weight, 0.0, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif (
            isinstance(module, nn.InstanceNorm2d | nn.BatchNorm2d | nn.GroupNorm) and module.affine
        ):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)
    if isinstance(net, UNetGenerator) and net.residual:
        output = net.output_layer()
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)
    return net
