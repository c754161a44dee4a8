"""Step time of our GAN trainers against plain reference implementations of the same
size, timed in one run in interleaved rounds.

C-WGAN-GP. Ours: ``CWGANModel.train_iteration`` (what ``train_cwgan`` runs per
iteration) with ``architecture=dcgan``, width 32, batch 32, 64 px, hinge loss, R1
penalty, one critic step, DiffAugment color,translation,cutout. The reference, written
here the textbook way: a DCGAN generator (ConvTranspose2d + affine BatchNorm2d + ReLU,
the class as an embedding concatenated to z) and a DCGAN critic (strided Conv2d +
LeakyReLU) with the same channel counts, and a plain step doing the same work as ours:
a batch of real images (random flips), the critic step with R1 on the real images, the
generator step with the frozen classifier's cross-entropy, the moving average of the
generator, DiffAugment as in Zhao et al.'s published code. A second comparison conditions
the reference generator as ours is, through class-conditional batch norms (BigGAN's
form), to tell the cost of that conditioning from the cost of the code.

Few-shot GAN. Ours: one ``GANSteps.gan_step`` (the inner step of meta-training and the
step of adaptation) with the networks of ``build_networks``. The reference: a plain
FastGAN-like generator (nearest upsampling, convolution, BatchNorm, GLU, skip-layer
excitation), a discriminator with the classic hook-based ``torch.nn.utils.spectral_norm``
and a residual task encoder of the same sizes, and the same step (hinge loss, DiffAugment,
mode-seeking and L1 terms).

Each round times ``--steps`` steps of ours and of the reference, the order alternating
between rounds; printed: the median seconds per step of each and 'ratio ours/reference'.
With ``--cpu-bf16`` ours runs with the option of that name (bfloat16 autocast on the CPU)
and the reference stays in float32, so the ratio is what the option buys on this processor
(on one without bfloat16 support the option is not used, as in training, and the first line
says so; ``HEMAFLOW_CPU_BF16=on`` measures the emulated bfloat16).

    python bench/bench_gan_step.py --rounds 7 --steps 5
    python bench/bench_gan_step.py --rounds 7 --steps 5 --cpu-bf16
    python bench/bench_gan_step.py --profile   # where our C-WGAN-GP step spends its time
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:
    import hemaflow  # noqa: F401
except ImportError:  # a bare clone: the package is in src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hemaflow.models.dcgan import generator_channels
from hemaflow.models.fewshot import discriminator_channels
from hemaflow.models.fewshot import generator_channels as fastgan_channels
from hemaflow.synth.cwgan import CWGANModel, CWGANOptions
from hemaflow.synth.fewshot import PRESETS as FEWSHOT_PRESETS
from hemaflow.synth.fewshot import GANSteps, build_networks
from hemaflow.synth.real_classifier import CLASSIFIER_PRESETS, build_classifier
from hemaflow.train.labelled import BalancedRows
from hemaflow.train.loop import ImageSampler, seed_everything

N_CLASSES = 4
IMAGES = 512
QUICK_CLASSIFIER = {"width": 4, "blocks_1": 1, "blocks_2": 1, "blocks_3": 1}

# ---------------------------------------------------------------- DiffAugment (Zhao et al.)
# as published in mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    for name in policy.split(","):
        for function in AUGMENT_FNS[name]:
            x = function(x)
    return x.contiguous()


def rand_brightness(x):
    return x + (torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) - 0.5)


def rand_saturation(x):
    x_mean = x.mean(dim=1, keepdim=True)
    factor = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) * 2
    return (x - x_mean) * factor + x_mean


def rand_contrast(x):
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    factor = torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device) + 0.5
    return (x - x_mean) * factor + x_mean


def rand_translation(x, ratio=0.125):
    shift_x, shift_y = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    translation_x = torch.randint(-shift_x, shift_x + 1, size=[x.size(0), 1, 1], device=x.device)
    translation_y = torch.randint(-shift_y, shift_y + 1, size=[x.size(0), 1, 1], device=x.device)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long, device=x.device),
        torch.arange(x.size(2), dtype=torch.long, device=x.device),
        torch.arange(x.size(3), dtype=torch.long, device=x.device),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def rand_cutout(x, ratio=0.5):
    cutout_size = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    offset_x = torch.randint(
        0, x.size(2) + (1 - cutout_size[0] % 2), size=[x.size(0), 1, 1], device=x.device
    )
    offset_y = torch.randint(
        0, x.size(3) + (1 - cutout_size[1] % 2), size=[x.size(0), 1, 1], device=x.device
    )
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long, device=x.device),
        torch.arange(cutout_size[0], dtype=torch.long, device=x.device),
        torch.arange(cutout_size[1], dtype=torch.long, device=x.device),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


AUGMENT_FNS = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "translation": [rand_translation],
    "cutout": [rand_cutout],
}


# ------------------------------------------------------------------- reference DCGAN


def dcgan_init(net: nn.Module) -> nn.Module:
    """Radford et al.'s init: convolutions N(0, 0.02), batch-norm scales N(1, 0.02)."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, nn.BatchNorm2d) and module.affine:
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)
    return net


