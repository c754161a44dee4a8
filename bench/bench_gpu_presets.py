r"""Seconds per training iteration of every trainer's presets at full size and batch size,
made for a GPU (falls back to the CPU with a note).

For each preset (the paper presets, and the CPU presets for comparison): the trainer
object that ``hemaflow.train.loop.train_and_save`` drives is built from the preset and
fed random uint8 images of the preset's size (the cost of a step does not depend on the
pixels), ``--warmup`` iterations run untimed, then ``--iterations`` timed ones (fewer if
they would pass ``--max-seconds`` per preset). Printed and written to ``--out``
(``gpu_presets.json``, ``gpu_presets.md``), per preset: seconds per iteration, real
images per second, peak GPU memory (``torch.cuda.max_memory_allocated``) and the
preset's whole schedule extrapolated from the measured step.

What is timed is ``train_iteration()``: batch draw, forward and backward passes,
optimizer steps, moving averages, Reptile updates; not checkpoints, loss logs or the
classifier's validation passes. Mixed precision is on where the preset has it (on CUDA).

Needs torch and numpy only: no datasets, no Snakemake, no pandas; ``src/`` is put on the
import path when hemaflow is not installed, so a bare clone with a system python works.

    python3 bench/bench_gpu_presets.py --out results/bench/gpu_presets
    python3 bench/bench_gpu_presets.py --presets 'cwgan/*' 'classifier/senet154_ge'
    python3 bench/bench_gpu_presets.py --quick --out /tmp/quick   # CPU smoke run, tiny nets
    python3 bench/bench_gpu_presets.py --device cpu --threads 1 --batch-size 2 \
        --warmup 1 --iterations 2 --presets '*/paper' classifier/senet154_ge
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import hemaflow  # noqa: F401
except ImportError:  # a bare clone: the package is in src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hemaflow.classify.options import PRESETS as CLASSIFIER_PRESETS
from hemaflow.classify.train import ClassifierModel
from hemaflow.synth.cwgan import CWGAN_PRESETS, CWGANModel
from hemaflow.synth.fewshot import PRESETS as FEWSHOT_PRESETS
from hemaflow.synth.fewshot import MetaTrainer, build_networks
from hemaflow.synth.fewshot_adapt import AdaptTrainer
from hemaflow.synth.real_classifier import (
    CLASSIFIER_PRESETS as REAL_CLASSIFIER_PRESETS,
)
from hemaflow.synth.real_classifier import RealClassifierModel, build_classifier
from hemaflow.train.cyclegan import PRESETS as CYCLEGAN_PRESETS
from hemaflow.train.cyclegan import CycleGANModel
from hemaflow.train.labelled import BalancedRows
from hemaflow.train.loop import ImageSampler, seed_everything

N_CLASSES = 8  # the C-WGAN-GP's 8 classes of the study; the classifier's 8 pbc classes
IMAGES_PER_CLASS = 64
RARE_CLASS_IMAGES = 87  # promyelocyte, the largest rare class: an adaptation's support set
NO_EVALUATION = 10**9  # the classifier's eval_every: validation passes are not timed

# --quick: tiny networks at 32 px, so that the CPU smoke run takes seconds; the table then
# says nothing about the presets' costs
QUICK = {
    "real_classifier": dict(image_size=32, width=4, blocks_1=1, blocks_2=1, blocks_3=1),
    "cwgan": dict(
        image_size=32,
        width=4,
        z_dim=8,
        embed_dim=4,
        g_blocks_low=1,
        g_blocks_high=1,
        d_blocks_1=1,
        d_blocks_2=1,
        d_blocks_3=1,
        n_critic=1,
    ),
    "fewshot": dict(image_size=32, width=2, code_dim=8, noise_dim=8, shots=2, inner_steps=1),
    "cyclegan": dict(image_size=32, ngf=4, ndf=4, pool_size=2),
    "classifier": dict(
        image_size=32,
        stage_blocks=(1, 1),
        widths=(8, 16),
        cardinality=2,
        base_width=2,
        stem_width=4,
    ),
}
QUICK_BATCH = 2
QUICK_KEY = {"fewshot_meta": "fewshot", "fewshot_adapt": "fewshot"}


@dataclass
class Preset:
    """One row of the table: how to build the trainer, and what to report about it."""

    name: str
    options: Any
    build: Callable[[Any, torch.device, np.random.Generator], Any]
    images_per_iteration: Callable[[Any], int]
    schedule: Callable[[Any], int]
    schedule_unit: str


def random_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def labelled_images(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(N_CLASSES), IMAGES_PER_CLASS)
    return random_images(rng, len(labels), size), labels


# ------------------------------------------------------------------------------ trainers


def build_real_classifier(options, device, rng) -> RealClassifierModel:
    model = RealClassifierModel(options, N_CLASSES, device, rng)
    images, labels = labelled_images(rng, options.image_size)
    model.sampler = ImageSampler(images, device)
    model.balanced = BalancedRows(labels, N_CLASSES)
    return model


def cwgan_builder(classifier_options) -> Callable:
    def build(options, device, rng) -> CWGANModel:
        # the frozen classifier of the same preset, at the GAN's image size
        classifier = build_classifier(
            classifier_options.with_overrides({"image_size": options.image_size}), N_CLASSES
        )
        model = CWGANModel(options, N_CLASSES, classifier, torch.arange(N_CLASSES), device, rng)
        images, labels = labelled_images(rng, options.image_size)
        model.sampler = ImageSampler(images, device)
        model.balanced = BalancedRows(labels, N_CLASSES)
        return model

    return build


def build_meta(options, device, rng) -> MetaTrainer:
    per_task = max(options.shots, IMAGES_PER_CLASS)
    samplers = [
        ImageSampler(random_images(rng, per_task, options.image_size), device)
        for _ in range(N_CLASSES)
    ]
    return MetaTrainer(options, device, rng, samplers)


def build_adapt(options, device, rng) -> AdaptTrainer:
    # freshly initialized networks stand in for the meta-learned ones
    networks = build_networks(options, device)
    names = ("encoder", "generator", "discriminator")
    weights = {name: net.state_dict() for name, net in zip(names, networks, strict=True)}
    images = random_images(rng, RARE_CLASS_IMAGES, options.image_size)
    return AdaptTrainer(options, device, rng, images, weights)


def build_cyclegan(options, device, rng) -> CycleGANModel:
    model = CycleGANModel(options, device, rng)
    model.sampler_a = ImageSampler(random_images(rng, IMAGES_PER_CLASS, options.image_size), device)
    model.sampler_b = ImageSampler(random_images(rng, IMAGES_PER_CLASS, options.image_size), device)
    return model


def build_classifier_model(options, device, rng) -> ClassifierModel:
    images, labels = labelled_images(rng, options.image_size)
    return ClassifierModel(options, N_CLASSES, device, rng, images, labels, images[:1], labels[:1])


def all_presets() -> list[Preset]:
    rows = []
    for name in ("cpu", "paper"):
        rows.append(
            Preset(
                f"real_classifier/{name}",
                REAL_CLASSIFIER_PRESETS[name],
                build_real_classifier,
                lambda o: o.batch_size,
                lambda o: o.iterations,
                "iterations",
            )
        )
        rows.append(
            Preset(
                f"cwgan/{name}",
                CWGAN_PRESETS[name],
                cwgan_builder(REAL_CLASSIFIER_PRESETS[name]),
                lambda o: o.batch_size * o.n_critic,
                lambda o: o.iterations,
                "generator steps",
            )
        )
        rows.append(
            Preset(
                f"fewshot_meta/{name}",
                FEWSHOT_PRESETS[name],
                build_meta,
                lambda o: o.inner_steps * (o.batch_size + o.shots),
                lambda o: o.meta_iterations,
                "episodes",
            )
        )
        rows.append(
            Preset(
                f"fewshot_adapt/{name}",
                FEWSHOT_PRESETS[name],
                build_adapt,
                lambda o: o.batch_size + min(RARE_CLASS_IMAGES, o.adapt_support),
                lambda o: o.adapt_iterations,
                "iterations per rare class",
            )
        )
        rows.append(
            Preset(
                f"cyclegan/{name}",
                CYCLEGAN_PRESETS[name],
                build_cyclegan,
                lambda o: 2 * o.batch_size * o.n_critic,
                lambda o: o.total_iterations,
                "iterations per domain pair",
            )
        )
    for name in ("small", "resnet18", "senet154_ge"):
        rows.append(
            Preset(
                f"classifier/{name}",
                CLASSIFIER_PRESETS[name].with_overrides({"eval_every": NO_EVALUATION}),
                build_classifier_model,
                lambda o: o.batch_size,
                lambda o: o.iterations,
                "iterations",
            )
        )
    return rows


def quick(preset: Preset) -> Preset:
    trainer = preset.name.split("/")[0]
    overrides = {**QUICK[QUICK_KEY.get(trainer, trainer)], "batch_size": QUICK_BATCH}
    if preset.name == "classifier/resnet18":  # its widths are fixed: a smaller image
        overrides = {"image_size": 16, "batch_size": QUICK_BATCH}
    preset.options = preset.options.with_overrides(overrides)
    return preset


# ------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_preset(
    preset: Preset,
    device: torch.device,
    warmup: int,
    iterations: int,
    max_seconds: float,
) -> dict[str, Any]:
    """Build the trainer, run ``warmup`` untimed iterations, then time up to
    ``iterations`` (as many as fit in ``max_seconds`` after the warm-up's pace)."""
    options = preset.options
    row: dict[str, Any] = {
        "preset": preset.name,
        "batch_size": options.batch_size,
        "image_size": options.image_size,
        "images_per_iteration": preset.images_per_iteration(options),
        "schedule_iterations": preset.schedule(options),
        "schedule_unit": preset.schedule_unit,
    }
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    rng = seed_everything(0)
    trainer = preset.build(options, device, rng)
    for module in trainer.modules():
        module.train()
    row["parameters"] = sum(p.numel() for module in trainer.modules() for p in module.parameters())
    synchronize(device)
    row["build_seconds"] = time.perf_counter() - start
    pace = 0.0
    for _ in range(warmup):
        begin = time.perf_counter()
        trainer.train_iteration()
        synchronize(device)
        pace = time.perf_counter() - begin
    if pace > 0:
        iterations = max(1, min(iterations, int(max_seconds / pace)))
    begin = time.perf_counter()
    for _ in range(iterations):
        trainer.train_iteration()
    synchronize(device)
    seconds = (time.perf_counter() - begin) / iterations
    row |= {
        "iterations_timed": iterations,
        "seconds_per_iteration": seconds,
        "images_per_second": row["images_per_iteration"] / seconds,
        "schedule_hours": seconds * row["schedule_iterations"] / 3600,
        "amp": bool(getattr(trainer, "use_amp", False)),
        "peak_gpu_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
    }
    del trainer
    gc.collect()
    return row


def run_preset(preset: Preset, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    try:
        return time_preset(preset, device, args.warmup, args.iterations, args.max_seconds)
    except torch.cuda.OutOfMemoryError as error:
        gc.collect()
        torch.cuda.empty_cache()
        return {"preset": preset.name, "error": f"out of GPU memory: {str(error)[:200]}"}


# ------------------------------------------------------------------------------- output


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| preset | batch | px | s / iteration | images / s | peak GPU GiB | full schedule |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['preset']} | | | {row['error']} | | | |")
            continue
        memory = row["peak_gpu_memory_gib"]
        lines.append(
            f"| {row['preset']} | {row['batch_size']} | {row['image_size']} "
            f"| {row['seconds_per_iteration']:.4f} | {row['images_per_second']:.0f} "
            f"| {'-' if memory is None else f'{memory:.2f}'} "
            f"| {row['schedule_hours']:.2f} h ({row['schedule_iterations']:,} "
            f"{row['schedule_unit']}) |"
        )
    return "\n".join(lines) + "\n"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/gpu_presets"))
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument(
        "--max-seconds", type=float, default=20.0, help="timed seconds per preset, at most"
    )
    parser.add_argument(
        "--presets", nargs="*", default=["*"], help="names or patterns, e.g. 'cwgan/*'"
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="every preset's batch size (0: the preset's)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny networks, 1 + 1 iterations, cpu"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.warmup, args.iterations = 1, 1
        args.device = args.device or "cpu"
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        print(
            "NOTE: no CUDA device in use: timing on the CPU. The paper presets at their batch "
            "sizes take seconds to minutes per iteration there; use --quick or --presets."
        )
    presets = [
        p for p in all_presets() if any(fnmatch.fnmatch(p.name, pat) for pat in args.presets)
    ]
    if not presets:
        parser.error(f"--presets {args.presets} match none of {[p.name for p in all_presets()]}")
    if args.batch_size:
        for preset in presets:
            preset.options = preset.options.with_overrides({"batch_size": args.batch_size})
    if args.quick:
        presets = [quick(p) for p in presets]
        print("NOTE: --quick: tiny networks at 32 px, batch 2; not the presets' costs")
    print(f"device: {device_description(device)}, torch {torch.__version__}")
    started = time.perf_counter()
    rows = []
    for preset in presets:
        row = run_preset(preset, device, args)
        rows.append(row | {"options": asdict(preset.options)})
        if "error" in row:
            print(f"{preset.name:28s} {row['error']}", flush=True)
            continue
        memory = row["peak_gpu_memory_gib"]
        print(
            f"{preset.name:28s} {row['seconds_per_iteration']:9.4f} s/it "
            f"{row['images_per_second']:9.1f} img/s "
            f"peak {'-' if memory is None else f'{memory:.2f} GiB':>9s}  "
            f"full schedule {row['schedule_hours']:8.2f} h  "
            f"({row['iterations_timed']} timed, build {row['build_seconds']:.1f} s)",
            flush=True,
        )
    total = time.perf_counter() - started
    print(f"total {total:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": device_description(device),
        "torch": torch.__version__,
        "when": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick,
        "warmup": args.warmup,
        "iterations": args.iterations,
        "max_seconds": args.max_seconds,
        "total_seconds": total,
        "rows": rows,
    }
    (args.out / "gpu_presets.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    header = (
        f"Device: {report['device']}, torch {report['torch']}, {report['when']}; "
        f"{args.warmup} warm-up + up to {args.iterations} timed iterations per preset"
        f"{' (--quick: tiny networks)' if args.quick else ''}.\n\n"
    )
    (args.out / "gpu_presets.md").write_text(header + markdown_table(rows))
    print(f"wrote {args.out / 'gpu_presets.json'} and {args.out / 'gpu_presets.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
