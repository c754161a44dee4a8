"""Bad entries under a dataset never stop a run and never reach outside it (issue 20):
broken links, ids that climb out of the image folder, links leaving data_root, linked
class folders and link loops, FIFOs and devices, labels missing from the class map.

Each case is built in tmp_path from a few real pbc images (copied, never linked to the
shared folder unless a test is about links)."""

from __future__ import annotations

import copy
import io
import os
import shutil
import signal
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from hemaflow.config import validate_config
from hemaflow.data.decode import RejectedImage, decode_image, read_bytes
from hemaflow.data.ingest import IngestOptions, ingest_dataset
from hemaflow.data.layouts import (
    dataset_input_files,
    list_dataset,
    read_label_table,
    resolve_in_images_dir,
)
from hemaflow.data.listing import LayoutError, ListingOptions, walk_entries
from hemaflow.errors import ConfigError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@pytest.fixture(autouse=True)
def no_hang():
    """A test that would hang on a FIFO fails after 20 s instead."""

    def fail(signum, frame):
        raise TimeoutError("a read hung (FIFO or device opened blocking?)")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def real_cells(shared_datasets: Path) -> dict[str, list[Path]]:
    """A few real pbc images per class used here."""
    cells = {}
    for label in ("neutrophil", "lymphocyte", "eosinophil"):
        folder = shared_datasets / "pbc" / label
        cells[label] = [p for p in sorted(folder.glob("*.jpg")) if not p.name.startswith(".")][:3]
    return cells


def copy_cell(source: Path, destination: Path) -> Path:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination


def codes(items) -> dict[str, str | None]:
    return {item.rel_path: item.rejection and item.rejection[0] for item in items}


def ingest_options(root: Path, dataset: str = "planted") -> IngestOptions:
    return IngestOptions(
        dataset=dataset,
        domain=dataset,
        root=str(root),
        data_prefix=dataset,
        image_size=16,
        max_pixels=40_000_000,
        formats=("JPEG", "PNG", "BMP"),
        read_timeout_s=5.0,
    )


# ---------------------------------------------------------------------------- 1 broken link


def test_broken_link_is_quarantined_and_never_an_input(tmp_path: Path, real_cells):
    root = tmp_path / "data" / "planted"
    copy_cell(real_cells["neutrophil"][0], root / "neutrophil" / "good.jpg")
    (root / "neutrophil" / "broken_link.jpg").symlink_to(root / "neutrophil" / "gone.jpg")
    spec = {"layout": "imagefolder"}
    items = list_dataset(root, spec, EXTENSIONS)
    assert codes(items) == {
        "neutrophil/good.jpg": None,
        "neutrophil/broken_link.jpg": "broken_link",
    }
    broken = next(item for item in items if item.rejection)
    assert "gone.jpg" in broken.rejection[1] and "does not exist" in broken.rejection[1]
    # Snakemake stops on a missing input: the dangling link must not be one
    inputs = dataset_input_files(root, spec)
    assert inputs == [str(root / "neutrophil" / "good.jpg")]
    manifest, cache = ingest_dataset(items, ingest_options(root))
    by_path = manifest.set_index("source_path")
    assert by_path.loc["planted/neutrophil/broken_link.jpg", "reason_code"] == "broken_link"
    assert by_path.loc["planted/neutrophil/good.jpg", "status"] == "ok"
    assert len(cache) == 1


def test_read_bytes_of_a_dangling_link_is_broken_link(tmp_path: Path):
    (tmp_path / "x.jpg").symlink_to(tmp_path / "missing.jpg")
    with pytest.raises(RejectedImage) as info:
        read_bytes(str(tmp_path / "x.jpg"))
    assert info.value.code == "broken_link"


# ---------------------------------------------------------------------------- 2 ids, links out


def test_resolve_in_images_dir_refuses_ids_that_leave_it():
    assert resolve_in_images_dir("imgs", "a.jpg") == "imgs/a.jpg"
    assert resolve_in_images_dir("imgs", "sub/../a.jpg") == "imgs/a.jpg"
    assert resolve_in_images_dir(".", "a.jpg") == "a.jpg"
    for name in ("../a.jpg", "../../other/lymphocyte/LY_1.jpg", "/etc/passwd", "sub/../../x"):
        assert resolve_in_images_dir("imgs", name) is None, name
    assert resolve_in_images_dir(".", "../x.jpg") is None
    assert resolve_in_images_dir(".", "C:\\x.jpg") is None


