"""Classifier networks: SENet-154 with a gather-excite head (REFERENCE.md, "SENet-154-GE
classifier"), the plain SE-ResNeXt it is ablated against, and a ResNet-18 baseline.

SE-ResNeXt (Hu et al. 2018, SENet-154 variant): a stem of three 3x3 convolutions
(stride 2, 1, 1; ``stem_width``, ``stem_width``, ``2 * stem_width`` channels) and a 3x3
stride-2 max pool, then stages of bottleneck blocks. Block of stage i (0-based): 1x1
convolution to half the grouped width, 3x3 grouped convolution (``cardinality`` groups,
grouped width ``cardinality * base_width * 2**i``, the stride of the block), 1x1
convolution to ``widths[i]``, squeeze-and-excitation (reduction 16), plus the shortcut:
the identity, or a 3x3 (stride-2 where the block downsamples) convolution and a norm
where the shape changes. Stages 2.. start with a stride-2 block. SENet-154 is
``stage_blocks=(3, 8, 36, 3)``, ``widths=(256, 512, 1024, 2048)``, ``cardinality=64``,
``base_width=4``. ``stem_stride`` 2 drops the max pool and 1 also the stride of the first
convolution (for small images).

Gather-excite head (``gather_excite=True``): with S the stem's features and F the last
stage's, S is average-pooled to F's size and projected by a 1x1 convolution (+ norm) to
F's channels, multiplied element-wise with F and sent through an SE module; F goes
through a gather-excite module (GE-theta, Hu et al. 2018: depth-wise 3x3 stride-2
convolutions, as many as bring F's map down to 1x1, i.e. a global extent; the sigmoid of
the gathered context, upsampled, multiplies F). The head's output is F + SE + GE, then
global average pooling, dropout and a linear layer (logits; softmax outside).
``gather_excite=False`` is the plain SE-ResNeXt: F is pooled directly.

``norm`` is ``"batch"`` (BatchNorm) or ``"group"`` (GroupNorm, 32 groups or fewer where
a layer has fewer than 64 channels, at least 2 channels per group when possible).

ResNet-18 (He et al. 2016): BasicBlocks (2, 2, 2, 2), widths 64..512; for images of at
most 64 px the stem is a single 3x3 stride-1 convolution without max pool (the CIFAR
variant), otherwise the 7x7 stride-2 convolution and max pool.

Plain torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group")
ARCHITECTURES = ("senet_ge", "resnet18")
STEM_STRIDES = (1, 2, 4)
SMALL_INPUT = 64  # ResNet-18 uses the small-image stem up to this size
SENET154 = {
    "stage_blocks": (3, 8, 36, 3),
    "widths": (256, 512, 1024, 2048),
    "cardinality": 64,
    "base_width": 4,
    "stem_width": 64,
}


# ------------------------------------------------------------------------------- pieces


def group_count(channels: int, largest: int = 32) -> int:
    """GroupNorm groups for ``channels``: the largest divisor of ``channels`` that is at
    most ``largest`` and leaves at least 2 channels per group (1 if ``channels`` is 1)."""
    limit = max(1, min(largest, channels // 2))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def conv_norm_act(
    norm: str,
    c_in: int,
    c_out: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: bool = True,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(
            c_in, c_out, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
        ),
        norm_layer(norm, c_out),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """x * sigmoid(FC(ReLU(FC(global average of x)))), the FCs as 1x1 convolutions with
    ``channels // reduction`` hidden units (at least 1)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = self.fc2(F.relu(self.fc1(gate), inplace=True))
        return x * torch.sigmoid(gate)


class GatherExcite(nn.Module):
    """GE-theta (Hu et al. 2018, "Gather-Excite"): gather = ``n_convs`` depth-wise 3x3
    stride-2 convolutions (each with a norm, ReLU between them), so that each gathered
    value sees a window of about ``2 ** n_convs`` pixels of the input (``n_convs`` large
    enough to reach a 1x1 map: a global extent); excite = sigmoid of the gathered
    context, upsampled (nearest) to the input's size, multiplied into the input."""

    def __init__(self, channels: int, n_convs: int, norm: str = "batch"):
        super().__init__()
        if n_convs < 1:
            raise ValueError(f"GatherExcite: n_convs must be >= 1, got {n_convs}")
        layers: list[nn.Module] = []
        for index in range(n_convs):
            layers += [
                nn.Conv2d(channels, channels, 3, 2, padding=1, groups=channels, bias=False),
                norm_layer(norm, channels),
            ]
            if index < n_convs - 1:
                layers.append(nn.ReLU(inplace=True))
        self.gather = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.gather(x)
        if context.shape[-2:] != x.shape[-2:]:
            context = F.interpolate(context, size=x.shape[-2:], mode="nearest")
        return x * torch.sigmoid(context)


