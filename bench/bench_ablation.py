"""The ablation study on real pbc images at 64 px, basophil made rare (50 training images).

Writes a config with the pbc dataset only, `synthesis.subsample: {basophil: 50}` (its
other training images held out for evaluation) and the cpu presets, runs the workflow's
`ablation` target in --workdir with `snakemake --cores N`, and prints the ablation table:
per variant, accuracy, balanced accuracy (95 % CI) and macro-F1 on the real test split,
the basophil sensitivity and the wall time of the whole run.

pbc alone has nothing to normalize (it is its own target), so `no_normalization` would
repeat `full` exactly; it is left out unless --variants names it. The cross-lab table
(`bench/bench_classifier.py`) is where normalization is measured.

    python bench/bench_ablation.py --workdir results/bench/ablation --cores 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["full", "no_cwgan", "no_fewshot", "fewshot_all", "no_ge"]


def write_config(workdir: Path, data_root: Path, rare: str, shots: int, variants, seed: int):
    with open(REPO / "config" / "config.yaml") as handle:
        config = yaml.safe_load(handle)
    config["data_root"] = str(data_root.resolve())
    config["datasets"] = {"pbc": config["datasets"]["pbc"]}
    config["class_map"] = {"pbc": config["class_map"]["pbc"]}
    config["normalization"]["method"] = "none"
    config["synthesis"] = {"subsample": {rare: shots}, "seed": seed}
    config["ablation"] = {"variants": list(variants)}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("results/bench/ablation"))
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--rare", default="basophil")
    parser.add_argument("--shots", type=int, default=50)
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    write_config(args.workdir, args.data_root, args.rare, args.shots, args.variants, args.seed)
    snakemake = str(Path(sys.executable).parent / "snakemake")
    command = [
        snakemake,
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(args.workdir),
        "--configfile",
        str(args.workdir / "config.yaml"),
        "--cores",
        str(args.cores),
        "ablation",
    ]
    start = time.perf_counter()
    result = subprocess.run(command, env=dict(os.environ))
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        print(f"snakemake failed ({result.returncode}); see {args.workdir}/logs", file=sys.stderr)
        return result.returncode
    table = pd.read_csv(args.workdir / "results" / "ablation" / "table.csv")
    print(
        f"pbc at 64 px, {args.rare} subsampled to {args.shots} training images; whole run "
        f"{seconds / 60:.1f} min on {args.cores} cores"
    )
    print(
        f"{'variant':<18} {'acc':>6} {'bal acc [95% CI]':>24} {'macro-F1':>8} "
        f"{args.rare + ' sens':>15} {'vs full':>8}"
    )
    for row in table.itertuples():
        print(
            f"{row.variant:<18} {row.accuracy:>6.3f} {row.balanced_accuracy:>8.3f} "
            f"[{row.balanced_accuracy_low:.3f}, {row.balanced_accuracy_high:.3f}] "
            f"{row.macro_f1:>8.3f} {getattr(row, 'sensitivity_' + args.rare):>15.3f} "
            f"{getattr(row, 'balanced_accuracy_vs_full', float('nan')):>+8.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
