"""The on-disk store of image features: a feature is computed once per image and network,
read back bit for bit, and a damaged shard costs a recomputation, never a wrong value."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hemaflow.jobs import start_job
from hemaflow.metrics.feature_store import STORE_ENV, FeatureStore, image_key, store_root
from hemaflow.metrics.inception import InceptionFeatures


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


class CountingCompute:
    """A stand-in network: the mean of each image's channels, counting the images."""

    def __init__(self, images: np.ndarray):
        self.images, self.calls = images, []

    def __call__(self, rows: list[int]) -> np.ndarray:
        self.calls.append(list(rows))
        return self.images[rows].reshape(len(rows), -1, 3).mean(axis=1).astype(np.float32)


def test_store_computes_each_image_once_and_reads_it_back(tmp_path):
    store = FeatureStore(tmp_path, "net-a")
    images = _images(6)
    compute = CountingCompute(images)
    first = store.features(images, compute)
    assert compute.calls == [[0, 1, 2, 3, 4, 5]]
    # a second set sharing four images: only the two new ones are computed
    more = np.concatenate([images[2:], _images(2, seed=1)])
    compute_more = CountingCompute(more)
    second = store.features(more, compute_more)
    assert compute_more.calls == [[4, 5]]
    np.testing.assert_array_equal(second[:4], first[2:])
    np.testing.assert_array_equal(second, CountingCompute(more)(list(range(6))))
    # all stored now: nothing computed; a repeated image in one call is fine
    again = CountingCompute(images)
    np.testing.assert_array_equal(store.features(images[[0, 0, 1]], again), first[[0, 0, 1]])
    assert again.calls == []
    assert len(list(store.folder.glob("*.npz"))) == 2
    assert not list(store.folder.glob(".*"))  # no temporary file left behind


def test_store_keys_by_pixels_shape_and_namespace(tmp_path):
    image = _images(1)[0]
    assert image_key(image) == image_key(image.copy())
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert image_key(changed) != image_key(image)
    assert image_key(image.reshape(4, 16, 3)) != image_key(image)  # same bytes, other shape
    images = _images(3)
    FeatureStore(tmp_path, "net-a").features(images, CountingCompute(images))
    other = CountingCompute(images)
    FeatureStore(tmp_path, "net-b").features(images, other)
    assert other.calls == [[0, 1, 2]]  # another network's features are never reused
    with pytest.raises(ValueError, match="namespace"):
        FeatureStore(tmp_path, "../escape")


def test_damaged_shard_is_ignored_with_a_warning(tmp_path, caplog):
    store = FeatureStore(tmp_path, "net")
    images = _images(4)
    expected = store.features(images, CountingCompute(images))
    shard = next(store.folder.glob("*.npz"))
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, as by a full disk
    compute = CountingCompute(images)
    with caplog.at_level(logging.WARNING, logger="hemaflow.metrics.feature_store"):
        np.testing.assert_array_equal(store.features(images, compute), expected)
    assert compute.calls == [[0, 1, 2, 3]]
    assert shard.name in caplog.text and "unreadable" in caplog.text


def test_store_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(STORE_ENV, raising=False)
    assert store_root() is None
    monkeypatch.setenv(STORE_ENV, "off")
    assert store_root() is None
    monkeypatch.setenv(STORE_ENV, str(tmp_path))
    assert store_root() == tmp_path


def test_workflow_jobs_keep_features_in_the_state_folder(monkeypatch, tmp_path):
    from types import SimpleNamespace

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(STORE_ENV, raising=False)
    monkeypatch.setenv("HEMAFLOW_STATE_DIR", str(tmp_path / "state"))
    job = SimpleNamespace(
        log=[str(tmp_path / "job.log")], threads=torch.get_num_threads(), resources={}, rule="r"
    )
    start_job(job)
    assert store_root() == tmp_path / "state" / "features"
    monkeypatch.setenv(STORE_ENV, "off")  # a user's choice is kept
    start_job(job)
    assert store_root() is None


def test_inception_features_through_the_store_are_bit_identical(shared_datasets, tmp_path):
    files = sorted((shared_datasets / "pbc" / "basophil").glob("*.jpg"))[:5]
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((64, 64))) for f in files])
    plain = InceptionFeatures(device="cpu", store=False)
    stored = InceptionFeatures(device="cpu", store=tmp_path)
    assert plain.feature_store() is None
    direct = plain.features(images)
    np.testing.assert_array_equal(stored.features(images[:3]), direct[:3])
    calls = []
    original = stored._features

    def counting(batch):
        calls.append(len(batch))
        return original(batch)

    stored._features = counting
    both = stored.features(images)
    assert calls == [2]  # the three stored images are read, not computed
    assert both.dtype == np.float64
    np.testing.assert_array_equal(both, direct)
    # a list of images (any sizes) goes through the same store
    np.testing.assert_array_equal(stored.features(list(images)), direct)
    assert calls == [2]
    names = [p.name for p in Path(tmp_path).iterdir()]
    assert len(names) == 1 and names[0].startswith("inception-") and names[0].endswith("-cpu")
