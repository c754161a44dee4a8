"""Ingest speed next to decode-only speed, on the four shared datasets, same run.

Ingest = list + read + SHA-256 + decode + crop + resize + perceptual hash + write the
manifest, quarantine table and image cache. Decode-only = read + full decode to RGB of
the same files with the same number of worker processes. Rounds alternate the two so
that machine noise hits both; the figure to read is the ratio (goal: >= 0.5).

    python bench/bench_ingest.py --workers 2 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from hemaflow.config import load_config, resolve_data_root
from hemaflow.data.ingest import options_from_config, run_ingest, write_outputs
from hemaflow.data.layouts import list_dataset


def source_files(config) -> list[str]:
    """Every readable image file that ingest decodes (one per frame for crops)."""
    files = []
    for dataset, spec in config["datasets"].items():
        options = options_from_config(config, dataset, resolve_data_root(config))
        for item in list_dataset(Path(options.root), spec, tuple(config["ingest"]["extensions"])):
            if item.rejection is None:
                files.append(str(Path(options.root) / item.rel_path))
    return files


def decode_only(path: str) -> int:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        image = Image.open(io.BytesIO(data))
        image.load()
        return np.asarray(image.convert("RGB")).shape[0]
    except Exception:  # the bench's baseline skips what ingest quarantines
        return 0


def time_decode_only(files: list[str], workers: int) -> float:
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap(decode_only, files, chunksize=64):
            pass
    return time.perf_counter() - start


def time_ingest(config, workers: int, out: Path) -> tuple[float, int]:
    start = time.perf_counter()
    rows = 0
    for dataset in config["datasets"]:
        manifest, cache = run_ingest(config, dataset, resolve_data_root(config), workers)
        write_outputs(
            manifest,
            cache,
            str(out / f"{dataset}.parquet"),
            str(out / f"{dataset}.npy"),
            str(out / f"{dataset}_q.csv"),
        )
        rows += len(manifest)
    return time.perf_counter() - start, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    files = source_files(config)
    print(
        f"{len(files)} decodable source files in {len(config['datasets'])} datasets, "
        f"{args.workers} workers, image_size {config['image_size']}"
    )
    print(f"{'round':>5} {'decode-only img/s':>18} {'ingest img/s':>13} {'ratio':>6}")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(1, args.rounds + 1):
            decode_seconds = time_decode_only(files, args.workers)
            ingest_seconds, rows = time_ingest(config, args.workers, Path(tmp))
            decode_rate = len(files) / decode_seconds
            ingest_rate = len(files) / ingest_seconds
            ratios.append(ingest_rate / decode_rate)
            print(f"{round_number:>5} {decode_rate:>18.0f} {ingest_rate:>13.0f} {ratios[-1]:>6.2f}")
    print(f"median ratio ingest / decode-only: {np.median(ratios):.2f} (goal >= 0.50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