class ReferenceGenerator(nn.Module):
    """Textbook DCGAN generator: concat(z, embedding(y)) -> 4x4 transposed convolution,
    then (BN, ReLU, 4x4 stride-2 transposed convolution) per doubling, BN, ReLU, 3x3
    convolution to RGB, tanh."""

    def __init__(self, n_classes: int, z_dim: int, embed_dim: int, image_size: int, width: int):
        super().__init__()
        channels = generator_channels(image_size, width)
        self.embedding = nn.Embedding(n_classes, embed_dim)
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim + embed_dim, channels[0], 4, 1, 0)]
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [
                nn.BatchNorm2d(c_in),
                nn.ReLU(True),
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1),
            ]
        layers += [
            nn.BatchNorm2d(channels[-1]),
            nn.ReLU(True),
            nn.Conv2d(channels[-1], 3, 3, 1, 1),
            nn.Tanh(),
        ]
        self.main = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.main(torch.cat([z, self.embedding(y)], 1)[:, :, None, None])


class ReferenceConditionalBN(nn.Module):
    """Class-conditional batch norm as BigGAN's and Miyato & Koyama's code write it: one
    embedding holds each class's gains and biases."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.embed = nn.Embedding(n_classes, 2 * channels)
        nn.init.ones_(self.embed.weight[:, :channels])
        nn.init.zeros_(self.embed.weight[:, channels:])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.embed(y).chunk(2, 1)
        return self.bn(x) * gamma[:, :, None, None] + beta[:, :, None, None]


class ReferenceCBNGenerator(nn.Module):
    """The same DCGAN generator conditioned as ours is, through every batch norm (not an
    input embedding): z -> 4x4 transposed convolution, then (conditional BN, ReLU, 4x4
    stride-2 transposed convolution) per doubling, conditional BN, ReLU, 3x3 convolution,
    tanh."""

    def __init__(self, n_classes: int, z_dim: int, image_size: int, width: int):
        super().__init__()
        channels = generator_channels(image_size, width)
        self.first = nn.ConvTranspose2d(z_dim, channels[0], 4, 1, 0)
        self.norms = nn.ModuleList(ReferenceConditionalBN(c, n_classes) for c in channels)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        self.to_rgb = nn.Conv2d(channels[-1], 3, 3, 1, 1)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.first(z[:, :, None, None])
        for norm, up in zip(self.norms[:-1], self.ups, strict=True):
            x = up(F.relu(norm(x, y), inplace=True))
        return torch.tanh(self.to_rgb(F.relu(self.norms[-1](x, y), inplace=True)))


class ReferenceCritic(nn.Module):
    """Textbook DCGAN critic: 4x4 stride-2 convolutions with LeakyReLU(0.2) down to 4x4,
    then a 4x4 convolution to one score."""

    def __init__(self, image_size: int, width: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size, k = 3, image_size, 0
        while size > 4:
            c_out = width * min(2**k, 8)
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            c_in, size, k = c_out, size // 2, k + 1
        layers.append(nn.Conv2d(c_in, 1, 4, 1, 0))
        self.main = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


class ReferenceCWGAN:
    """The plain training step of the same size and work as ``CWGANModel``'s."""

    def __init__(
        self,
        options: CWGANOptions,
        classifier: nn.Module,
        images: np.ndarray,
        conditioning: str = "concat",
    ):
        self.o = options
        if conditioning == "concat":
            self.G = ReferenceGenerator(
                N_CLASSES, options.z_dim, options.embed_dim, options.image_size, options.width
            )
        else:
            self.G = ReferenceCBNGenerator(
                N_CLASSES, options.z_dim, options.image_size, options.width
            )
        self.D = ReferenceCritic(options.image_size, options.width)
        self.G_ema = copy.deepcopy(self.G).eval()
        for p in self.G_ema.parameters():
            p.requires_grad_(False)
        self.classifier = classifier.eval()
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        lr_critic = options.lr_critic or options.lr
        betas = (options.beta1, options.beta2)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=options.lr, betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=lr_critic, betas=betas)
        self.data = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        self.labels = torch.arange(len(images)) % N_CLASSES

    def modules(self) -> list[nn.Module]:
        return [self.G, self.D]

    def train_iteration(self) -> None:
        o, n = self.o, self.o.batch_size
        index = torch.randint(len(self.data), (n,))
        real, y = self.data[index], self.labels[index]
        flip = torch.rand(n, 1, 1, 1) < 0.5
        real = torch.where(flip, real.flip(3), real)

        # critic step, R1 on the real images
        with torch.no_grad():
            fake = self.G(torch.randn(n, o.z_dim), y)
        real.requires_grad_(True)
        d_real = self.D(diff_augment(real, o.diffaugment))
        d_fake = self.D(diff_augment(fake, o.diffaugment))
        loss_D = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
        r1 = 0.5 * o.r1_gamma * grad.pow(2).reshape(n, -1).sum(1).mean()
        self.opt_D.zero_grad()
        (loss_D + r1).backward()
        self.opt_D.step()

        # generator step: fool the critic, be classified as the class asked for
        for p in self.D.parameters():
            p.requires_grad_(False)
        y = torch.randint(N_CLASSES, (n,))
        fake = self.G(torch.randn(n, o.z_dim), y)
        loss_G = -self.D(diff_augment(fake, o.diffaugment)).mean()
        loss_G = loss_G + o.lambda_class * F.cross_entropy(self.classifier(fake), y)
        self.opt_G.zero_grad()
        loss_G.backward()
        self.opt_G.step()
        for p in self.D.parameters():
            p.requires_grad_(True)
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
                p_ema.lerp_(p, 1 - o.ema_decay)
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
                b_ema.copy_(b)