def planted_csv_root(tmp_path: Path, real_cells) -> tuple[Path, Path]:
    """data/planted (csv layout) next to data/other, a second dataset under data_root."""
    data_root = tmp_path / "data"
    root = data_root / "planted"
    copy_cell(real_cells["neutrophil"][0], root / "imgs" / "good.jpg")
    stolen = copy_cell(real_cells["lymphocyte"][0], data_root / "other" / "lymphocyte" / "LY.jpg")
    rows = [
        "file,label",
        "good.jpg,neutrophil",
        "../../other/lymphocyte/LY.jpg,neutrophil",
        f"{stolen},neutrophil",
    ]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return data_root, root


CSV_SPEC = {
    "layout": "csv",
    "csv": "labels.csv",
    "images_dir": "imgs",
    "id_column": "file",
    "label_column": "label",
    "filename_pattern": "%s",
    "label_codes": {},
    "multi_label_separator": ";",
}


def test_label_table_ids_outside_images_dir_are_bad_id(tmp_path: Path, real_cells):
    data_root, root = planted_csv_root(tmp_path, real_cells)
    items = list_dataset(root, CSV_SPEC, EXTENSIONS, ListingOptions(data_root=data_root))
    found = codes(items)
    assert found == {
        "imgs/good.jpg": None,
        "labels.csv#line3": "bad_id",
        "labels.csv#line4": "bad_id",
    }
    messages = {item.rel_path: item.rejection[1] for item in items if item.rejection}
    assert "../../other/lymphocyte/LY.jpg" in messages["labels.csv#line3"]
    assert "outside images_dir 'imgs'" in messages["labels.csv#line3"]
    assert str(data_root / "other") in messages["labels.csv#line4"]
    # the other dataset's image is never read: no row, no hash, no stolen conflict
    manifest, cache = ingest_dataset(items, ingest_options(root))
    assert manifest["sha256"].dropna().tolist() == [
        manifest.loc[manifest["source_path"] == "planted/imgs/good.jpg", "sha256"].item()
    ]
    assert len(cache) == 1


def test_file_link_outside_data_root_follows_only_when_allowed(tmp_path: Path, real_cells):
    data_root = tmp_path / "data"
    root = data_root / "planted"
    outside = copy_cell(real_cells["eosinophil"][0], tmp_path / "elsewhere" / "EO.jpg")
    inside = copy_cell(real_cells["lymphocyte"][1], data_root / "other" / "LY.jpg")
    (root / "eosinophil").mkdir(parents=True)
    (root / "eosinophil" / "out.jpg").symlink_to(outside)
    (root / "eosinophil" / "in.jpg").symlink_to(inside)
    spec = {"layout": "imagefolder"}

    closed = ListingOptions(data_root=data_root)
    items = {item.rel_path: item for item in list_dataset(root, spec, EXTENSIONS, closed)}
    assert items["eosinophil/out.jpg"].rejection[0] == "link_outside"
    assert str(outside) in items["eosinophil/out.jpg"].rejection[1]
    assert "ingest.follow_links_outside" in items["eosinophil/out.jpg"].rejection[1]
    assert items["eosinophil/in.jpg"].rejection is None  # inside data_root: followed
    assert items["eosinophil/in.jpg"].link_target == str(inside)
    assert dataset_input_files(root, spec, closed) == [str(root / "eosinophil" / "in.jpg")]

    opened = ListingOptions(data_root=data_root, follow_links_outside=True)
    items = {item.rel_path: item for item in list_dataset(root, spec, EXTENSIONS, opened)}
    assert items["eosinophil/out.jpg"].rejection is None
    assert items["eosinophil/out.jpg"].link_target == str(outside)
    manifest, _ = ingest_dataset(list(items.values()), ingest_options(root))
    targets = dict(zip(manifest["source_path"], manifest["link_target"], strict=True))
    assert targets == {
        "planted/eosinophil/in.jpg": str(inside),
        "planted/eosinophil/out.jpg": str(outside),
    }
    assert (manifest["status"] == "ok").all()


