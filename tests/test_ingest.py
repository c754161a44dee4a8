"""ingest_dataset / process_item on real and synthetic files, the crop geometry, and the
perceptual hash."""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from hemaflow.data.decode import DEFAULT_FORMATS, decode_image
from hemaflow.data.geometry import (
    center_square_box,
    crop,
    crop_image,
    resize_square,
    scale_box,
    yolo_square_box,
)
from hemaflow.data.ingest import (
    MANIFEST_COLUMNS,
    QUARANTINE_COLUMNS,
    IngestOptions,
    ingest_dataset,
    options_from_config,
    process_item,
    quarantine_table,
    run_ingest,
    write_outputs,
)
from hemaflow.data.layouts import list_dataset
from hemaflow.data.listing import SourceItem
from hemaflow.data.manifest import manifest_frame
from hemaflow.dedup.phash import hamming, phash

# ---------------------------------------------------------------------------- real subset


def _subset(name: str, items: list[SourceItem]) -> list[SourceItem]:
    if name == "pbc":
        picked, per_class = [], Counter()
        for item in items:  # sorted: neutrophil/.DS_169665.jpg comes first in its class
            if per_class[item.source_label] < 12:
                picked.append(item)
                per_class[item.source_label] += 1
        # a byte-identical pair across classes (README "known defects")
        for item in items:
            if item.rel_path in ("eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg"):
                picked.append(item)
        return picked
    if name == "zheng_tecom":
        return items
    if name == "bccd":
        return items[:40]
    # raabin_frames: single-box frames, frames with two boxes, frames without a WBC box
    single = [i for i in items if i.boxes and len(i.boxes) == 1][:20]
    double = [i for i in items if i.boxes and len(i.boxes) > 1][:6]
    empty = [i for i in items if i.rejection][:4]
    return sorted(single + double + empty, key=lambda i: i.rel_path)


REAL = ("pbc", "zheng_tecom", "bccd", "raabin_frames")


@pytest.fixture(scope="module")
def real_items(_session_config):
    # these tests pin the centre-crop path (box columns, hashes of whole images); the
    # cell crop has its own tests in test_cellfinder.py
    config = copy.deepcopy(_session_config)
    for spec in config["datasets"].values():
        if "crop" in spec:
            spec["crop"] = "center"
    out = {}
    for name in REAL:
        options = options_from_config(config, name, Path(config["data_root"]))
        listed = list_dataset(
            Path(options.root), config["datasets"][name], tuple(config["ingest"]["extensions"])
        )
        out[name] = (options, _subset(name, listed))
    return out


@pytest.fixture(scope="module")
def real_ingest(real_items):
    return {
        name: ingest_dataset(items, options, workers=1)
        for name, (options, items) in real_items.items()
    }


def test_real_subset_sizes(real_items):
    sizes = {name: len(items) for name, (_, items) in real_items.items()}
    assert 90 <= sizes["pbc"] <= 110
    assert sizes["zheng_tecom"] == 300
    assert sizes["bccd"] == 40
    assert 25 <= sizes["raabin_frames"] <= 35


@pytest.mark.parametrize("name", REAL)
def test_manifest_and_cache_consistent(name, real_items, real_ingest, _session_config):
    options, items = real_items[name]
    manifest, cache = real_ingest[name]
    size = _session_config["image_size"]
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert set(manifest["status"]) <= {"ok", "quarantined"}
    ok = manifest[manifest["status"] == "ok"]
    bad = manifest[manifest["status"] == "quarantined"]
    assert len(ok) > 0
    assert list(ok["cache_index"]) == list(range(len(ok)))
    assert (bad["cache_index"] == -1).all()
    assert cache.dtype == np.uint8
    assert cache.shape == (len(ok), size, size, 3)
    assert ok["phash"].notna().all()
    assert bad["phash"].isna().all()
    assert ok["sha256"].notna().all() and ok["reason_code"].isna().all()
    assert bad["reason_code"].notna().all() and bad["reason"].notna().all()
    assert manifest["record_id"].is_unique
    assert (manifest["dataset"] == name).all()
    assert (manifest["domain"] == options.domain).all()
    # the stored hash is exactly that of the cached image
    for _, row in ok.head(25).iterrows():
        stored, actual = int(row["phash"]), int(phash(cache[row["cache_index"]]))
        assert abs(stored - actual) <= 2**11, (stored, actual)
    # every listed item is accounted for
    expected_rows = sum(len(i.boxes) if i.boxes else 1 for i in items)
    assert len(manifest) == expected_rows
    prefixes = {f"{name}:{i.rel_path}" for i in items}
    assert {r.split("#box")[0] for r in manifest["record_id"]} == prefixes


