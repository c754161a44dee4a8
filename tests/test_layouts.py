"""list_dataset on the real shared datasets (counts from their README) and on synthetic
layouts for the cases the real data lacks."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from hemaflow.data.layouts import dataset_input_files, list_dataset, parse_yolo_labels
from hemaflow.data.listing import LayoutError, SourceItem

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def rejections(items: list[SourceItem]) -> Counter:
    return Counter(item.rejection[0] for item in items if item.rejection)


def accepted_labels(items: list[SourceItem]) -> Counter:
    return Counter(item.source_label for item in items if item.rejection is None)


def real_listing(config, name):
    spec = config["datasets"][name]
    root = Path(config["data_root"]) / spec["path"]
    return root, spec, list_dataset(root, spec, tuple(config["ingest"]["extensions"]))


@pytest.fixture(scope="module")
def real(_session_config):
    """Listings of the four real datasets, computed once."""
    return {name: real_listing(_session_config, name) for name in _session_config["datasets"]}


# ---------------------------------------------------------------------------- real data


def test_pbc_imagefolder_counts(real):
    root, spec, items = real["pbc"]
    assert spec["layout"] == "imagefolder"
    assert len(items) == 17093  # 17092 JPEG + the .DS metadata file
    assert Counter(item.source_label for item in items) == {
        "neutrophil": 3330,  # 3329 images + .DS_169665.jpg
        "eosinophil": 3117,
        "ig": 2895,
        "platelet": 2348,
        "erythroblast": 1551,
        "monocyte": 1420,
        "basophil": 1218,
        "lymphocyte": 1214,
    }
    # .jpg name: nothing visible from the listing alone; decoding quarantines it later
    assert rejections(items) == {}
    rel_paths = [item.rel_path for item in items]
    assert rel_paths == sorted(rel_paths) and len(set(rel_paths)) == len(rel_paths)
    assert "neutrophil/.DS_169665.jpg" in rel_paths
    assert all(item.boxes is None for item in items)


def test_pbc_fine_labels_from_regex(real):
    _, _, items = real["pbc"]
    fine = Counter(item.fine_label for item in items)
    assert fine["BNE"] == 1633
    assert fine["SNE"] == 1646
    assert fine["NEUTROPHIL"] == 50
    assert fine["MY"] == 1137
    assert fine["MMY"] == 1015
    assert fine["PMY"] == 592
    assert fine["IG"] == 151
    assert fine[None] == 1  # ".DS_169665.jpg" does not match ^[A-Z]+_
    by_label = Counter((item.source_label, item.fine_label) for item in items)
    assert by_label[("neutrophil", "BNE")] == 1633
    assert by_label[("ig", "PMY")] == 592
    assert by_label[("neutrophil", None)] == 1


def test_bccd_csv_counts(real):
    root, spec, items = real["bccd"]
    assert spec["layout"] == "csv"
    assert len(items) == 412  # 411 table rows + index.txt in the image folder
    assert rejections(items) == {
        "missing_file": 44,
        "multiple_labels": 8,
        "empty_label": 1,
        "unsupported_extension": 1,
    }
    assert accepted_labels(items) == {
        "NEUTROPHIL": 211,
        "EOSINOPHIL": 90,
        "LYMPHOCYTE": 34,
        "MONOCYTE": 20,
        "BASOPHIL": 3,
    }
    for item in items:
        if item.rejection and item.rejection[0] == "missing_file":
            assert not (root / item.rel_path).exists()
        elif item.rejection and item.rejection[0] == "unsupported_extension":
            # a non-image file in the image folder gets a row, never silence
            assert item.rel_path == "Original_Images/index.txt"
            assert "not listed in labels.csv" in item.rejection[1]
        else:
            assert (root / item.rel_path).is_file()
            assert item.rel_path.startswith("Original_Images/BloodImage_")
    # no file is left out of the listing
    on_disk = {f"Original_Images/{n}" for n in os.listdir(root / "Original_Images")}
    assert on_disk <= {item.rel_path for item in items}


def test_bccd_repeated_type_is_one_label(real):
    _, _, items = real["bccd"]
    by_path = {item.rel_path: item for item in items}
    repeated = by_path["Original_Images/BloodImage_00065.jpg"]  # "NEUTROPHIL, NEUTROPHIL"
    assert repeated.rejection is None
    assert repeated.source_label == "NEUTROPHIL"
    assert any("repeats one type" in note for note in repeated.notes)
    mixed = by_path["Original_Images/BloodImage_00010.jpg"]  # "NEUTROPHIL, EOSINOPHIL"
    assert mixed.rejection[0] == "multiple_labels"
    assert "EOSINOPHIL" in mixed.rejection[1] and "NEUTROPHIL" in mixed.rejection[1]


def test_zheng_tecom_numeric_codes(real):
    root, spec, items = real["zheng_tecom"]
    assert len(items) == 300
    assert rejections(items) == {}
    assert accepted_labels(items) == {
        "neutrophil": 176,
        "lymphocyte": 53,
        "monocyte": 48,
        "eosinophil": 22,
        "basophil": 1,
    }
    assert items[0].rel_path == "Dataset 1/001.bmp"
    assert items[-1].rel_path == "Dataset 1/300.bmp"
    assert all((root / item.rel_path).is_file() for item in items)


def test_raabin_yolo_boxes(real):
    root, spec, items = real["raabin_frames"]
    assert spec["layout"] == "yolo"
    assert len(items) == 500
    assert rejections(items) == {"no_box": 8}
    assert all(item.source_label is None for item in items)
    with_boxes = [item for item in items if item.rejection is None]
    assert len(with_boxes) == 492
    assert sum(len(item.boxes) for item in with_boxes) >= 492
    for item in with_boxes:
        assert item.rel_path.startswith("images/")
        assert item.boxes
        for box in item.boxes:
            assert len(box) == 4
            assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in box)
    for item in items:
        if item.rejection:
            assert item.boxes == []  # only boxes of other classes (RBC, platelet)


def test_real_dataset_input_files(real):
    root, spec, items = real["pbc"]
    files = dataset_input_files(root, spec)
    assert len(files) == 17093
    assert {os.path.relpath(f, root) for f in files} == {item.rel_path for item in items}

    root, spec, items = real["bccd"]
    files = dataset_input_files(root, spec)
    assert str(root / "labels.csv") in files
    images = [f for f in files if f.endswith(".jpg")]
    assert len(images) == 367
    assert files == sorted(files)

    root, spec, items = real["zheng_tecom"]
    files = dataset_input_files(root, spec)
    assert str(root / "Class Labels of Dataset 1.csv") in files
    assert sum(f.endswith(".bmp") for f in files) == 300

    root, spec, items = real["raabin_frames"]
    files = dataset_input_files(root, spec)
    assert sum(f.startswith(str(root / "images")) for f in files) == 500
    assert sum(f.startswith(str(root / "labels")) and f.endswith(".txt") for f in files) == 500


# ---------------------------------------------------------------------------- synthetic


def png(path: Path, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 60, 200)).save(path, "PNG")
    return path


def csv_spec(**overrides):
    spec = {
        "layout": "csv",
        "csv": "labels.csv",
        "images_dir": "imgs",
        "id_column": "id",
        "label_column": "label",
        "filename_pattern": "%03d.png",
        "label_codes": {},
        "multi_label_separator": ",",
    }
    spec.update(overrides)
    return spec


def test_csv_basic_codes_and_sorting(tmp_path: Path):
    for n in (1, 2, 3):
        png(tmp_path / "imgs" / f"{n:03d}.png")
    (tmp_path / "labels.csv").write_text("id,label\n3,1\n1,2\n2,9\n")
    spec = csv_spec(label_codes={1: "neutrophil", "2": "lymphocyte"})
    items = list_dataset(tmp_path, spec, EXTENSIONS)
    assert [(i.rel_path, i.source_label, i.rejection) for i in items] == [
        ("imgs/001.png", "lymphocyte", None),
        ("imgs/002.png", "9", None),  # unknown code kept as is (the class map decides)
        ("imgs/003.png", "neutrophil", None),
    ]


def test_csv_conflicting_duplicate_rows(tmp_path: Path):
    png(tmp_path / "imgs" / "001.png")
    png(tmp_path / "imgs" / "002.png")
    (tmp_path / "labels.csv").write_text("id,label\n1,A\n1,B\n2,C\n2,C\n")
    items = list_dataset(tmp_path, csv_spec(), EXTENSIONS)
    assert len(items) == 2
    by_path = {item.rel_path: item for item in items}
    code, message = by_path["imgs/001.png"].rejection
    assert code == "conflicting_rows"
    assert "'A'" in message and "'B'" in message
    same = by_path["imgs/002.png"]
    assert same.rejection is None and same.source_label == "C"
    assert any("listed again" in note for note in same.notes)


def test_csv_conflict_followed_by_third_row_stays_rejected(tmp_path: Path):
    png(tmp_path / "imgs" / "001.png")
    (tmp_path / "labels.csv").write_text("id,label\n1,A\n1,B\n1,A\n")
    items = list_dataset(tmp_path, csv_spec(), EXTENSIONS)
    assert items, "the file must be listed"
    assert any(item.rejection and item.rejection[0] == "conflicting_rows" for item in items)
    assert all(item.rejection is not None for item in items), [
        (item.rel_path, item.source_label, item.rejection) for item in items
    ]


def test_csv_id_not_fitting_pattern_is_bad_id(tmp_path: Path):
    png(tmp_path / "imgs" / "001.png")
    (tmp_path / "labels.csv").write_text("id,label\n1,A\nabc,B\n,C\n")
    items = list_dataset(tmp_path, csv_spec(), EXTENSIONS)
    codes = {item.rel_path: item.rejection and item.rejection[0] for item in items}
    assert codes == {
        "imgs/001.png": None,
        "labels.csv#line3": "bad_id",
        "labels.csv#line4": "empty_id",
    }
    bad = next(item for item in items if item.rel_path == "labels.csv#line3")
    assert "'abc'" in bad.rejection[1] and "%03d.png" in bad.rejection[1]


def test_csv_infinite_id_is_bad_id(tmp_path: Path):
    png(tmp_path / "imgs" / "001.png")
    (tmp_path / "labels.csv").write_text("id,label\n1,A\ninf,B\n")
    items = list_dataset(tmp_path, csv_spec(), EXTENSIONS)
    assert {item.rejection[0] for item in items if item.rejection} == {"bad_id"}


def test_csv_unlisted_and_missing_files(tmp_path: Path):
    png(tmp_path / "imgs" / "001.png")
    png(tmp_path / "imgs" / "002.png")  # not in the CSV
    (tmp_path / "imgs" / "README.txt").write_text("docs get a row too")
    (tmp_path / "labels.csv").write_text("id,label\n1,A\n5,B\n5,B\n")
    items = list_dataset(tmp_path, csv_spec(), EXTENSIONS)
    codes = {item.rel_path: item.rejection and item.rejection[0] for item in items}
    assert codes == {
        "imgs/001.png": None,
        "imgs/002.png": "unlisted",
        "imgs/005.png": "missing_file",  # listed twice, reported once
        "imgs/README.txt": "unsupported_extension",  # nothing in the image folder vanishes
    }


def test_csv_multi_label_separator_and_empty_label(tmp_path: Path):
    for n in (1, 2, 3):
        png(tmp_path / "imgs" / f"{n:03d}.png")
    (tmp_path / "labels.csv").write_text('id,label\n1,"X, Y"\n2,"X,X"\n3,\n')
    items = list_dataset(tmp_path, csv_spec(), EXTENSIONS)
    by_path = {item.rel_path: item for item in items}
    assert by_path["imgs/001.png"].rejection[0] == "multiple_labels"
    assert by_path["imgs/002.png"].rejection is None
    assert by_path["imgs/002.png"].source_label == "X"
    assert by_path["imgs/003.png"].rejection[0] == "empty_label"


def test_csv_missing_column_raises_layout_error(tmp_path: Path):
    png(tmp_path / "imgs" / "001.png")
    (tmp_path / "labels.csv").write_text("id,category\n1,A\n")
    with pytest.raises(LayoutError) as info:
        list_dataset(tmp_path, csv_spec(), EXTENSIONS)
    text = str(info.value)
    assert "'label'" in text
    assert str(tmp_path / "labels.csv") in text


def test_csv_unreadable_table_raises_layout_error(tmp_path: Path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(LayoutError, match="labels.csv"):
        list_dataset(tmp_path, csv_spec(), EXTENSIONS)


def test_csv_string_pattern_and_bom(tmp_path: Path):
    png(tmp_path / "a b.png")
    (tmp_path / "labels.csv").write_bytes("\ufefffile,label\na b.png,Z\n".encode())
    spec = csv_spec(images_dir=".", id_column="file", filename_pattern="%s")
    items = list_dataset(tmp_path, spec, EXTENSIONS)
    assert [(i.rel_path, i.source_label, i.rejection) for i in items] == [("a b.png", "Z", None)]


def test_imagefolder_synthetic_rejections(tmp_path: Path):
    png(tmp_path / "cats" / "X_1.png")
    png(tmp_path / "cats" / "sub" / "Y_2.PNG")  # label is the first folder; case-insensitive ext
    png(tmp_path / "root.png")  # outside any class folder
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    spec = {"layout": "imagefolder", "fine_label_regex": "^(?P<fine>[A-Z]+)_"}
    items = list_dataset(tmp_path, spec, EXTENSIONS)
    got = {
        i.rel_path: (i.source_label, i.fine_label, i.rejection and i.rejection[0]) for i in items
    }
    assert got == {
        "cats/X_1.png": ("cats", "X", None),
        "cats/sub/Y_2.PNG": ("cats", "Y", None),
        "root.png": (None, None, "no_label"),
        "cats/notes.txt": ("cats", None, "unsupported_extension"),
        "dogs/.DS_Store": ("dogs", None, "unsupported_extension"),
    }


def test_imagefolder_without_regex(tmp_path: Path):
    png(tmp_path / "a" / "BNE_1.png")
    items = list_dataset(tmp_path, {"layout": "imagefolder"}, EXTENSIONS)
    assert [(i.source_label, i.fine_label) for i in items] == [("a", None)]


def yolo_spec(**overrides):
    spec = {"layout": "yolo", "images_dir": "images", "labels_dir": "labels", "box_class": 0}
    spec.update(overrides)
    return spec


def test_yolo_synthetic_cases(tmp_path: Path):
    labels = tmp_path / "labels"
    labels.mkdir()
    png(tmp_path / "images" / "good.png")
    (labels / "good.txt").write_text(
        "0 0.5 0.5 0.2 0.3\n\n1 0.1 0.1 0.1 0.1\n0 0.25 0.75 0.1 0.1\n"
    )
    png(tmp_path / "images" / "nolabel.png")
    png(tmp_path / "images" / "badfields.png")
    (labels / "badfields.txt").write_text("0 0.5 0.5 0.2\n")
    png(tmp_path / "images" / "badnumber.png")
    (labels / "badnumber.txt").write_text("0 0.5 x 0.2 0.2\n")
    png(tmp_path / "images" / "rbconly.png")
    (labels / "rbconly.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    png(tmp_path / "images" / "empty.png")
    (labels / "empty.txt").write_text("")
    (tmp_path / "images" / "readme.md").write_text("no")
    items = list_dataset(tmp_path, yolo_spec(), EXTENSIONS)
    got = {i.rel_path: i for i in items}
    assert set(got) == {
        "images/good.png",
        "images/nolabel.png",
        "images/badfields.png",
        "images/badnumber.png",
        "images/rbconly.png",
        "images/empty.png",
        "images/readme.md",
    }
    assert got["images/good.png"].rejection is None
    assert got["images/good.png"].boxes == [(0.5, 0.5, 0.2, 0.3), (0.25, 0.75, 0.1, 0.1)]
    assert got["images/nolabel.png"].rejection[0] == "no_label_file"
    assert "labels/nolabel.txt" in got["images/nolabel.png"].rejection[1]
    assert got["images/badfields.png"].rejection[0] == "bad_label_file"
    assert "expected 5 fields" in got["images/badfields.png"].rejection[1]
    assert got["images/badnumber.png"].rejection[0] == "bad_label_file"
    assert got["images/rbconly.png"].rejection[0] == "no_box"
    assert got["images/empty.png"].rejection[0] == "no_box"
    assert got["images/readme.md"].rejection[0] == "unsupported_extension"


def test_yolo_box_class_selects_boxes(tmp_path: Path):
    png(tmp_path / "images" / "f.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "f.txt").write_text("0 0.5 0.5 0.2 0.2\n2 0.1 0.2 0.05 0.05\n")
    items = list_dataset(tmp_path, yolo_spec(box_class=2), EXTENSIONS)
    assert items[0].boxes == [(0.1, 0.2, 0.05, 0.05)]


def test_parse_yolo_labels_errors():
    assert parse_yolo_labels("0 0.1 0.2 0.3 0.4\n", "x.txt") == [(0, (0.1, 0.2, 0.3, 0.4))]
    with pytest.raises(LayoutError, match="x.txt line 2"):
        parse_yolo_labels("0 0.1 0.2 0.3 0.4\n0 1 2\n", "x.txt")
    with pytest.raises(LayoutError, match="not numbers"):
        parse_yolo_labels("zero 0.1 0.2 0.3 0.4\n", "x.txt")


def test_yolo_non_finite_coordinates_are_bad_label_file(tmp_path: Path):
    png(tmp_path / "images" / "f.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "f.txt").write_text("0 nan 0.5 0.2 0.2\n")
    items = list_dataset(tmp_path, yolo_spec(), EXTENSIONS)
    assert items[0].rejection is not None and items[0].rejection[0] == "bad_label_file"


def test_synthetic_dataset_input_files(tmp_path: Path):
    png(tmp_path / "c" / "imgs" / "001.png")
    (tmp_path / "c" / "imgs" / "notes.txt").write_text("x")
    (tmp_path / "c" / "labels.csv").write_text("id,label\n1,A\n")
    files = dataset_input_files(tmp_path / "c", csv_spec())
    assert files == sorted(
        [
            str(tmp_path / "c" / "imgs" / "001.png"),
            str(tmp_path / "c" / "imgs" / "notes.txt"),
            str(tmp_path / "c" / "labels.csv"),
        ]
    )

    png(tmp_path / "y" / "images" / "a.png")
    png(tmp_path / "y" / "images" / "b.png")
    (tmp_path / "y" / "labels").mkdir()
    (tmp_path / "y" / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    files = dataset_input_files(tmp_path / "y", yolo_spec())
    assert [os.path.relpath(f, tmp_path / "y") for f in files] == [
        "images/a.png",
        "images/b.png",
        "labels/a.txt",
    ]

    png(tmp_path / "f" / "k" / "a.png")
    (tmp_path / "f" / "loose.txt").write_text("x")
    files = dataset_input_files(tmp_path / "f", {"layout": "imagefolder"})
    assert [os.path.relpath(f, tmp_path / "f") for f in files] == ["k/a.png", "loose.txt"]


def test_default_config_fixture(default_config, shared_datasets):
    assert Path(default_config["data_root"]) == shared_datasets
    assert Path(default_config["data_root"]).is_absolute()
    # layout defaults are filled in by validation
    assert default_config["datasets"]["bccd"]["multi_label_separator"] == ","
    assert default_config["datasets"]["raabin_frames"]["box_margin"] == 0.15
    assert ".jpg" in default_config["ingest"]["extensions"]
    default_config["datasets"].clear()  # a per-test copy: the next test is unaffected


def test_default_config_fixture_is_fresh(default_config):
    assert set(default_config["datasets"]) == {"pbc", "bccd", "zheng_tecom", "raabin_frames"}


# ---------------------------------------------------------------------------- selection


def test_include_exclude_globs_skip_masks_instead_of_quarantining(tmp_path: Path, shared_datasets):
    cells = sorted((shared_datasets / "pbc" / "neutrophil").glob("BNE_*.jpg"))[:2]
    images = tmp_path / "imgs"
    images.mkdir()
    for n, cell in enumerate(cells):
        (images / f"{n}.jpg").write_bytes(cell.read_bytes())
        (images / f"{n}_mask.png").write_bytes(b"mask")
    (tmp_path / "labels.csv").write_text("id,label\n0.jpg,A\n1.jpg,B\n")
    spec = csv_spec(filename_pattern="%s")
    assert rejections(list_dataset(tmp_path, spec, EXTENSIONS)) == {"unlisted": 2}
    spec["exclude"] = ["*_mask.png"]
    items = list_dataset(tmp_path, spec, EXTENSIONS)
    assert [item.rel_path for item in items] == ["imgs/0.jpg", "imgs/1.jpg"]
    assert rejections(items) == {}
    inputs = {os.path.relpath(f, tmp_path) for f in dataset_input_files(tmp_path, spec)}
    assert inputs == {"imgs/0.jpg", "imgs/1.jpg", "labels.csv"}
    spec = csv_spec(filename_pattern="%s", include=["imgs/0*"])
    assert [item.rel_path for item in list_dataset(tmp_path, spec, EXTENSIONS)] == [
        "imgs/0.jpg",
        "imgs/0_mask.png",
    ]


def test_frame_sizes_split_a_mixed_yolo_folder(tmp_path: Path, shared_datasets):
    raabin = sorted((shared_datasets / "raabin_frames" / "images").iterdir())[0]
    bccd = shared_datasets / "bccd" / "Original_Images" / "BloodImage_00000.jpg"
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, source in (("raabin.jpg", raabin), ("bccd.jpg", bccd)):
        (tmp_path / "images" / name).write_bytes(source.read_bytes())
        (tmp_path / "labels" / (name[:-4] + ".txt")).write_text("0 0.5 0.5 0.2 0.2\n")
    listed = {item.rel_path for item in list_dataset(tmp_path, yolo_spec(), EXTENSIONS)}
    assert listed == {"images/bccd.jpg", "images/raabin.jpg"}
    small = yolo_spec(frame_sizes=[[575, 575]])
    assert [i.rel_path for i in list_dataset(tmp_path, small, EXTENSIONS)] == ["images/raabin.jpg"]
    large = yolo_spec(frame_sizes=[[640, 480]])
    assert [i.rel_path for i in list_dataset(tmp_path, large, EXTENSIONS)] == ["images/bccd.jpg"]