# ---------------------------------------------------------------------------- 3 folder links


def test_linked_class_folder_is_followed_and_a_loop_is_a_row(tmp_path: Path, real_cells):
    data_root = tmp_path / "data"
    root = data_root / "planted"
    for n, cell in enumerate(real_cells["lymphocyte"][:2]):
        copy_cell(cell, data_root / "pool" / "lymph" / f"L{n}.jpg")
    copy_cell(real_cells["neutrophil"][0], root / "neutrophil" / "N0.jpg")
    (root / "lymphocyte").symlink_to(data_root / "pool" / "lymph", target_is_directory=True)
    (root / "neutrophil" / "loop").symlink_to(root / "neutrophil", target_is_directory=True)
    (root / "neutrophil" / "to_root").symlink_to(root, target_is_directory=True)
    items = list_dataset(root, {"layout": "imagefolder"}, EXTENSIONS, ListingOptions(data_root))
    assert codes(items) == {
        "lymphocyte/L0.jpg": None,
        "lymphocyte/L1.jpg": None,
        "neutrophil/N0.jpg": None,
        "neutrophil/loop": "link_loop",
        "neutrophil/to_root": "link_loop",
    }
    linked = [item for item in items if item.rel_path.startswith("lymphocyte/")]
    assert {item.source_label for item in linked} == {"lymphocyte"}
    assert linked[0].link_target == str((data_root / "pool" / "lymph" / "L0.jpg").resolve())


def test_walk_entries_marks_every_kind_of_entry(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "file.jpg").write_bytes(b"x")
    os.mkfifo(tmp_path / "a" / "pipe.jpg")
    (tmp_path / "a" / "dangling.jpg").symlink_to(tmp_path / "nowhere")
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a" / "self")  # a link to itself
    (tmp_path / "dev.jpg").symlink_to("/dev/null")
    found = {e.rel_path: e.rejection and e.rejection[0] for e in walk_entries(tmp_path)}
    assert found == {
        "a/dangling.jpg": "broken_link",
        "a/file.jpg": None,
        "a/pipe.jpg": "not_a_file",
        "a/self": "broken_link",
        "dev.jpg": "link_outside",  # outside the dataset before being a device
    }
    opened = ListingOptions(follow_links_outside=True)
    device = {e.rel_path: e.rejection for e in walk_entries(tmp_path, opened)}["dev.jpg"]
    assert device[0] == "not_a_file" and "character device" in device[1]


# ---------------------------------------------------------------------------- 4 FIFOs


def test_fifo_image_is_quarantined_without_hanging(tmp_path: Path, real_cells):
    root = tmp_path / "planted"
    copy_cell(real_cells["neutrophil"][0], root / "neutrophil" / "good.jpg")
    os.mkfifo(root / "neutrophil" / "x.jpg")
    spec = {"layout": "imagefolder"}
    items = list_dataset(root, spec, EXTENSIONS)
    assert codes(items)["neutrophil/x.jpg"] == "not_a_file"
    assert "FIFO" in next(i for i in items if i.rejection).rejection[1]
    assert str(root / "neutrophil" / "x.jpg") not in dataset_input_files(root, spec)
    # a FIFO that appears after the listing is refused by the read itself
    with pytest.raises(RejectedImage) as info:
        read_bytes(str(root / "neutrophil" / "x.jpg"))
    assert info.value.code == "not_a_file"
    manifest, _ = ingest_dataset(items, ingest_options(root))
    assert Counter(manifest["reason_code"].fillna("ok")) == {"ok": 1, "not_a_file": 1}


def test_devices_are_not_read():
    with pytest.raises(RejectedImage) as info:
        read_bytes("/dev/zero")  # would never end
    assert info.value.code == "not_a_file"


def test_read_timeout_names_the_key(tmp_path: Path, real_cells):
    path = copy_cell(real_cells["neutrophil"][0], tmp_path / "a.jpg")
    assert read_bytes(str(path), timeout_s=5) == path.read_bytes()
    with pytest.raises(RejectedImage) as info:
        read_bytes(str(path), timeout_s=1e-9)
    assert info.value.code == "read_timeout"
    assert "ingest.read_timeout_s" in info.value.message