def test_manifest_phash_exact_when_no_row_quarantined(real_ingest):
    manifest, cache = real_ingest["zheng_tecom"]
    assert (manifest["status"] == "ok").all()
    stored = [int(h) for h in manifest["phash"]]
    assert stored == [int(phash(image)) for image in cache]


@pytest.mark.parametrize("name", ["pbc", "bccd", "raabin_frames"])
def test_manifest_phash_exact_with_quarantined_rows(name, real_ingest):
    manifest, cache = real_ingest[name]
    assert (manifest["status"] == "quarantined").any()
    ok = manifest[manifest["status"] == "ok"]
    stored = [int(h) for h in ok["phash"]]
    assert stored == [int(phash(cache[i])) for i in ok["cache_index"]]


def _frame_row(phash_value):
    return {**dict.fromkeys(MANIFEST_COLUMNS), "phash": phash_value, "cache_index": 0}


def test_manifest_frame_phash_exact_without_missing_values():
    frame = manifest_frame([_frame_row(2**63 + 1), _frame_row(5)])
    assert str(frame["phash"].dtype) == "UInt64"
    assert frame["phash"].tolist() == [2**63 + 1, 5]


def test_manifest_frame_phash_exact_with_missing_values():
    frame = manifest_frame([_frame_row(2**63 + 1), _frame_row(None)])
    assert frame["phash"].tolist()[0] == 2**63 + 1
    assert frame["phash"].isna().tolist() == [False, True]


@pytest.mark.parametrize("name", ["pbc", "zheng_tecom", "bccd"])
def test_whole_image_ids_are_file_hashes(name, real_items, real_ingest):
    options, _ = real_items[name]
    manifest, _ = real_ingest[name]
    ok = manifest[manifest["status"] == "ok"]
    assert (ok["image_id"] == ok["sha256"]).all()
    for _, row in ok.head(10).iterrows():
        rel = row["source_path"].split("/", 1)[1]
        data = (Path(options.root) / rel).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["source_path"] == f"{options.data_prefix}/{rel}"
        box = center_square_box(row["width"], row["height"])
        assert (row["box_x0"], row["box_y0"], row["box_x1"], row["box_y1"]) == box


def test_pbc_rows(real_ingest, real_items):
    manifest, cache = real_ingest["pbc"]
    by_id = manifest.set_index("record_id")
    ds = by_id.loc["pbc:neutrophil/.DS_169665.jpg"]
    assert ds["status"] == "quarantined" and ds["reason_code"] == "not_an_image"
    assert ds["source_label"] == "neutrophil"
    ok = manifest[manifest["status"] == "ok"]
    assert (ok["width"] == 224).all() and (ok["height"] == 224).all()
    assert (ok["format"] == "JPEG").all()
    assert set(ok["source_label"]) == {
        "basophil",
        "eosinophil",
        "erythroblast",
        "ig",
        "lymphocyte",
        "monocyte",
        "neutrophil",
        "platelet",
    }
    assert by_id.loc["pbc:neutrophil/BNE_191112.jpg", "fine_label"] == "BNE"
    # byte-identical files across classes: same id, same cached image
    a = by_id.loc["pbc:eosinophil/EO_225902.jpg"]
    b = by_id.loc["pbc:neutrophil/BNE_191112.jpg"]
    assert a["image_id"] == b["image_id"]
    np.testing.assert_array_equal(cache[a["cache_index"]], cache[b["cache_index"]])
    assert a["cache_index"] != b["cache_index"]


