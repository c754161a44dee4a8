"""Choose the near-duplicate thresholds from the real data.

Ingests the configured datasets (or reads existing per-dataset manifests and caches),
finds every pair of accepted images whose perceptual hashes differ in at most
--max-distance bits, scores each with the shift-tolerant thumbnail correlation, prints
how many pairs and label conflicts each distance and each correlation band holds, and
draws contact sheets (left | right, with distance, correlation and classes) of the pairs
that the verification keeps and of those it rejects, so that both can be judged by eye.

    python bench/near_dup_threshold.py --config config/config.yaml --out results/bench/near_dup
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hemaflow.config import load_config, resolve_data_root  # noqa: E402
from hemaflow.data.ingest import run_ingest  # noqa: E402
from hemaflow.dedup.hamming_search import near_pairs  # noqa: E402
from hemaflow.dedup.verify import gray_thumbnails, shift_correlation  # noqa: E402
from hemaflow.labels import canonical_classes  # noqa: E402
from hemaflow.subgroup import combine_manifests  # noqa: E402


def load_all(config, ingest_dir: Path | None, workers: int):
    manifests, caches = [], {}
    for dataset in config["datasets"]:
        if ingest_dir and (ingest_dir / dataset / "manifest.parquet").exists():
            manifest = pd.read_parquet(ingest_dir / dataset / "manifest.parquet")
            cache = np.load(ingest_dir / dataset / "images.npy", mmap_mode="r")
        else:
            manifest, cache = run_ingest(config, dataset, resolve_data_root(config), workers)
        manifests.append(manifest)
        caches[dataset] = cache
    return combine_manifests(manifests), caches


def contact_sheet(pairs, frame, caches, path: Path, title: str, limit: int = 24) -> None:
    pairs = pairs.head(limit)
    if pairs.empty:
        return
    columns = 4
    rows = int(np.ceil(len(pairs) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 3.2, rows * 1.9), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (_, pair) in zip(axes.ravel(), pairs.iterrows()):
        left, right = frame.loc[pair["a"]], frame.loc[pair["b"]]
        image = np.concatenate(
            [
                caches[left["dataset"]][left["cache_index"]],
                caches[right["dataset"]][right["cache_index"]],
            ],
            axis=1,
        )
        axis.imshow(image)
        axis.set_title(
            f"d={pair['distance']} r={pair['correlation']:.3f} "
            f"{left['canonical_class'] or '-'} | {right['canonical_class'] or '-'}\n"
            f"{Path(left['source_path']).name} | {Path(right['source_path']).name}",
            fontsize=6,
        )
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--ingest-dir", type=Path, default=Path("results/ingest"))
    parser.add_argument("--out", type=Path, default=Path("results/bench/near_dup"))
    parser.add_argument("--max-distance", type=int, default=8)
    parser.add_argument(
        "--min-correlation",
        type=float,
        default=None,
        help="verification threshold (default: the config's)",
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    config = load_config(args.config)
    manifest, caches = load_all(config, args.ingest_dir, args.workers)
    frame = manifest.loc[manifest["status"] == "ok"].reset_index(drop=True)
    frame["canonical_class"] = canonical_classes(frame, config)
    left, right, distance = near_pairs(frame["phash"].to_numpy(np.uint64), args.max_distance)
    pairs = pd.DataFrame({"a": left, "b": right, "distance": distance.astype(int)})
    same_content = frame["image_id"].to_numpy()[left] == frame["image_id"].to_numpy()[right]
    pairs = pairs.loc[~same_content]
    cls = frame["canonical_class"].to_numpy()
    pairs["conflict"] = [
        isinstance(cls[a], str) and isinstance(cls[b], str) and cls[a] != cls[b]
        for a, b in zip(pairs["a"], pairs["b"])
    ]
    datasets = frame["dataset"].to_numpy()
    pairs["cross_dataset"] = datasets[pairs["a"]] != datasets[pairs["b"]]
    threshold = args.min_correlation
    if threshold is None:
        threshold = config["dedup"]["near_min_correlation"]
    images = np.stack([caches[d][k] for d, k in zip(frame["dataset"], frame["cache_index"])])
    thumbs = gray_thumbnails(images)
    pairs["correlation"] = shift_correlation(
        thumbs[pairs["a"].to_numpy()], thumbs[pairs["b"].to_numpy()]
    )
    pairs["verified"] = pairs["correlation"] >= threshold
    print(
        f"{len(frame)} accepted images; pairs with different content by Hamming distance "
        f"(verified: thumbnail correlation >= {threshold}):"
    )
    print(
        f"{'distance':>8} {'pairs':>7} {'conflicts':>9} {'cross-dataset':>13} "
        f"{'verified':>8} {'verified conflicts':>18}"
    )
    for d in range(args.max_distance + 1):
        at = pairs.loc[pairs["distance"] == d]
        kept = at.loc[at["verified"]]
        print(
            f"{d:>8} {len(at):>7} {int(at['conflict'].sum()):>9} "
            f"{int(at['cross_dataset'].sum()):>13} {len(kept):>8} {int(kept['conflict'].sum()):>18}"
        )
    bands = pd.cut(pairs["correlation"], [-1, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 1.0001])
    table = pairs.groupby(bands, observed=False).agg(
        pairs=("distance", "size"),
        conflicts=("conflict", "sum"),
        mean_distance=("distance", "mean"),
    )
    print("\nby thumbnail correlation:")
    print(table.to_string())
    args.out.mkdir(parents=True, exist_ok=True)
    sheets = {
        "verified": pairs.loc[pairs["verified"]].sort_values("correlation"),
        "rejected_closest": pairs.loc[~pairs["verified"]].sort_values("correlation").tail(24),
        "rejected_hash_le4": pairs.loc[~pairs["verified"] & (pairs["distance"] <= 4)],
    }
    for name, chosen in sheets.items():
        path = args.out / f"pairs_{name}.png"
        contact_sheet(chosen, frame, caches, path, f"{name.replace('_', ' ')} pairs", limit=40)
        print(f"wrote {path} ({min(len(chosen), 40)} of {len(chosen)} pairs shown)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