def test_fifo_yolo_label_file_and_label_table(tmp_path: Path, real_cells):
    root = tmp_path / "frames"
    copy_cell(real_cells["neutrophil"][0], root / "images" / "f1.jpg")
    copy_cell(real_cells["neutrophil"][1], root / "images" / "f2.jpg")
    (root / "labels").mkdir()
    (root / "labels" / "f1.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    os.mkfifo(root / "labels" / "f2.txt")
    spec = {"layout": "yolo", "images_dir": "images", "labels_dir": "labels", "box_class": 0}
    found = {item.rel_path: item.rejection for item in list_dataset(root, spec, EXTENSIONS)}
    assert found["images/f1.jpg"] is None
    assert found["images/f2.jpg"][0] == "unreadable_labels"
    assert "labels/f2.txt" in found["images/f2.jpg"][1]
    assert str(root / "labels" / "f2.txt") not in dataset_input_files(root, spec)
    os.mkfifo(root / "table.csv")
    with pytest.raises(LayoutError, match="table.csv: cannot read label table"):
        read_label_table(root / "table.csv", root)


# ---------------------------------------------------------------------------- 5 class map


def coverage_config(data_root: Path) -> dict:
    return {
        "data_root": str(data_root),
        "datasets": {
            "folders": {"path": "folders", "domain": "a", "layout": "imagefolder"},
            "table": {
                "path": "table",
                "domain": "b",
                "layout": "csv",
                "csv": "labels.csv",
                "id_column": "file",
                "label_column": "label",
            },
            "frames": {
                "path": "folders",
                "domain": "c",
                "layout": "imagefolder",
                "labelled": False,
            },
        },
        "class_map": {"folders": {"neutrophil": "neutrophil"}, "table": {"NEU": "neutrophil"}},
    }


def test_class_map_gaps_stop_at_parse_time_naming_every_label(tmp_path: Path, real_cells):
    data_root = tmp_path / "data"
    copy_cell(real_cells["neutrophil"][0], data_root / "folders" / "neutrophil" / "n.jpg")
    copy_cell(real_cells["lymphocyte"][0], data_root / "folders" / "mystery" / "m.jpg")
    for n, cell in enumerate(real_cells["eosinophil"]):
        copy_cell(cell, data_root / "table" / f"{n}.jpg")
    (data_root / "table" / "labels.csv").write_text("file,label\n0.jpg,NEU\n1.jpg,EOS\n2.jpg,BAS\n")
    config = coverage_config(data_root)
    with pytest.raises(ConfigError) as info:
        validate_config(copy.deepcopy(config))
    message = str(info.value)
    assert info.value.key == "class_map"
    assert "folders: 'mystery'" in message and "table: 'BAS', 'EOS'" in message
    # an unlabelled dataset is never checked; drop mode skips the check
    dropping = copy.deepcopy(config)
    dropping["subgroup"] = {"unmapped": "drop"}
    validate_config(dropping)
    config["class_map"]["folders"]["mystery"] = None
    config["class_map"]["table"].update(EOS="eosinophil", BAS="basophil")
    validate_config(config)


def test_subgroup_rule_is_not_retried(repo_root: Path):
    text = (repo_root / "workflow" / "rules" / "subgroup.smk").read_text()
    rule = text.split("rule subgroup:", 1)[1].split("\nrule ", 1)[0]
    assert "retries: 0" in rule


# ---------------------------------------------------------------------------- max pixels


def png_with_claimed_size(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (1, 1), 7).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def test_max_image_pixels_above_pillows_limit_takes_effect():
    claimed = png_with_claimed_size(15_000, 13_000)  # 195 M pixels, above Pillow's ~179 M
    with pytest.raises(RejectedImage) as info:
        decode_image(claimed, max_pixels=200_000_000)
    assert info.value.code != "too_large"  # the key allowed it: the fake data fails later
    with pytest.raises(RejectedImage) as info:
        decode_image(claimed, max_pixels=100_000_000)
    assert info.value.code == "too_large"
    assert "ingest.max_image_pixels" in info.value.message
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own limit is restored
