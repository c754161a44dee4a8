"""Seconds per CycleGAN training iteration with the U-Net's upsampling computed at low
resolution (ours, ``NearestUpsampleConv``) against the plain form (``nn.Upsample`` then a
reflection-padded 3x3 convolution), same preset, same weights, timed in one run in
interleaved rounds.

Both trainers are ``CycleGANModel`` of the preset (default ``cpu``) fed random uint8
images; the reference is the same model with every ``NearestUpsampleConv`` told to take
its plain form (``min_side`` above any input). Each round times ``--steps`` iterations of
each, the order alternating; printed: the median seconds per iteration of each and
'ratio ours/reference'.

    python bench/bench_cyclegan_step.py --rounds 7 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    import hemaflow  # noqa: F401
except ImportError:  # a bare clone: the package is in src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hemaflow.models.cyclegan import NearestUpsampleConv
from hemaflow.train.cyclegan import CycleGANModel, CycleGANOptions, DomainSampler

PLAIN = 1 << 30  # min_side above any input: the plain form everywhere


def make_trainer(options: CycleGANOptions, plain: bool) -> CycleGANModel:
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    model = CycleGANModel(options, torch.device("cpu"), rng)
    size = options.image_size
    for name in ("sampler_a", "sampler_b"):
        images = rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8)
        setattr(model, name, DomainSampler(images, torch.device("cpu")))
    if plain:
        for net in (model.G_AB, model.G_BA):
            for module in net.modules():
                if isinstance(module, NearestUpsampleConv):
                    module.min_side = PLAIN
    return model


def seconds_per_step(model: CycleGANModel, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        model.train_iteration()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    args = parser.parse_args(argv)
    overrides = {"preset": args.preset}
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 1, 1
        overrides |= {"image_size": 32, "ngf": 4, "ndf": 4, "batch_size": 2}
    options = CycleGANOptions.from_config(overrides)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    trainers = {"ours": make_trainer(options, False), "reference": make_trainer(options, True)}
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.train_iteration()
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for round_index in range(args.rounds):
        order = ("ours", "reference") if round_index % 2 == 0 else ("reference", "ours")
        for which in order:
            times[which].append(seconds_per_step(trainers[which], args.steps))
    median = {which: statistics.median(values) for which, values in times.items()}
    per_round = statistics.median(a / b for a, b in zip(times["ours"], times["reference"]))
    name = (
        f"CycleGAN {args.preset} preset, {options.image_size} px, ngf {options.ngf}, "
        f"batch {options.batch_size}"
    )
    print(
        f"{name}: ours {median['ours']:.4f} s/iteration, plain upsampling "
        f"{median['reference']:.4f} s/iteration; {args.rounds} rounds of {args.steps}"
    )
    ratio = median["ours"] / median["reference"]
    print(f"{name}: ratio ours/reference {ratio:.3f} (median of per-round ratios {per_round:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