def test_cached_image_matches_full_decode(real_ingest, real_items):
    """Draft (DCT-scaled) decoding gives nearly the same 64 px image as a full decode."""
    options, _ = real_items["pbc"]
    manifest, cache = real_ingest["pbc"]
    ok = manifest[manifest["status"] == "ok"].head(8)
    for _, row in ok.iterrows():
        rel = row["source_path"].split("/", 1)[1]
        full = decode_image((Path(options.root) / rel).read_bytes()).image
        expected = np.asarray(
            resize_square(crop_image(full, center_square_box(*full.size)), options.image_size),
            dtype=np.int16,
        )
        diff = np.abs(cache[row["cache_index"]].astype(np.int16) - expected).mean()
        assert diff < 4, f"{rel}: mean abs difference {diff:.1f}"


def test_zheng_tecom_rows(real_ingest):
    manifest, _ = real_ingest["zheng_tecom"]
    assert (manifest["status"] == "ok").all()
    assert (manifest["format"] == "BMP").all()
    assert Counter(manifest["source_label"]) == {
        "neutrophil": 176,
        "lymphocyte": 53,
        "monocyte": 48,
        "eosinophil": 22,
        "basophil": 1,
    }
    by_id = manifest.set_index("record_id")
    # README: 112.bmp and 139.bmp are identical
    assert (
        by_id.loc["zheng_tecom:Dataset 1/112.bmp", "sha256"]
        == by_id.loc["zheng_tecom:Dataset 1/139.bmp", "sha256"]
    )
    assert manifest["sha256"].nunique() == 299