def cwgan_options(args: argparse.Namespace) -> CWGANOptions:
    return CWGANOptions(
        architecture="dcgan",
        image_size=args.image_size,
        width=args.width,
        z_dim=128,
        batch_size=args.batch_size,
        loss="hinge",
        penalty="r1",
        n_critic=1,
        diffaugment="color,translation,cutout",
        amp=False,
        cpu_bf16=args.cpu_bf16,
    )


def cwgan_pair(
    args: argparse.Namespace, conditioning: str = "concat"
) -> tuple[CWGANModel, ReferenceCWGAN]:
    options = cwgan_options(args)
    rng = seed_everything(0)
    images = rng.integers(0, 256, (IMAGES, options.image_size, options.image_size, 3), np.uint8)
    labels = np.arange(IMAGES) % N_CLASSES
    classifier_options = CLASSIFIER_PRESETS["cpu"].with_overrides(
        {"image_size": options.image_size, **(QUICK_CLASSIFIER if args.quick else {})}
    )
    ours = CWGANModel(
        options,
        N_CLASSES,
        build_classifier(classifier_options, N_CLASSES),
        torch.arange(N_CLASSES),
        torch.device("cpu"),
        rng,
    )
    ours.sampler = ImageSampler(images, torch.device("cpu"))
    ours.balanced = BalancedRows(labels, N_CLASSES)
    classifier = build_classifier(classifier_options, N_CLASSES)
    reference = ReferenceCWGAN(replace(options, cpu_bf16=False), classifier, images, conditioning)
    return ours, reference