class SEResNeXtBottleneck(nn.Module):
    """SENet-154's block: 1x1 (to ``mid // 2``), 3x3 grouped (``mid``, stride), 1x1 (to
    ``c_out``), SE, plus the shortcut (identity, or 3x3 conv + norm), ReLU."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        mid: int,
        cardinality: int,
        stride: int,
        norm: str,
        reduction: int = 16,
    ):
        super().__init__()
        # SENet-154 halves the first 1x1's channels; kept a multiple of the groups
        reduced = cardinality * max(1, mid // (2 * cardinality))
        self.body = nn.Sequential(
            conv_norm_act(norm, c_in, reduced, 1),
            conv_norm_act(norm, reduced, mid, 3, stride, groups=cardinality),
            conv_norm_act(norm, mid, c_out, 1, act=False),
        )
        self.se = SqueezeExcite(c_out, reduction)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = conv_norm_act(norm, c_in, c_out, 3, stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.se(self.body(x)) + self.shortcut(x), inplace=True)


def _conv_size(size: int, kernel: int, stride: int, padding: int, ceil: bool = False) -> int:
    span = size + 2 * padding - kernel
    return (math.ceil(span / stride) if ceil else span // stride) + 1


def _check_int(where: str, name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}: {name} must be an int >= {low}, got {value!r}")
    return value


def _check_common(where: str, n_classes: int, norm: str, dropout: float, image_size: int):
    _check_int(where, "n_classes", n_classes, 1)
    _check_int(where, "image_size", image_size, 16)
    if norm not in NORMS:
        raise ValueError(f"{where}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"{where}: dropout must be in [0, 1), got {dropout!r}")


def init_classifier(net: nn.Module) -> nn.Module:
    """He initialisation of the convolutions, norms at (1, 0)."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return net


# ------------------------------------------------------------------------------ SENet-GE