def test_bccd_rows(real_ingest, real_items):
    _, items = real_items["bccd"]
    manifest, _ = real_ingest["bccd"]
    listed = {f"bccd:{i.rel_path}": i.rejection[0] for i in items if i.rejection}
    assert "missing_file" in listed.values() and "multiple_labels" in listed.values()
    bad = manifest[manifest["status"] == "quarantined"].set_index("record_id")["reason_code"]
    assert bad.to_dict() == listed  # listing rejections reach the manifest unchanged
    ok = manifest[manifest["status"] == "ok"]
    assert (ok["width"] == 640).all() and (ok["height"] == 480).all()
    assert ok[["box_x0", "box_y0", "box_x1", "box_y1"]].to_numpy().tolist() == [
        [80, 0, 560, 480]
    ] * len(ok)
    assert (
        ok["source_label"]
        .isin(["NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "BASOPHIL"])
        .all()
    )


def test_raabin_crops(real_ingest, real_items):
    options, items = real_items["raabin_frames"]
    manifest, cache = real_ingest["raabin_frames"]
    boxes = {f"raabin_frames:{i.rel_path}": i.boxes for i in items}
    ok = manifest[manifest["status"] == "ok"]
    bad = manifest[manifest["status"] == "quarantined"]
    assert set(bad["reason_code"]) == {"no_box"}
    assert len(ok) == sum(len(b) for b in boxes.values())
    assert ok["record_id"].str.contains("#box").all()
    assert ok["record_id"].str.endswith("#box1").any()
    assert ok["source_label"].isna().all()
    for _, row in ok.iterrows():
        frame_id, number = row["record_id"].split("#box")
        cx, cy, w, h = boxes[frame_id][int(number)]
        width, height = int(row["width"]), int(row["height"])
        x0, y0, x1, y1 = (int(row[c]) for c in ("box_x0", "box_y0", "box_x1", "box_y1"))
        assert (x0, y0, x1, y1) == yolo_square_box(cx, cy, w, h, width, height, options.box_margin)
        side = x1 - x0
        assert side == y1 - y0 and side >= 4
        assert side >= max(w * width, h * height)  # the margin widens the box
        if side <= width:
            assert 0 <= x0 and x1 <= width
        else:
            assert x0 < 0 and x1 > width
        if side <= height:
            assert 0 <= y0 and y1 <= height
        assert row["image_id"] == f"{row['sha256']}:{x0},{y0},{x1},{y1}"
    assert ok["image_id"].is_unique
    # the crop from the draft-decoded frame matches a crop from the full frame
    row = ok.iloc[0]
    rel = row["source_path"].split("/", 1)[1]
    full = decode_image((Path(options.root) / rel).read_bytes()).image
    box = (int(row["box_x0"]), int(row["box_y0"]), int(row["box_x1"]), int(row["box_y1"]))
    expected = np.asarray(resize_square(crop_image(full, box), options.image_size), np.int16)
    assert np.abs(cache[row["cache_index"]].astype(np.int16) - expected).mean() < 6


@pytest.mark.parametrize("name", REAL)
def test_two_workers_give_same_result(name, real_items, real_ingest):
    options, items = real_items[name]
    manifest1, cache1 = real_ingest[name]
    manifest2, cache2 = ingest_dataset(items, options, workers=2)
    pd.testing.assert_frame_equal(manifest1, manifest2)
    np.testing.assert_array_equal(cache1, cache2)


def test_write_outputs_roundtrip(real_ingest, tmp_path: Path):
    manifest, cache = real_ingest["bccd"]
    paths = tmp_path / "out" / "m.parquet", tmp_path / "out" / "c.npy", tmp_path / "q.csv"
    write_outputs(manifest, cache, *map(str, paths))
    back = pd.read_parquet(paths[0])
    assert list(back.columns) == MANIFEST_COLUMNS
    assert back["record_id"].tolist() == manifest["record_id"].tolist()
    assert back["phash"].tolist() == manifest["phash"].tolist()
    np.testing.assert_array_equal(np.load(paths[1]), cache)
    quarantine = pd.read_csv(paths[2])
    assert list(quarantine.columns) == QUARANTINE_COLUMNS
    assert len(quarantine) == (manifest["status"] == "quarantined").sum()


# ---------------------------------------------------------------------------- synthetic


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("L", (1, 1), 7), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


GOOD = {"cls/good.png", "cls/gray16.png", "cls/rgba.png", "cls/cmyk.jpg", "other/la.png"}
BAD = {
    "cls/empty.jpg": {"empty_file"},
    "cls/truncated.jpg": {"truncated", "corrupt"},
    "cls/text.png": {"not_an_image"},
    "cls/gif_bytes.png": {"unsupported_format"},
    "cls/anim.gif": {"unsupported_extension"},
    "cls/bomb.png": {"too_large"},
    "cls/big.png": {"too_large"},
    "loose.png": {"no_label"},
}


@pytest.fixture
def mixed_folder(tmp_path: Path, make_image) -> Path:
    root = tmp_path / "mixed"
    make_image("mixed/cls/good.png", size=(40, 30))
    (root / "cls" / "empty.jpg").write_bytes(b"")
    rng = np.random.default_rng(1)
    noisy = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    (root / "cls" / "truncated.jpg").write_bytes(noisy[: len(noisy) // 2])
    (root / "cls" / "text.png").write_text("this is not a picture\n")
    (root / "cls" / "gif_bytes.png").write_bytes(encode(Image.new("RGB", (8, 8)), "GIF"))
    make_image("mixed/cls/anim.gif", size=(8, 8))
    make_image("mixed/cls/gray16.png", array=np.full((20, 20), 32768, np.uint16), mode="I;16")
    rgba = np.zeros((20, 20, 4), np.uint8)  # fully transparent
    make_image("mixed/cls/rgba.png", array=rgba, mode="RGBA")
    cmyk = Image.new("CMYK", (24, 24), (0, 255, 255, 0))
    (root / "cls" / "cmyk.jpg").write_bytes(encode(cmyk, "JPEG", quality=95))
    (root / "cls" / "bomb.png").write_bytes(png_claiming(50_000, 50_000))
    make_image("mixed/cls/big.png", size=(1200, 1000))  # 1.2 Mpixel > max_pixels below
    make_image("mixed/other/la.png", mode="LA")
    make_image("mixed/loose.png")
    return root


def mixed_options(root: Path) -> IngestOptions:
    return IngestOptions(
        dataset="mixed",
        domain="synthetic",
        root=str(root),
        data_prefix="mixed",
        image_size=16,
        max_pixels=1_000_000,
        formats=DEFAULT_FORMATS,
    )


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_mixed_folder_quarantines_every_bad_file(mixed_folder: Path):
    before = snapshot(mixed_folder)
    assert set(before) == GOOD | set(BAD)
    items = list_dataset(
        mixed_folder,
        {"layout": "imagefolder"},
        (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"),
    )
    manifest, cache = ingest_dataset(items, mixed_options(mixed_folder))

    assert list(manifest.columns) == MANIFEST_COLUMNS
    # exactly one row per file, nothing missing
    assert sorted(manifest["record_id"]) == sorted(f"mixed:{rel}" for rel in before)
    status = dict(zip(manifest["record_id"], manifest["status"]))
    codes = dict(zip(manifest["record_id"], manifest["reason_code"]))
    for rel in GOOD:
        assert status[f"mixed:{rel}"] == "ok", (rel, codes[f"mixed:{rel}"])
    for rel, allowed in BAD.items():
        assert status[f"mixed:{rel}"] == "quarantined", rel
        assert codes[f"mixed:{rel}"] in allowed, (rel, codes[f"mixed:{rel}"])
    assert cache.shape == (len(GOOD), 16, 16, 3) and cache.dtype == np.uint8

    rows = manifest.set_index("record_id")
    gray = cache[rows.loc["mixed:cls/gray16.png", "cache_index"]]
    assert np.all(np.abs(gray.astype(int) - 128) <= 1)  # scaled, not clipped to 255
    assert rows.loc["mixed:cls/gray16.png", "mode"].startswith("I;16")
    np.testing.assert_array_equal(cache[rows.loc["mixed:cls/rgba.png", "cache_index"]], 255)
    cmyk = cache[rows.loc["mixed:cls/cmyk.jpg", "cache_index"]].reshape(-1, 3).mean(axis=0)
    assert cmyk[0] > 200 and cmyk[1] < 60 and rows.loc["mixed:cls/cmyk.jpg", "mode"] == "CMYK"
    assert rows.loc["mixed:other/la.png", "source_label"] == "other"
    assert (rows.loc["mixed:cls/good.png", ["width", "height"]].tolist()) == [40, 30]

    # quarantine table: exactly the quarantined rows
    table = quarantine_table(manifest)
    assert list(table.columns) == QUARANTINE_COLUMNS
    assert sorted(table["record_id"]) == sorted(f"mixed:{rel}" for rel in BAD)
    assert table["reason"].notna().all()

    # inputs untouched, no file added
    assert snapshot(mixed_folder) == before


def test_mixed_folder_workers_identical(mixed_folder: Path):
    items = list_dataset(mixed_folder, {"layout": "imagefolder"}, (".jpg", ".png"))
    one = ingest_dataset(items, mixed_options(mixed_folder), workers=1)
    two = ingest_dataset(items, mixed_options(mixed_folder), workers=2)
    pd.testing.assert_frame_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


def test_empty_item_list():
    manifest, cache = ingest_dataset([], mixed_options(Path("/nonexistent")))
    assert list(manifest.columns) == MANIFEST_COLUMNS and len(manifest) == 0
    assert cache.shape == (0, 16, 16, 3) and cache.dtype == np.uint8


def test_process_item_missing_file_and_listing_rejection(tmp_path: Path):
    options = mixed_options(tmp_path)
    [(row, image)] = process_item(SourceItem("cls/gone.png", source_label="cls"), options)
    assert image is None
    assert (row["status"], row["reason_code"]) == ("quarantined", "missing_file")
    assert row["source_path"] == "mixed/cls/gone.png" and row["source_label"] == "cls"
    item = SourceItem("x.png", rejection=("empty_label", "no label"))
    [(row, image)] = process_item(item, options)
    assert image is None and (row["reason_code"], row["reason"]) == ("empty_label", "no label")


def test_process_item_boxes_degenerate_and_padded(tmp_path: Path, make_image):
    make_image("frame.png", array=np.full((50, 60, 3), (200, 100, 50), np.uint8))
    item = SourceItem("frame.png", boxes=[(0.5, 0.5, 0.001, 0.001), (0.5, 0.5, 0.9, 0.9)])
    results = process_item(item, mixed_options(tmp_path))
    assert len(results) == 2
    (tiny, tiny_image), (big, big_image) = results
    assert tiny["record_id"] == "mixed:frame.png#box0"
    assert (tiny["status"], tiny["reason_code"], tiny_image) == (
        "quarantined",
        "degenerate_box",
        None,
    )
    assert big["status"] == "ok" and big["record_id"] == "mixed:frame.png#box1"
    assert big["box_x1"] - big["box_x0"] == big["box_y1"] - big["box_y0"] > 60  # leaves frame
    assert big["box_x0"] < 0 and big["box_y0"] < 0
    # edge padding, not black: every pixel keeps the frame's colour
    assert big_image.shape == (16, 16, 3)
    assert np.abs(big_image.astype(int) - (200, 100, 50)).max() <= 2


def test_exif_rotated_non_square_jpeg_crop_not_distorted(tmp_path: Path):
    shown = np.full((200, 100, 3), 128, np.uint8)  # displayed: 100 wide x 200 tall
    shown[:, :25] = shown[:, 75:] = (0, 200, 0)
    shown[:50] = (200, 0, 0)
    shown[150:] = (0, 0, 200)
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rot.jpg", "JPEG", quality=95, exif=exif.tobytes())
    # the file displays as `shown`
    assert ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg")).size == (100, 200)
    [(row, image)] = process_item(SourceItem("rot.jpg"), mixed_options(tmp_path))
    assert row["status"] == "ok"
    expected = np.asarray(
        resize_square(Image.fromarray(shown).crop(center_square_box(100, 200)), 16), np.int16
    )
    assert np.abs(image.astype(np.int16) - expected).mean() < 8


def test_csv_repeated_conflicting_rows_no_bogus_missing_file(tmp_path: Path, make_image):
    make_image("c/imgs/001.png")
    (tmp_path / "c" / "labels.csv").write_text("id,label\n1,A\n1,B\n1,A\n")
    spec = {
        "layout": "csv",
        "csv": "labels.csv",
        "images_dir": "imgs",
        "id_column": "id",
        "label_column": "label",
        "filename_pattern": "%03d.png",
    }
    items = list_dataset(tmp_path / "c", spec, (".png",))
    manifest, _ = ingest_dataset(items, mixed_options(tmp_path / "c"))
    assert "conflicting_rows" in set(manifest["reason_code"].dropna())
    assert "missing_file" not in set(manifest["reason_code"].dropna())
    assert (manifest["status"] == "quarantined").all()


# ---------------------------------------------------------------------------- geometry


def test_center_square_box():
    assert center_square_box(200, 100) == (50, 0, 150, 100)
    assert center_square_box(100, 200) == (0, 50, 100, 150)
    assert center_square_box(64, 64) == (0, 0, 64, 64)
    assert center_square_box(5, 2) == (1, 0, 3, 2)
    assert center_square_box(575, 575) == (0, 0, 575, 575)


def test_yolo_square_box_margin_and_square():
    # 0.1 x 0.2 of a 500 x 400 frame: 50 x 80 px -> side 80 * 1.3 = 104
    box = yolo_square_box(0.5, 0.5, 0.1, 0.2, 500, 400, 0.15)
    assert box == (198, 148, 302, 252)
    assert box[2] - box[0] == box[3] - box[1] == 104
    assert yolo_square_box(0.5, 0.5, 0.1, 0.2, 500, 400, 0.0) == (210, 160, 290, 240)


def test_yolo_square_box_shifted_inside_when_it_fits():
    box = yolo_square_box(0.02, 0.99, 0.1, 0.1, 500, 500, 0.15)  # side 65
    assert box == (0, 435, 65, 500)
    box = yolo_square_box(0.99, 0.01, 0.1, 0.1, 500, 500, 0.15)
    assert box == (435, 0, 500, 65)


def test_yolo_square_box_larger_than_frame_stays_centred():
    # box 90 x 100 px -> side 100 * 1.3 = 130 > frame width 100
    x0, y0, x1, y1 = yolo_square_box(0.5, 0.5, 0.9, 0.5, 100, 200, 0.15)
    assert (x0, x1) == (-15, 115)
    assert x1 - x0 == y1 - y0 == 130
    assert x0 < 0 and x1 > 100  # wider than the frame: not shifted, centred
    assert 0 <= y0 and y1 <= 200  # fits vertically: inside
    assert abs((x0 + x1) / 2 - 50) <= 1


def test_crop_with_edge_padding():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(crop(rgb, (1, 1, 3, 3)), rgb[1:3, 1:3])
    out = crop(rgb, (-2, -1, 3, 4))
    assert out.shape == (5, 5, 3)
    np.testing.assert_array_equal(out[1:, 2:], rgb[:, :3])
    np.testing.assert_array_equal(out[0, 2:], rgb[0, :3])  # top row repeated
    np.testing.assert_array_equal(out[1:, 0], rgb[:, 0])  # left column repeated
    np.testing.assert_array_equal(out[0, 0], rgb[0, 0])
    out = crop(rgb, (3, 2, 7, 6))
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[-1, -1], rgb[-1, -1])


def test_crop_image_pads_with_edges_not_black():
    image = Image.new("RGB", (10, 8), (90, 180, 30))
    inside = crop_image(image, (2, 2, 6, 6))
    assert inside.size == (4, 4)
    outside = crop_image(image, (-5, -5, 12, 12))
    assert outside.size == (17, 17)
    assert np.all(np.asarray(outside) == (90, 180, 30))


def test_scale_and_resize():
    assert scale_box((10, 20, 30, 40), 0.5, 0.25) == (5, 5, 15, 10)
    assert resize_square(Image.new("RGB", (50, 50)), 16).size == (16, 16)
    same = Image.new("RGB", (16, 16), (1, 2, 3))
    assert resize_square(np.asarray(same), 16).getpixel((3, 3)) == (1, 2, 3)


# ---------------------------------------------------------------------------- phash


@pytest.fixture(scope="module")
def pbc_cells(shared_datasets: Path) -> list[Image.Image]:
    root = shared_datasets / "pbc"
    paths = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        paths += sorted(folder.glob("[A-Z]*.jpg"))[:2]
    return [decode_image(p.read_bytes()).image for p in paths]


def test_phash_stable_under_jpeg_reencoding(pbc_cells):
    assert len(pbc_cells) == 16
    for image in pbc_cells:
        again = decode_image(encode(image, "JPEG", quality=90)).image
        assert hamming(phash(image), phash(again)) <= 2
        small = resize_square(image, 64)
        assert hamming(phash(small), phash(resize_square(again, 64))) <= 2


def test_phash_differs_between_cells(pbc_cells):
    hashes = [phash(image) for image in pbc_cells]
    distances = [hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert np.mean(distances) > 10
    assert len(set(int(h) for h in hashes)) == len(hashes)


def test_phash_basics():
    flat = np.full((32, 32, 3), 77, np.uint8)
    assert phash(flat) == phash(Image.fromarray(flat))
    assert isinstance(phash(flat), np.uint64)
    assert hamming(0, 0) == 0
    assert hamming(0b1011, 0) == 3
    assert hamming(np.uint64(2**64 - 1), 0) == 64
    pattern = np.asarray(
        Image.fromarray(np.kron(np.eye(4), np.ones((8, 8))).astype(np.uint8) * 255)
    )
    h = phash(np.stack([pattern] * 3, axis=-1))
    assert h != 0 and hamming(h, phash(np.stack([255 - pattern] * 3, axis=-1))) > 32


def test_absolute_dataset_path_keeps_source_path_absolute(tmp_path: Path, shared_datasets):
    cell = sorted((shared_datasets / "pbc" / "basophil").glob("BA_*.jpg"))[0]
    (tmp_path / "data" / "lab" / "basophil").mkdir(parents=True)
    (tmp_path / "data" / "lab" / "basophil" / "b.jpg").write_bytes(cell.read_bytes())
    config = {
        "datasets": {},
        "image_size": 16,
        "ingest": {
            "max_image_pixels": 10**6,
            "formats": ["JPEG"],
            "extensions": [".jpg"],
            "follow_links_outside": False,
            "read_timeout_s": 10,
        },
    }
    paths = {}
    for name, path in (("relative", "lab"), ("absolute", str(tmp_path / "data" / "lab"))):
        config["datasets"][name] = {"path": path, "domain": "d", "layout": "imagefolder"}
        manifest, _ = run_ingest(config, name, tmp_path / "data")
        paths[name] = manifest[["source_path", "source_path_base"]].iloc[0].tolist()
    assert paths["relative"] == ["lab/basophil/b.jpg", "data_root"]
    assert paths["absolute"] == [str(tmp_path / "data" / "lab" / "basophil" / "b.jpg"), "absolute"]
