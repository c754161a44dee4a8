"""The per-pair fallback: a CycleGAN worse than Reinhard on the validation images falls
back, a better one is kept, and only validation rows are ever read; the normalized index
and the metrics table say what each pair got.

Features are a cheap stand-in for Inception (each image's mean and spread per colour
channel): the decision only compares two KIDs against one reference set."""

import json

import numpy as np
import pandas as pd
import pytest

import hemaflow.normalize.cyclegan as cyclegan_module
from hemaflow.normalize.apply import normalize_domain
from hemaflow.normalize.decide import (
    decide_pair,
    decide_pair_files,
    decide_without_cyclegan,
    read_decisions,
)
from hemaflow.normalize.evaluate import collect_metrics
from hemaflow.normalize.reinhard import ReinhardNormalizer

TARGET_COLOUR = (200, 110, 170)
SOURCE_COLOUR = (90, 60, 140)


def colour_features(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float64)
    return np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=1)


def tinted(colour, n: int, seed: int, spread: float = 12.0) -> np.ndarray:
    """n 8x8 images around one colour, with per-image and per-pixel variation."""
    rng = np.random.default_rng(seed)
    base = np.asarray(colour, np.float64) + rng.normal(0, spread, (n, 1, 1, 3))
    pixels = base + rng.normal(0, spread / 2, (n, 8, 8, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def recolour(colour, seed: int = 0):
    """A fake translation: keeps each image's texture, moves its mean to ``colour``."""

    def transform(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float64)
        shifted = images - images.mean(axis=(1, 2), keepdims=True) + np.asarray(colour)
        return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)

    return transform


def fake_reinhard(images: np.ndarray) -> np.ndarray:
    """A fallback that lands near the target, 25 levels off in red."""
    return recolour(np.asarray(TARGET_COLOUR) + (25, 0, 0))(images)


SOURCE_VAL = tinted(SOURCE_COLOUR, 40, seed=1)
TARGET_VAL = tinted(TARGET_COLOUR, 40, seed=2)


def test_a_cyclegan_clearly_worse_than_reinhard_falls_back():
    far = recolour((60, 200, 60))  # green cells: far from the target's appearance
    decision = decide_pair(SOURCE_VAL, TARGET_VAL, far, "reinhard", fake_reinhard, colour_features)
    assert decision["method"] == "reinhard"
    assert decision["kid_cyclegan"] > decision["kid_fallback"]
    assert decision["source_images"] == decision["target_images"] == 40
    assert decision["split"] == "val" and "reinhard" in decision["rule"]


def test_a_cyclegan_better_than_reinhard_is_kept():
    close = recolour(TARGET_COLOUR)
    decision = decide_pair(
        SOURCE_VAL, TARGET_VAL, close, "reinhard", fake_reinhard, colour_features
    )
    assert decision["method"] == "cyclegan"
    assert decision["kid_cyclegan"] <= decision["kid_fallback"]


def test_fallback_none_and_too_few_images_keep_the_cyclegan():
    def never(images):
        raise AssertionError("nothing is translated when there is nothing to decide")

    decision = decide_pair(SOURCE_VAL, TARGET_VAL, never, "none", None, colour_features)
    assert decision["method"] == "cyclegan" and decision["kid_cyclegan"] is None
    decision = decide_pair(SOURCE_VAL[:1], TARGET_VAL, never, "reinhard", never, colour_features)
    assert decision["method"] == "cyclegan" and "fewer than 2" in decision["rule"]
    with pytest.raises(ValueError, match="normalization.fallback"):
        decide_pair(SOURCE_VAL, TARGET_VAL, never, "histogram", never, colour_features)


def write_cache(directory, images_by_split: dict[str, np.ndarray], domain: str):
    """A domain cache (images.npy + index.parquet) with the given images per split."""
    directory.mkdir(parents=True)
    images = np.concatenate(list(images_by_split.values()))
    splits = [split for split, batch in images_by_split.items() for _ in batch]
    index = pd.DataFrame(
        {
            "record_id": [f"{domain}:{k}" for k in range(len(images))],
            "domain_index": np.arange(len(images)),
            "split": splits,
            "canonical_class": "neutrophil",
        }
    )
    np.save(directory / "images.npy", images)
    index.to_parquet(directory / "index.parquet", index=False)
    return str(directory / "images.npy"), str(directory / "index.parquet")


def test_only_validation_rows_are_read(tmp_path, monkeypatch):
    """Train and test images (all black, all white) never reach the translation, the
    fallback or the features; the JSON names the pair, the method and both KIDs."""
    black, white = np.zeros((30, 8, 8, 3), np.uint8), np.full((30, 8, 8, 3), 255, np.uint8)
    source = write_cache(
        tmp_path / "lab4",
        {"train": black, "val": SOURCE_VAL[:12], "test": white},
        "lab4",
    )
    target = write_cache(
        tmp_path / "pbc",
        {"test": white, "val": TARGET_VAL[:15], "train": black},
        "pbc",
    )
    seen = []

    def spy_features(images):
        seen.append(np.asarray(images))
        return colour_features(images)

    monkeypatch.setattr(cyclegan_module, "load_cyclegan", lambda path: (path, None, None))

    def fake_translate(generator, images):
        assert generator == "model.pt"
        seen.append(np.asarray(images))
        return recolour((60, 200, 60))(images)

    monkeypatch.setattr(cyclegan_module, "translate", fake_translate)
    stats = tmp_path / "reinhard_pbc.json"
    stats.write_text(json.dumps(ReinhardNormalizer().fit(TARGET_VAL).to_dict()))
    out = tmp_path / "decisions" / "lab4_to_pbc.json"
    decision = decide_pair_files(
        "lab4",
        "pbc",
        *source,
        *target,
        "model.pt",
        "reinhard",
        str(stats),
        str(out),
        features=spy_features,
    )
    assert json.loads(out.read_text()) == decision
    assert decision["pair"] == "lab4_to_pbc" and decision["method"] == "reinhard"
    assert decision["source_images"] == 12 and decision["target_images"] == 15
    assert {"kid_cyclegan", "kid_fallback", "rule"} <= set(decision)
    for images in seen:  # no black (train) or white (test) image anywhere
        assert len(images) in (12, 15)
        assert (images.reshape(len(images), -1).max(axis=1) > 0).all()
        assert (images.reshape(len(images), -1).min(axis=1) < 255).all()
    assert read_decisions({"lab4_to_pbc": str(out)}) == {"lab4_to_pbc": "reinhard"}


def test_normalize_domain_applies_each_pairs_decision(tmp_path, monkeypatch):
    plan = {
        "target": "pbc",
        "pairs": [["bccd", "pbc"], ["lab4", "pbc"]],
        "mapping": {"lab4": {"neutrophil": "pbc"}, "bccd": {"neutrophil": "pbc"}},
    }
    stats = tmp_path / "reinhard_pbc.json"
    stats.write_text(json.dumps(ReinhardNormalizer().fit(TARGET_VAL).to_dict()))
    index = pd.DataFrame({"canonical_class": ["neutrophil"] * 5, "split": "val"})
    images = SOURCE_VAL[:5]
    # fell back: Reinhard's images, and no model is loaded
    monkeypatch.setattr(cyclegan_module, "load_cyclegan", None)
    out, out_index = normalize_domain(
        images,
        index,
        "lab4",
        plan,
        "cyclegan",
        {},
        {"pbc": str(stats)},
        decisions={"lab4_to_pbc": "reinhard", "bccd_to_pbc": "cyclegan"},
    )
    expected = ReinhardNormalizer.from_dict(json.loads(stats.read_text())).transform(images)
    assert np.array_equal(out, expected)
    assert (out_index["normalization"] == "reinhard").all()
    assert (out_index["normalized_to"] == "pbc").all()
    # kept: the CycleGAN's images
    monkeypatch.setattr(cyclegan_module, "load_cyclegan", lambda path, device: ("G", "F", None))
    monkeypatch.setattr(
        cyclegan_module, "translate", lambda g, x, device: recolour(TARGET_COLOUR)(x)
    )
    out, out_index = normalize_domain(
        images,
        index,
        "lab4",
        plan,
        "cyclegan",
        {"lab4_to_pbc": "model.pt"},
        {"pbc": str(stats)},
        decisions={"lab4_to_pbc": "cyclegan"},
    )
    assert np.array_equal(out, recolour(TARGET_COLOUR)(images))
    assert (out_index["normalization"] == "cyclegan").all()
    # the target's own rows are left as they are, and say so
    out, out_index = normalize_domain(images, index, "pbc", plan, "cyclegan", {}, {})
    assert np.array_equal(out, images) and (out_index["normalization"] == "none").all()


def test_metrics_table_flags_and_decisions(tmp_path):
    metrics, decisions = [], []
    for pair, kids, method in (
        ("bccd_to_pbc", (0.13, 0.118, 0.110), "cyclegan"),
        ("raabin_to_pbc", (0.277, 0.248, 0.277), "reinhard"),
    ):
        path = tmp_path / f"{pair}.json"
        raw, reinhard, cyclegan = kids
        path.write_text(
            json.dumps(
                {"pair": pair, "kid_raw": raw, "kid_reinhard": reinhard, "kid_cyclegan": cyclegan}
            )
        )
        metrics.append(str(path))
        path = tmp_path / f"decision_{pair}.json"
        path.write_text(
            json.dumps(
                {
                    "pair": pair,
                    "method": method,
                    "fallback": "reinhard",
                    "kid_cyclegan": 0.2,
                    "kid_fallback": 0.1 if method == "reinhard" else 0.3,
                    "source_images": 17,
                }
            )
        )
        decisions.append(str(path))
    table = collect_metrics(metrics, str(tmp_path / "metrics.csv"), decisions).set_index("pair")
    assert table.loc["raabin_to_pbc", "cyclegan_worse_than_reinhard"]
    assert not table.loc["bccd_to_pbc", "cyclegan_worse_than_reinhard"]
    assert table.loc["raabin_to_pbc", "decision"] == "reinhard"
    assert table.loc["bccd_to_pbc", "decision"] == "cyclegan"
    assert (table["decision_val_images"] == 17).all()


def test_an_unlabelled_lab_without_a_cyclegan_gets_the_fallback(tmp_path):
    """normalization.unlabelled fallback: the pair's decision file names the fallback and
    why, the table leaves its CycleGAN columns empty, and the fallback is what its images
    get; with fallback none there is nothing to give them."""
    out = tmp_path / "raabin_to_pbc.json"
    decision = decide_without_cyclegan("raabin", "pbc", "macenko", str(out))
    assert json.loads(out.read_text()) == decision
    assert decision["method"] == "macenko" and decision["kid_cyclegan"] is None
    assert "raabin has no cell-type labels" in decision["rule"]
    assert read_decisions({"raabin_to_pbc": str(out)}) == {"raabin_to_pbc": "macenko"}
    with pytest.raises(ValueError, match="normalization.fallback reinhard or macenko"):
        decide_without_cyclegan("raabin", "pbc", "none", str(out))
    metrics = []
    for pair, kids in (("bccd_to_pbc", (0.13, 0.118, 0.110)), ("raabin_to_pbc", (0.27, 0.25))):
        path = tmp_path / f"metrics_{pair}.json"
        values = dict(zip(("kid_raw", "kid_reinhard", "kid_cyclegan"), kids))
        path.write_text(json.dumps({"pair": pair, **values}))
        metrics.append(str(path))
    table = collect_metrics(metrics, str(tmp_path / "metrics.csv"), [str(out)])
    table = table.set_index("pair")
    assert pd.isna(table.loc["raabin_to_pbc", "cyclegan_worse_than_reinhard"])
    assert table.loc["bccd_to_pbc", "cyclegan_worse_than_reinhard"] == False  # noqa: E712
    assert table.loc["raabin_to_pbc", "decision"] == "macenko"