# ---------------------------------------------------------------- reference few-shot GAN


def fastgan_init(net: nn.Module) -> nn.Module:
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)
    return net


class ReferenceEncoder(nn.Module):
    def __init__(self, width: int, z_dim: int):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 4 * width]
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.LeakyReLU(0.2))
        self.blocks = nn.ModuleList()
        self.skips = nn.ModuleList()
        previous = width
        for out in widths:
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(previous, out, 3, 1, 1),
                    nn.LeakyReLU(0.2),
                    nn.Conv2d(out, out, 3, 1, 1),
                )
            )
            self.skips.append(
                nn.Identity() if previous == out else nn.Conv2d(previous, out, 1, bias=False)
            )
            previous = out
        self.head = nn.Sequential(
            nn.Linear(previous, previous), nn.LeakyReLU(0.2), nn.Linear(previous, z_dim)
        )
        fastgan_init(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for index, (block, skip) in enumerate(zip(self.blocks, self.skips, strict=True)):
            x = F.leaky_relu(block(x) + skip(x), 0.2)
            if index < 3:
                x = F.max_pool2d(x, 2)
        return self.head(x.mean(dim=(2, 3)).mean(dim=0))


class ReferenceFastGANGenerator(nn.Module):
    def __init__(self, image_size: int, width: int, code_dim: int, noise_dim: int):
        super().__init__()
        self.resolutions = [2**k for k in range(2, int(np.log2(image_size)) + 1)]
        first = fastgan_channels(4, width)
        self.init = nn.Linear(code_dim + noise_dim, 2 * first * 16, bias=False)
        self.init_norm = nn.BatchNorm2d(2 * first)
        self.ups = nn.ModuleList()
        for res in self.resolutions[1:]:
            c_in, c_out = fastgan_channels(res // 2, width), fastgan_channels(res, width)
            self.ups.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c_in, 2 * c_out, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(2 * c_out),
                    nn.GLU(dim=1),
                )
            )
        self.sle = nn.ModuleDict()
        for res in self.resolutions[-2:]:
            c_low, c_high = fastgan_channels(res // 4, width), fastgan_channels(res, width)
            self.sle[str(res)] = nn.Sequential(
                nn.AdaptiveAvgPool2d(4),
                nn.Conv2d(c_low, c_high, 4, 1, 0, bias=False),
                nn.LeakyReLU(0.1),
                nn.Conv2d(c_high, c_high, 1, 1, 0, bias=False),
                nn.Sigmoid(),
            )
        self.to_rgb = nn.Conv2d(fastgan_channels(image_size, width), 3, 3, 1, 1)
        fastgan_init(self)

    def forward(self, code: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = self.init(torch.cat([code.expand(noise.shape[0], -1), noise], 1))
        x = F.glu(self.init_norm(x.view(noise.shape[0], -1, 4, 4)), dim=1)
        feats = {4: x}
        for res, up in zip(self.resolutions[1:], self.ups, strict=True):
            x = up(x)
            if str(res) in self.sle:
                x = x * self.sle[str(res)](feats[res // 4])
            feats[res] = x
        return torch.tanh(self.to_rgb(x))


class ReferenceFastGANDiscriminator(nn.Module):
    def __init__(self, image_size: int, width: int, code_dim: int):
        super().__init__()
        sn = nn.utils.spectral_norm

        def channels(res: int) -> int:
            return discriminator_channels(res, image_size, width)

        layers: list[nn.Module] = [
            sn(nn.Conv2d(3, channels(image_size), 3, 1, 1)),
            nn.LeakyReLU(0.2),
        ]
        res = image_size
        while res > 4:
            layers += [sn(nn.Conv2d(channels(res), channels(res // 2), 4, 2, 1)), nn.LeakyReLU(0.2)]
            res //= 2
        last = channels(4)
        layers += [sn(nn.Conv2d(last, last, 3, 1, 1)), nn.LeakyReLU(0.2), nn.Flatten()]
        layers += [sn(nn.Linear(16 * last, last)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.score = sn(nn.Linear(last, 1))
        self.embed = sn(nn.Linear(code_dim, last, bias=False))

    def forward(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        phi = self.features(images)
        return self.score(phi).squeeze(1) + (self.embed(code) * phi).sum(1)


class ReferenceFewShot:
    """The plain step of the same size and work as ``GANSteps.gan_step``."""

    def __init__(self, options, support: torch.Tensor, real: torch.Tensor):
        self.o = options
        self.support, self.real = support, real
        self.E = ReferenceEncoder(options.width, options.code_dim)
        self.G = ReferenceFastGANGenerator(
            options.image_size, options.width, options.code_dim, options.noise_dim
        )
        self.D = ReferenceFastGANDiscriminator(options.image_size, options.width, options.code_dim)
        betas = (options.beta1, options.beta2)
        params_G = [*self.E.parameters(), *self.G.parameters()]
        self.opt_G = torch.optim.Adam(params_G, lr=options.inner_lr, betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=options.inner_lr, betas=betas)

    def modules(self) -> list[nn.Module]:
        return [self.E, self.G, self.D]

    def train_iteration(self) -> None:
        o, real = self.o, self.real
        n = real.shape[0]
        z = torch.randn(2 * n, o.noise_dim)
        code = self.E(self.support).unsqueeze(0)
        fake = self.G(code, z)
        condition = code.detach()
        loss_D = (
            F.relu(1 - self.D(diff_augment(real, o.diffaug), condition)).mean()
            + F.relu(1 + self.D(diff_augment(fake.detach(), o.diffaug), condition)).mean()
        )
        self.opt_D.zero_grad()
        loss_D.backward()
        self.opt_D.step()

        for p in self.D.parameters():
            p.requires_grad_(False)
        loss_adv = -self.D(diff_augment(fake, o.diffaug), condition).mean()
        fake_1, fake_2 = fake[:n], fake[n:]
        lz = (fake_1 - fake_2).abs().mean() / (z[:n] - z[n:]).abs().mean()
        loss_ms = 1 / (lz + 1e-5)
        loss_rec = 0.5 * (F.l1_loss(fake_1, real) + F.l1_loss(fake_2, real))
        loss_G = loss_adv + o.lambda_ms * loss_ms + o.lambda_rec * loss_rec
        self.opt_G.zero_grad()
        loss_G.backward()
        self.opt_G.step()
        for p in self.D.parameters():
            p.requires_grad_(True)


class OursFewShot:
    """One ``GANSteps.gan_step`` on fixed support and real batches."""

    def __init__(self, options, support: torch.Tensor, real: torch.Tensor):
        self.steps = GANSteps(options, torch.device("cpu"), np.random.default_rng(0))
        self.E, self.G, self.D = build_networks(options, torch.device("cpu"))
        self.opt_G = self.steps._adam([self.E, self.G], options.inner_lr)
        self.opt_D = self.steps._adam([self.D], options.inner_lr)
        self.support, self.real = support, real

    def modules(self) -> list[nn.Module]:
        return [self.E, self.G, self.D]

    def train_iteration(self) -> None:
        self.steps.gan_step(self.E, self.G, self.D, self.opt_G, self.opt_D, self.support, self.real)


def fewshot_pair(args: argparse.Namespace) -> tuple[OursFewShot, ReferenceFewShot]:
    options = FEWSHOT_PRESETS[args.fewshot_preset].with_overrides(
        {"amp": False, **({"batch_size": args.fewshot_batch} if args.fewshot_batch else {})}
    )
    if args.quick:
        options = options.with_overrides(
            {"image_size": 32, "width": 2, "code_dim": 8, "noise_dim": 8, "shots": 2}
        )
    seed_everything(0)
    size = options.image_size
    support = torch.rand(options.shots, 3, size, size) * 2 - 1
    real = torch.rand(options.batch_size, 3, size, size) * 2 - 1
    ours = OursFewShot(replace(options, cpu_bf16=args.cpu_bf16), support, real)
    return ours, ReferenceFewShot(options, support, real)


# ---------------------------------------------------------------------------- timing


def parameters(trainer) -> int:
    return sum(p.numel() for m in trainer.modules() for p in m.parameters())


def time_steps(trainer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_iteration()
    return (time.perf_counter() - start) / steps


def compare(
    name: str, make: Callable[[], tuple], rounds: int, steps: int, warmup: int
) -> dict[str, float]:
    """Interleaved rounds: each times ``steps`` steps of ours and of the reference, the
    order alternating; the medians and their ratio."""
    ours, reference = make()
    for trainer in (ours, reference):
        for module in trainer.modules():
            module.train()
        for _ in range(warmup):
            trainer.train_iteration()
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for round_index in range(rounds):
        order = ("ours", "reference") if round_index % 2 == 0 else ("reference", "ours")
        for which in order:
            trainer = ours if which == "ours" else reference
            times[which].append(time_steps(trainer, steps))
    median = {which: statistics.median(values) for which, values in times.items()}
    per_round = statistics.median(a / b for a, b in zip(times["ours"], times["reference"]))
    ratio = median["ours"] / median["reference"]
    print(
        f"{name}: ours {median['ours']:.4f} s/step ({parameters(ours) / 1e6:.2f} M parameters), "
        f"reference {median['reference']:.4f} s/step ({parameters(reference) / 1e6:.2f} M); "
        f"{rounds} rounds of {steps} steps"
    )
    print(f"{name}: ratio ours/reference {ratio:.3f} (median of per-round ratios {per_round:.3f})")
    return {"ours": median["ours"], "reference": median["reference"], "ratio": ratio}


def profile_ours(make: Callable[[], tuple], steps: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    ours, _ = make()
    for module in ours.modules():
        module.train()
    ours.train_iteration()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            ours.train_iteration()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per round and trainer")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fewshot-preset", default="cpu", choices=sorted(FEWSHOT_PRESETS))
    parser.add_argument("--fewshot-batch", type=int, default=0, help="0: the preset's")
    parser.add_argument("--skip-fewshot", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile our C-WGAN-GP step")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument(
        "--cpu-bf16", action="store_true", help="ours with bfloat16 autocast on the CPU"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 1, 1
        args.image_size, args.width, args.batch_size = 32, 4, 4
    torch.set_num_threads(args.threads)
    from hemaflow.train.amp import CPU_BF16_ENV, cpu_bf16_enabled

    bf16 = ""
    if args.cpu_bf16:
        bf16 = ", ours with cpu_bf16"
        if not cpu_bf16_enabled(True):
            bf16 += f" (not used: no bfloat16 on this processor or {CPU_BF16_ENV}=off; float32)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{bf16}")
    if args.profile:
        profile_ours(lambda: cwgan_pair(args), args.steps, 25)
        return 0
    compare(
        f"C-WGAN-GP dcgan {args.image_size} px width {args.width} batch {args.batch_size}",
        lambda: cwgan_pair(args),
        args.rounds,
        args.steps,
        args.warmup,
    )
    compare(
        "C-WGAN-GP, the reference conditioned through its batch norms as ours is",
        lambda: cwgan_pair(args, "batchnorm"),
        args.rounds,
        args.steps,
        args.warmup,
    )
    if not args.skip_fewshot:
        compare(
            f"few-shot GAN step, {args.fewshot_preset} preset",
            lambda: fewshot_pair(args),
            args.rounds,
            args.steps,
            args.warmup,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
