"""Channels-last against the default (NCHW) memory layout: one training step (forward,
backward, optimizer) of each network at its CPU preset, both layouts side by side in one
run, and the ratio. This bare step (random images, an MSE loss) put the classifier at
1.3-1.5x channels-last on one thread of an AVX2 EPYC, so it is built so (``build_network``);
its real training step turned out no faster (docs/benchmarks.md, "The main job at
e03748d"): read these ratios as an upper bound. The GANs keep the default layout (the
CycleGAN's networks were slower channels-last, the C-WGAN-GP's about 1.1x faster).

    python bench/bench_layout.py              # one thread, 3 rounds of 10 steps each
    python bench/bench_layout.py --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hemaflow.classify.options import ClassifierOptions
from hemaflow.models.classifier import build_classifier
from hemaflow.models.dcgan import DCCritic, DCGenerator
from hemaflow.train.cyclegan import CycleGANOptions, build_critic, build_generator

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def networks(quick: bool) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
    """name -> (a fresh network, the input batch's shape)."""
    size = 32 if quick else 64
    classifier = ClassifierOptions.from_config({"preset": "small", "image_size": size})
    cyclegan = CycleGANOptions.from_config({"preset": "cpu", "image_size": size})
    return {
        "classifier (small, batch 32)": (
            lambda: build_classifier("senet_ge", 8, classifier),
            (32, 3, size, size),
        ),
        "cyclegan generator (cpu, batch 8)": (
            lambda: build_generator(cyclegan),
            (8, 3, size, size),
        ),
        "cyclegan critic (cpu, batch 8)": (lambda: build_critic(cyclegan), (8, 3, size, size)),
        "cwgan generator (cpu, batch 32)": (
            lambda: _ClassZero(DCGenerator(8, z_dim=64, image_size=size, width=32)),
            (32, 64),
        ),
        "cwgan critic (cpu, batch 32)": (
            lambda: _ClassZero(DCCritic(image_size=size, width=32, n_classes=8)),
            (32, 3, size, size),
        ),
    }


class _ClassZero(nn.Module):
    """A C-WGAN-GP network (generator or critic) with every sample of class 0 (for timing)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, torch.zeros(len(x), dtype=torch.long))


def step_seconds(
    make: Callable[[], nn.Module], shape: tuple[int, ...], layout: torch.memory_format, steps: int
) -> float:
    torch.manual_seed(0)
    net = make().to(memory_format=layout).train()
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.randn(shape)
    if x.dim() == 4:
        x = x.contiguous(memory_format=layout)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = net(x)
        F.mse_loss(out.float(), torch.zeros_like(out, dtype=torch.float32)).backward()
        optimizer.step()

    step()  # warm-up: oneDNN builds its kernels on the first call
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="32 px, 1 round of 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 1, 2
    torch.set_num_threads(args.threads)
    nets = networks(args.quick)
    best: dict[tuple[str, str], float] = {}
    # rounds alternate the layouts, so that a slow minute of the machine hits both
    for _ in range(args.rounds):
        for name, (make, shape) in nets.items():
            for layout, fmt in LAYOUTS.items():
                seconds = step_seconds(make, shape, fmt, args.steps)
                key = (name, layout)
                best[key] = min(best.get(key, float("inf")), seconds)
    print(f"training step, best of {args.rounds} rounds of {args.steps}, {args.threads} thread(s)")
    print("| network | NCHW s | channels-last s | NCHW / channels-last |")
    print("|---|---|---|---|")
    for name in nets:
        nchw, last = best[(name, "nchw")], best[(name, "channels_last")]
        print(f"| {name} | {nchw:.4f} | {last:.4f} | {nchw / last:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
