"""The on-disk store of image features: a feature is computed once per image and network,
read back bit for bit, and a damaged shard costs a recomputation, never a wrong value."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hemaflow.cli import main
from hemaflow.jobs import start_job
from hemaflow.metrics.feature_store import (
    STORE_ENV,
    FeatureStore,
    compact_all,
    format_bytes,
    image_key,
    store_root,
)
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


class RandomNetwork:
    """A stand-in network whose features are arbitrary float32 bit patterns, one per image,
    and which counts the images it computes."""

    def __init__(self, images: np.ndarray, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.table = {image_key(i): rng.standard_normal(5).astype(np.float32) for i in images}
        self.computed = 0

    def compute(self, images: np.ndarray) -> Callable[[list[int]], np.ndarray]:
        """The ``compute`` argument of ``FeatureStore.features(images, ...)``."""

        def rows_of(rows: list[int]) -> np.ndarray:
            self.computed += len(rows)
            return np.stack([self.table[image_key(images[k])] for k in rows])

        return rows_of

    def expected(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.table[image_key(i)] for i in images])


def _count_loads(monkeypatch) -> list[str]:
    """The names of the files ``np.load`` opens from now on."""
    opened: list[str] = []
    original = np.load

    def counting(file, *args, **kwargs):
        opened.append(Path(getattr(file, "name", file)).name)
        return original(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", counting)
    return opened


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.npz"))


def _never(rows):
    raise AssertionError(f"computed {rows}: the store should have had them")


def test_lookup_opens_only_shards_that_are_new_or_hold_a_wanted_key(tmp_path, monkeypatch):
    images = _images(9)
    writer = FeatureStore(tmp_path, "net")
    first = writer.add([image_key(i) for i in images[:3]], np.ones((3, 2)))
    second = writer.add([image_key(i) for i in images[3:6]], np.zeros((3, 2)))
    opened = _count_loads(monkeypatch)
    reader = FeatureStore(tmp_path, "net")
    keys = [image_key(i) for i in images]
    assert len(reader.lookup(keys[2:4])) == 2  # one key in each shard
    assert sorted(opened) == sorted([first.name, second.name])
    opened.clear()
    assert len(reader.lookup(keys[:3])) == 3
    assert opened == [first.name]  # the other shard holds none of them: not opened
    opened.clear()
    assert reader.lookup(keys[6:]) == {}
    assert opened == []
    third = writer.add(keys[6:], np.full((3, 2), 2.0))
    found = reader.lookup(keys[4:])
    assert sorted(opened) == sorted([second.name, third.name])
    assert sorted(found) == sorted(keys[4:])
    np.testing.assert_array_equal(found[keys[8]], [2.0, 2.0])
    opened.clear()
    # the writer knows its own shards: nothing to open for keys it never wrote
    assert writer.lookup([image_key(_images(1, seed=5)[0])]) == {}
    assert opened == []


def test_a_shard_replaced_under_the_same_name_is_read_again(tmp_path):
    images = _images(6)
    keys = [image_key(i) for i in images]
    store = FeatureStore(tmp_path, "net")
    shard = store.add(keys[:3], np.ones((3, 2)))
    assert sorted(store.lookup(keys)) == sorted(keys[:3])
    assert store.lookup(keys[3:]) == {}  # the shard's keys remembered: none of these
    # the same name, other keys of the same count (so the same size)
    other = FeatureStore(tmp_path / "elsewhere", "net").add(keys[3:], np.full((3, 2), 7.0))
    assert other.stat().st_size == shard.stat().st_size
    os.replace(other, shard)
    found = store.lookup(keys[3:])  # the file is read again, not skipped as remembered
    assert sorted(found) == sorted(keys[3:])
    np.testing.assert_array_equal(found[keys[4]], [7.0, 7.0])
    assert store.lookup(keys[:3]) == {}  # nor are the old keys taken for still there


def test_a_shard_gone_between_listing_and_reading_is_not_an_error(tmp_path, caplog):
    images = _images(6)
    network = RandomNetwork(images)
    store = FeatureStore(tmp_path, "net")
    expected = store.features(images[:3], network.compute(images[:3]))
    store.features(images[3:], network.compute(images[3:]))
    reader = FeatureStore(tmp_path, "net")
    listing = reader.shards
    calls = []

    def stale_listing():
        shards = listing()
        if not calls:  # another process compacts right after the first listing
            FeatureStore(tmp_path, "net").compact()
        calls.append(len(shards))
        return shards + [tmp_path / "net" / "ghost.npz"]

    reader.shards = stale_listing
    with caplog.at_level(logging.WARNING, logger="hemaflow.metrics.feature_store"):
        found = reader.features(images[:3], _never)  # read from the merged shard
    np.testing.assert_array_equal(found, expected)
    assert calls == [2, 1]  # listed again after finding shards gone
    assert "ghost.npz is gone" in caplog.text
    # a shard gone for good: its features are computed, nothing raised
    compute = CountingCompute(images)
    reader.shards = lambda: [tmp_path / "net" / "ghost.npz"]
    reader.features(images[:2], compute)
    assert compute.calls == [[0, 1]]


def test_compaction_keeps_every_feature_bit_for_bit_in_one_shard(tmp_path):
    images = _images(10)
    network = RandomNetwork(images)
    store = FeatureStore(tmp_path, "net")
    for part in (slice(0, 4), slice(2, 7), slice(5, 10)):  # overlapping: duplicates
        store.features(images[part], network.compute(images[part]))
    expected = network.expected(images)
    assert network.computed == 10
    # two jobs that missed the same images both stored them
    FeatureStore(tmp_path, "net").add([image_key(i) for i in images[:3]], expected[:3])
    shards = store.shards()
    assert len(shards) == 4
    before = sum(s.stat().st_size for s in shards)
    summary = store.compact()
    (merged,) = store.shards()
    assert merged not in shards
    assert not list(store.folder.glob(".*"))  # no temporary file left
    assert summary.namespace == "net"
    assert (summary.shards_before, summary.shards_after, summary.features) == (4, 1, 10)
    assert (summary.bytes_before, summary.bytes_after) == (before, merged.stat().st_size)
    assert summary.bytes_after < summary.bytes_before and summary.unreadable == ()
    with np.load(merged) as data:
        assert len(data["keys"]) == 10  # each key once
    for reader in (store, FeatureStore(tmp_path, "net")):  # one remembering removed shards
        read = reader.features(images, _never)
        assert read.dtype == np.float32
        np.testing.assert_array_equal(read.view(np.uint32), expected.view(np.uint32))
    # a single shard is left as it is
    again = store.compact()
    assert store.shards() == [merged]
    assert (again.shards_before, again.shards_after, again.features) == (1, 1, 10)


def test_compaction_leaves_an_unreadable_shard_and_reports_it(tmp_path, caplog):
    images = _images(6)
    network = RandomNetwork(images)
    store = FeatureStore(tmp_path, "net")
    for part in (slice(0, 2), slice(2, 4), slice(4, 6)):
        store.features(images[part], network.compute(images[part]))
    damaged = store.shards()[1]
    damaged.write_bytes(damaged.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="hemaflow.metrics.feature_store"):
        summary = store.compact()
    assert summary.unreadable == (damaged.name,)
    assert (summary.shards_before, summary.shards_after, summary.features) == (3, 2, 4)
    assert damaged.exists() and len(damaged.read_bytes()) == 100
    assert damaged in store.shards()
    assert damaged.name in caplog.text and "unreadable" in caplog.text
    assert f"left unreadable: {damaged.name}" in str(summary)
    network.computed = 0
    features = store.features(images, network.compute(images))
    assert network.computed == 2  # only the damaged shard's features are computed
    expected = network.expected(images)
    np.testing.assert_array_equal(features.view(np.uint32), expected.view(np.uint32))


def test_compact_all_namespaces(tmp_path):
    images = _images(4)
    for namespace in ("net-a", "net-b"):
        for part in (slice(0, 2), slice(1, 4)):
            FeatureStore(tmp_path, namespace).features(images[part], CountingCompute(images))
    (tmp_path / "net-c").mkdir()  # an empty namespace
    summaries = compact_all(tmp_path)
    assert [s.namespace for s in summaries] == ["net-a", "net-b", "net-c"]
    assert [(s.shards_before, s.shards_after, s.features) for s in summaries] == [
        (2, 1, 4),
        (2, 1, 4),
        (0, 0, 0),
    ]
    with pytest.raises(FileNotFoundError, match="missing"):
        compact_all(tmp_path / "missing")


def test_cli_compacts_and_sizes_the_feature_store(tmp_path, monkeypatch, capsys):
    images = _images(4)
    root = tmp_path / "state" / "features"
    for part in (slice(0, 2), slice(1, 4), slice(0, 4)):
        FeatureStore(root, "net-a").features(images[part], CountingCompute(images))
    assert main(["features", "size", str(root)]) == 0
    out = capsys.readouterr().out
    assert out == f"net-a: 2 shards, 4 features, {format_bytes(_bytes(root))}\n"
    assert main(["features", "compact", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("net-a: 2 shards -> 1, 4 features, ")
    assert len(FeatureStore(root, "net-a").shards()) == 1
    # no folder given: the state folder's, as workflow jobs use it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEMAFLOW_STATE_DIR", str(tmp_path / "state"))
    assert main(["features", "size"]) == 0
    assert capsys.readouterr().out.startswith("net-a: 1 shards, 4 features, ")
    monkeypatch.delenv("HEMAFLOW_STATE_DIR")
    assert main(["features", "compact"]) == 1  # ./.hemaflow-state/features: none here
    assert ".hemaflow-state/features (no such folder)" in capsys.readouterr().err


def test_cli_on_a_missing_folder_says_so(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["features", "compact", str(missing)]) == 1
    captured = capsys.readouterr()
    assert f"no feature store at {missing} (no such folder)" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    (tmp_path / "file").write_text("")
    assert main(["features", "size", str(tmp_path / "file")]) == 1
    assert "(not a folder)" in capsys.readouterr().err


def test_inception_instances_share_one_store_per_folder(tmp_path):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not a network: only hashed here")
    one = InceptionFeatures(device="cpu", weights_path=weights, store=tmp_path / "store")
    two = InceptionFeatures(device="cpu", weights_path=weights, store=tmp_path / "store")
    other = InceptionFeatures(device="cpu", weights_path=weights, store=tmp_path / "other")
    assert one.feature_store() is two.feature_store() is one.feature_store()
    assert other.feature_store() is not one.feature_store()
    assert one.feature_store().folder.parent == (tmp_path / "store").absolute()


def test_compaction_removes_the_temporary_files_of_killed_writers_only(tmp_path):
    """A temporary shard more than an hour old was left by a writer that died: compact
    removes it and says so; a fresh one (a writer at work) and the shards are kept."""
    images = _images(4)
    network = RandomNetwork(images)
    store = FeatureStore(tmp_path, "net")
    store.features(images[:2], network.compute(images[:2]))
    store.features(images[2:], network.compute(images[2:]))
    stale = store.folder / ".123-dead.tmp.npz"
    stale.write_bytes(b"x" * 1000)
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    fresh = store.folder / ".456-busy.tmp.npz"
    fresh.write_bytes(b"y" * 10)
    assert store.stale_temporaries() == [stale]
    summary = store.compact()
    assert not stale.exists() and fresh.exists()
    assert summary.stale_removed == (stale.name,) and summary.stale_bytes == 1000
    assert "removed 1 temporary files left by killed jobs" in str(summary)
    assert (summary.shards_before, summary.shards_after, summary.features) == (2, 1, 4)
    np.testing.assert_array_equal(store.features(images, _never), network.expected(images))
    # nothing stale: nothing said
    again = store.compact()
    assert again.stale_removed == () and "temporary" not in str(again)
