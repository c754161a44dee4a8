"""Screenshots of the HTML report for the README: the landing page, and the cross-lab
subcategory (its table and chart listed, the chart shown), as headless Chromium renders
them.

    .venv/bin/python bench/report_screenshots.py results/report.html --out docs

The report must include the cross-lab target (``snakemake --report results/report.html
all cross_lab``). The PNGs are reduced to a 256-colour palette to stay small."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from hemaflow.report_browser import screenshot

CROSS_LAB_CHART = "results/cross_lab/balanced_accuracy.png"


def shrink(path: Path) -> None:
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, nargs="?", default=Path("results/report.html"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    shots = {
        "report_landing.png": {},
        "report_cross_lab.png": {
            "category": "classification",
            "subcategory": "cross-lab",
            "image": CROSS_LAB_CHART,
        },
    }
    for name, view in shots.items():
        path = screenshot(args.report, args.out / name, size=(1200, 700), **view)
        shrink(path)
        print(f"{path}: {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