class SENetGE(nn.Module):
    """SE-ResNeXt (SENet-154 layout) with the gather-excite fusion head; see the module
    docstring. ``image_size`` sets the number of gather convolutions (global extent) and
    is what ``predict_proba`` resizes inputs to; other sizes still run."""

    def __init__(
        self,
        n_classes: int,
        stage_blocks: Sequence[int] = SENET154["stage_blocks"],
        widths: Sequence[int] = SENET154["widths"],
        cardinality: int = 64,
        base_width: int = 4,
        norm: str = "batch",
        dropout: float = 0.2,
        gather_excite: bool = True,
        image_size: int = 224,
        stem_width: int = 64,
        stem_stride: int = 4,
        reduction: int = 16,
    ):
        super().__init__()
        where = "SENetGE"
        _check_common(where, n_classes, norm, dropout, image_size)
        stage_blocks, widths = tuple(stage_blocks), tuple(widths)
        if not stage_blocks or len(stage_blocks) != len(widths):
            raise ValueError(
                f"{where}: stage_blocks and widths must be non-empty and of the same length, "
                f"got {stage_blocks} and {widths}"
            )
        for name, values in (("stage_blocks", stage_blocks), ("widths", widths)):
            for value in values:
                _check_int(where, name, value, 1)
        for name, value in (
            ("cardinality", cardinality),
            ("base_width", base_width),
            ("stem_width", stem_width),
            ("reduction", reduction),
        ):
            _check_int(where, name, value, 1)
        if stem_stride not in STEM_STRIDES:
            raise ValueError(f"{where}: stem_stride must be 1, 2 or 4, got {stem_stride!r}")
        self.n_classes = self.n_outputs = n_classes
        self.image_size = image_size
        self.gather_excite = bool(gather_excite)

        self.stem = nn.Sequential(
            conv_norm_act(norm, 3, stem_width, 3, stride=1 if stem_stride == 1 else 2),
            conv_norm_act(norm, stem_width, stem_width, 3),
            conv_norm_act(norm, stem_width, 2 * stem_width, 3),
        )
        size = image_size if stem_stride == 1 else _conv_size(image_size, 3, 2, 1)
        self.pool: nn.Module = nn.Identity()
        if stem_stride == 4:
            self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            size = _conv_size(size, 3, 2, 0, ceil=True)
        stages: list[nn.Module] = []
        c_in = 2 * stem_width
        for index, (blocks, width) in enumerate(zip(stage_blocks, widths, strict=True)):
            mid = cardinality * base_width * 2**index
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(
                    SEResNeXtBottleneck(c_in, width, mid, cardinality, stride, norm, reduction)
                )
                c_in = width
            if index > 0:
                size = _conv_size(size, 3, 2, 1)
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.feature_size = size  # of the last stage at image_size
        self.channels = c_in

        if self.gather_excite:
            self.project = nn.Sequential(
                nn.Conv2d(2 * stem_width, c_in, 1, bias=False), norm_layer(norm, c_in)
            )
            self.se = SqueezeExcite(c_in, reduction)
            self.ge = GatherExcite(c_in, max(1, math.ceil(math.log2(max(size, 1)))), norm)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, n_classes)
        init_classifier(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features before dropout and the linear layer."""
        first = self.stem(x)
        last = self.stages(self.pool(first))
        if self.gather_excite:
            first = self.project(F.adaptive_avg_pool2d(first, last.shape[-2:]))
            last = last + self.se(first * last) + self.ge(last)
        return torch.flatten(F.adaptive_avg_pool2d(last, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


# ------------------------------------------------------------------------------ ResNet-18


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            conv_norm_act(norm, c_in, c_out, 3, stride),
            conv_norm_act(norm, c_out, c_out, 3, act=False),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = conv_norm_act(norm, c_in, c_out, 1, stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x), inplace=True)


class ResNet18(nn.Module):
    """ResNet-18 (BasicBlocks (2, 2, 2, 2), widths 64..512), dropout before the linear
    layer; the small-image stem (3x3 stride 1, no max pool) for ``image_size <= 64``."""

    def __init__(
        self, n_classes: int, norm: str = "batch", dropout: float = 0.0, image_size: int = 224
    ):
        super().__init__()
        _check_common("ResNet18", n_classes, norm, dropout, image_size)
        self.n_classes = self.n_outputs = n_classes
        self.image_size = image_size
        self.small_input = image_size <= SMALL_INPUT
        if self.small_input:
            self.stem = conv_norm_act(norm, 3, 64, 3)
        else:
            self.stem = nn.Sequential(
                conv_norm_act(norm, 3, 64, 7, 2), nn.MaxPool2d(3, stride=2, padding=1)
            )
        stages, c_in = [], 64
        for index, width in enumerate((64, 128, 256, 512)):
            stride = 1 if index == 0 else 2
            stages.append(
                nn.Sequential(
                    BasicBlock(c_in, width, stride, norm), BasicBlock(width, width, 1, norm)
                )
            )
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512, n_classes)
        init_classifier(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


# ------------------------------------------------------------------------------- building


def build_classifier(architecture: str, n_classes: int, options: Any) -> nn.Module:
    """The network named ``architecture`` with the sizes in ``options`` (a
    ``ClassifierOptions``, or any object with its attributes: image_size, norm, dropout,
    and for ``senet_ge`` stage_blocks, widths, cardinality, base_width, stem_width,
    stem_stride, reduction, gather_excite)."""
    if architecture == "senet_ge":
        return SENetGE(
            n_classes,
            stage_blocks=options.stage_blocks,
            widths=options.widths,
            cardinality=options.cardinality,
            base_width=options.base_width,
            norm=options.norm,
            dropout=options.dropout,
            gather_excite=options.gather_excite,
            image_size=options.image_size,
            stem_width=options.stem_width,
            stem_stride=options.stem_stride,
            reduction=options.reduction,
        )
    if architecture == "resnet18":
        return ResNet18(
            n_classes, norm=options.norm, dropout=options.dropout, image_size=options.image_size
        )
    raise ValueError(
        f"build_classifier: architecture must be one of {', '.join(ARCHITECTURES)}, "
        f"got {architecture!r}"
    )
