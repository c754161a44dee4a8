"""The Snakemake workflow on a few hundred real images: outputs, reruns, config errors.

The data root is a temporary folder of symbolic links into the shared datasets (a
subset of each), so nothing is copied and the originals are never touched."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hemaflow import smoke
from hemaflow.report_browser import check_report, find_chromium

from .realdata import REPO, require_shared_datasets

pytestmark = pytest.mark.workflow

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PER_PBC_CLASS = 30
RAABIN_FRAMES = 60
# images per set in the FID/KID/precision-recall of the normalization and synthesis
# metrics: enough for each metric to be defined (KID's subsets, k = 3 neighbours); at
# 0.25 s per image through the FID Inception on one core these are most of the run's time
METRICS_IMAGES = 10
# the smallest CycleGAN that exercises every step of the normalization stage
TINY_CYCLEGAN = {
    "preset": "cpu",
    "image_size": 32,
    "ngf": 8,
    "ndf": 8,
    "batch_size": 4,
    "iterations": 4,
    "decay_iterations": 2,
    "checkpoint_every": 2,
    "log_every": 1,
}
# the smallest synthesis settings that run both routes on the subset above: the pbc-only
# classes (21 training images at 30 per class) go to the few-shot GAN (fewer than 22),
# basophil (24, with bccd's and zheng's) to the C-WGAN-GP as a mid class, eosinophil and
# neutrophil (more than 90) are the large classes; every class filled up to 50. Quality
# targets that these few-step generators meet on the C-WGAN-GP's route (any gate
# acceptance) and miss on the few-shot route (precision 1 is out of reach), so that both
# ways of balancing a class run: synthetic images, and repeated real ones
TINY_SYNTHESIS = {
    "large_min": 90,
    "fewshot_max": 22,
    "target": 50,
    "classifier": smoke.REAL_CLASSIFIER,
    "cwgan": smoke.CWGAN,
    "fewshot": smoke.FEWSHOT,
    "gate_classifier": {
        **smoke.CLASSIFIER,
        "iterations": 4,
        "eval_every": 2,
        "checkpoint_every": 2,
    },
    "quality_gate": {"min_confidence": 0.0},
    "quality_targets": {
        "cwgan": {"precision": None, "recall": None, "kid": None, "acceptance": 0.0},
        "fewshot": {"precision": 1.0},
    },
    "metrics_max_images": METRICS_IMAGES,
    "fid_min_images": 1000,
    "curve": {"images_per_class": 4, "real_per_class": 6},
}
# the smallest classifier (a two-stage SENet-GE at 32 px) and a short bootstrap
TINY_CLASSIFIER = smoke.CLASSIFIER


def link_subset(shared: Path, root: Path) -> None:
    for class_dir in sorted((shared / "pbc").iterdir()):
        target = root / "pbc" / class_dir.name
        target.mkdir(parents=True)
        images = [p for p in sorted(class_dir.iterdir()) if not p.name.startswith(".")]
        for image in images[:PER_PBC_CLASS]:
            (target / image.name).symlink_to(image)
    non_image = root / "pbc" / "neutrophil" / ".DS_169665.jpg"  # the real macOS file
    non_image.symlink_to(shared / "pbc" / "neutrophil" / ".DS_169665.jpg")
    (root / "bccd").symlink_to(shared / "bccd")
    (root / "zheng_tecom").symlink_to(shared / "zheng_tecom")
    for sub in ("images", "labels"):
        (root / "raabin_frames" / sub).mkdir(parents=True)
    for image in sorted((shared / "raabin_frames" / "images").iterdir())[:RAABIN_FRAMES]:
        (root / "raabin_frames" / "images" / image.name).symlink_to(image)
        label = shared / "raabin_frames" / "labels" / (image.stem + ".txt")
        (root / "raabin_frames" / "labels" / label.name).symlink_to(label)


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """snakemake on this repository's Snakefile, in ``workdir`` with its config.yaml."""
    return [
        SNAKEMAKE,
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]


# how the tests run a workflow: as `make run` does on a machine without a GPU (the cpu
# workflow profile), every job at one thread, so that two short jobs run side by side on
# 2 cores (most of a tiny job is Python starting, one core's work); how a job runs, never
# what it computes. The profile tests of test_operations.py run the other profiles.
SIDE_BY_SIDE = ("--workflow-profile", str(REPO / "profiles" / "cpu"), "--max-threads", "1")


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: int = 900
) -> subprocess.CompletedProcess:
    command = snakemake_command(workdir, "--cores", "2", *SIDE_BY_SIDE, *args)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry-run."""
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    jobs = {}
    for line in table.splitlines()[3:]:
        name, _, count = line.strip().rpartition(" ")
        if name.strip() and count.isdigit() and name.strip() != "total":
            jobs[name.strip()] = int(count)
    return jobs


def write_config(workdir: Path, data_root: Path, **changes) -> None:
    with open(REPO / "config" / "config.yaml") as handle:
        config = yaml.safe_load(handle)
    config["data_root"] = str(data_root)
    config["normalization"]["cyclegan"] = dict(TINY_CYCLEGAN)
    config["normalization"]["metrics_max_images"] = METRICS_IMAGES
    config["synthesis"] = json.loads(json.dumps(TINY_SYNTHESIS))
    config["classifier"] = dict(TINY_CLASSIFIER)
    config["evaluation"] = {"n_boot": 50}
    # the subset's files are links into the shared folder, outside this data root
    config["ingest"] = {"follow_links_outside": True}
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    shared = require_shared_datasets()
    base = tmp_path_factory.mktemp("workflow")
    data_root, workdir = base / "data", base / "work"
    data_root.mkdir()
    workdir.mkdir()
    link_subset(shared, data_root)
    write_config(workdir, data_root)
    # the whole pipeline: 3 min on 2 idle cores (AVX2), more when they are shared
    snakemake(workdir, timeout=2400)
    return data_root, workdir


@pytest.fixture(scope="module")
def report_html(workflow_run):
    """The HTML report of the default run plus the cross-lab target (its table and chart
    are a report category of their own) and the quality curves."""
    _, workdir = workflow_run
    snakemake(workdir, "all", "cross_lab", "quality_curves")
    report = workdir / "report.html"
    snakemake(workdir, "--report", str(report), "all", "cross_lab", "quality_curves")
    return report


def test_outputs_of_ingest_dedup_subgroup(workflow_run):
    _, workdir = workflow_run
    results = workdir / "results"
    pbc = pd.read_parquet(results / "ingest" / "pbc" / "manifest.parquet")
    assert len(pbc) == 8 * PER_PBC_CLASS + 1
    assert pbc.loc[pbc["status"] == "quarantined", "reason_code"].tolist() == ["not_an_image"]
    merged = pd.read_parquet(results / "data" / "manifest.parquet")
    assert set(merged["dataset"]) == {"pbc", "bccd", "zheng_tecom", "raabin_frames"}
    summary = json.loads((results / "data" / "summary.json").read_text())
    quarantine = pd.read_csv(results / "data" / "quarantine.csv")
    assert (
        summary["quarantined"]
        == len(quarantine)
        == 1 + 54 + (quarantine["dataset"] == "raabin_frames").sum()
    )
    assert summary["by_reason"]["missing_file"] == 44
    groups = pd.read_csv(results / "dedup" / "groups.csv")
    members = [set(m.split(";")) for m in groups["members"]]
    assert {"zheng_tecom:Dataset 1/112.bmp", "zheng_tecom:Dataset 1/139.bmp"} in members
    counts = pd.read_csv(results / "data" / "counts.csv")
    assert counts["total"].sum() == summary["kept"]
    assert (results / "data" / "counts.png").stat().st_size > 10_000
    for domain in ("pbc", "bccd", "zheng_tecom", "raabin"):
        index = pd.read_parquet(results / "cache" / domain / "index.parquet")
        assert len(index) == ((merged["domain"] == domain) & (merged["status"] == "ok")).sum()
    for log in ("ingest/pbc.log", "dedup.log", "subgroup.log"):
        assert (workdir / "logs" / log).stat().st_size > 0
    assert (workdir / "benchmarks" / "ingest" / "pbc.tsv").exists()
    assert (workdir / "benchmarks" / "subgroup.tsv").exists()
    assert (workdir / "benchmarks" / "domain_cache" / "raabin.tsv").exists()


def test_normalization_outputs(workflow_run):
    _, workdir = workflow_run
    results = workdir / "results"
    plan = json.loads((results / "normalization" / "plan.json").read_text())
    target = plan["target"]
    metrics = pd.read_csv(results / "normalization" / "metrics.csv")
    assert sorted(metrics["pair"]) == sorted(f"{a}_to_{b}" for a, b in plan["pairs"])
    # raabin has no cell-type labels: with normalization.unlabelled fallback (the default)
    # no CycleGAN is trained for it, its images get the fallback
    trained = [(a, b) for a, b in plan["pairs"] if a != "raabin"]
    assert ["raabin", target] in plan["pairs"] and len(trained) == len(plan["pairs"]) - 1
    assert not (results / "normalization" / "cyclegan" / f"raabin_to_{target}").exists()
    with_model = metrics["pair"].isin([f"{a}_to_{b}" for a, b in trained])
    for column in ("fid_raw", "fid_reinhard", "kid_raw"):
        assert metrics[column].notna().all() and (metrics[column] != float("inf")).all()
    for column in ("fid_cyclegan", "ssim_reconstruction", "cyclegan_worse_than_reinhard"):
        assert metrics.loc[with_model, column].notna().all()
        assert metrics.loc[~with_model, column].isna().all()
    assert (metrics["split"] == "test").all()
    metrics = metrics.set_index("pair")
    # per pair: CycleGAN or the fallback (reinhard), decided on validation images only
    decided = {}
    for a, b in plan["pairs"]:
        decision = json.loads(
            (results / "normalization" / "decisions" / f"{a}_to_{b}.json").read_text()
        )
        assert decision["pair"] == f"{a}_to_{b}" and decision["fallback"] == "reinhard"
        row = metrics.loc[f"{a}_to_{b}"]
        assert row["decision"] == decision["method"]
        decided[a] = decision["method"]
        if (a, b) not in trained:
            assert decision["method"] == "reinhard" and decision["kid_cyclegan"] is None
            assert "no cell-type labels" in decision["rule"]
            continue
        assert decision["split"] == "val"
        worse = decision["kid_cyclegan"] > decision["kid_fallback"]
        assert decision["method"] == ("reinhard" if worse else "cyclegan"), decision
        for domain, n in ((a, decision["source_images"]), (b, decision["target_images"])):
            index = pd.read_parquet(results / "cache" / domain / "index.parquet")
            assert n == min(METRICS_IMAGES, (index["split"] == "val").sum())
        assert row["decision_kid_cyclegan_val"] == pytest.approx(decision["kid_cyclegan"])
        assert row["cyclegan_worse_than_reinhard"] == (row["kid_cyclegan"] > row["kid_reinhard"])
    for domain in ("pbc", "bccd", "zheng_tecom", "raabin"):
        original = np.load(results / "cache" / domain / "images.npy")
        normalized = np.load(results / "normalized" / "cyclegan" / domain / "images.npy")
        index = pd.read_parquet(results / "normalized" / "cyclegan" / domain / "index.parquet")
        assert normalized.shape == original.shape and normalized.dtype == np.uint8
        if domain == target:  # the target domain is left as it is
            assert np.array_equal(normalized, original)
            assert (index["normalization"] == "none").all()
        else:  # each row says what it got: the CycleGAN, or its pair's fallback
            assert not np.array_equal(normalized, original)
            assert (index["normalization"] == decided[domain]).all()
    for a, b in plan["pairs"]:
        assert (results / "normalization" / "grids" / f"{a}_to_{b}.png").stat().st_size > 5_000
    for a, b in trained:
        losses = pd.read_csv(results / "normalization" / "cyclegan" / f"{a}_to_{b}" / "losses.csv")
        assert losses["iteration"].max() == 6 and np.isfinite(losses["loss_G"]).all()
    log = (workdir / "logs" / "normalization" / "train_cyclegan" / f"{a}_to_{b}.log").read_text()
    assert "cpu" in log
    # a domain's copy waits only for the models that map it: the target's for none (so the
    # synthesis pool need not wait for raabin's CycleGAN), bccd's for its own
    for domain in (target, "bccd"):
        result = snakemake(
            workdir,
            "-n",
            "--forcerun",
            "normalize_domain",
            "--",
            f"results/normalized/cyclegan/{domain}/images.npy",
        )
        block = result.stdout.split("rule normalize_domain:", 1)[1].split("\n\n", 1)[0]
        inputs = block.split("input:", 1)[1].split("\n", 1)[0]
        models = sorted(p.split("/")[-2] for p in inputs.split(", ") if p.endswith("model.pt"))
        assert models == ([] if domain == target else ["bccd_to_pbc"]), (domain, inputs)
    # normalization.unlabelled cyclegan: raabin's CycleGAN is trained and decided on
    result = snakemake(
        workdir,
        "-n",
        "--config",
        "normalization={'unlabelled': 'cyclegan'}",
        "--",
        "results/normalized/cyclegan/raabin/images.npy",
    )
    jobs = dry_run_jobs(result)
    for rule in ("train_cyclegan", "normalization_decision"):
        assert (rule, f"source=raabin, target={target}") in jobs, (rule, sorted(jobs))


def test_synthesis_outputs(workflow_run):
    _, workdir = workflow_run
    synth = workdir / "results" / "synthesis" / "cyclegan"  # the configured normalization
    routes = pd.read_csv(synth / "routes.csv", keep_default_na=False)
    assert set(routes["route"]) >= {"cwgan", "fewshot"}
    pool = pd.read_parquet(synth / "pool" / "index.parquet")
    counts = pool[pool["split"] == "train"]["canonical_class"].value_counts()
    for row in routes.itertuples():
        assert row.count == counts.get(row.canonical_class, 0)
        expected = "fewshot" if row.count < 22 else "cwgan"
        assert row.route == expected
        assert row.to_generate == max(0, 50 - row.count)
    manifest = pd.read_parquet(synth / "balanced" / "routed" / "manifest.parquet")
    images = np.load(synth / "balanced" / "routed" / "images.npy")
    assert len(images) == len(manifest)
    real = manifest[manifest["origin"] == "real"]
    assert len(real) == (pool["split"] == "train").sum()
    # the C-WGAN-GP met its (tiny) targets: its classes are padded with synthetic images;
    # the few-shot GAN missed its own: its classes repeat their real training images
    synthetic = manifest[manifest["origin"] == "synthetic"]
    assert set(synthetic["generator"]) == {"cwgan"}
    assert synthetic["checkpoint_sha256"].str.len().eq(64).all() and (synthetic["seed"] >= 0).all()
    oversampled = manifest[manifest["origin"] == "oversampled"]
    assert set(oversampled["record_id"]) <= set(real["record_id"])
    balancing = pd.read_csv(synth / "balanced" / "routed" / "balancing.csv").set_index(
        "canonical_class"
    )
    assert set(balancing.index) == set(routes["canonical_class"])
    gate = pd.read_csv(synth / "balanced" / "routed" / "gate.csv")
    for row in gate.itertuples():
        assert row.used + row.shortfall == row.needed
        decided = balancing.loc[row.canonical_class]
        n = (synthetic["canonical_class"] == row.canonical_class).sum()
        repeated = (oversampled["canonical_class"] == row.canonical_class).sum()
        if row.route == "cwgan":
            assert decided["balanced_by"] == "synthetic" and decided["targets_met"]
            assert n == row.used == decided["synthetic_used"] and repeated == 0
        else:
            assert decided["balanced_by"] == "sampling" and not decided["targets_met"]
            assert "precision" in decided["missed"]
            assert n == 0 and repeated == row.needed == decided["oversampled"]
        quality = json.loads(
            (
                synth / "samples" / row.route / row.canonical_class / "validation_metrics.json"
            ).read_text()
        )
        assert quality["splits"] == ["val", "held_out"]
        held = pool[
            (pool["canonical_class"] == row.canonical_class)
            & pool["split"].isin(["val", "held_out"])
        ]
        assert quality["validation_images"] == len(held)  # never a test image
    # the gate's judge on real validation images: min_confidence 0 accepts every one
    judge = pd.read_csv(synth / "gate_classifier" / "real_acceptance.csv")
    assert set(judge["canonical_class"]) == set(routes.loc[routes["count"] > 0, "canonical_class"])
    for row in judge.itertuples():
        held = pool[
            (pool["canonical_class"] == row.canonical_class)
            & pool["split"].isin(["val", "held_out"])
        ]
        assert row.real_images == len(held)
        assert row.verdict == ("fair" if len(held) else "no_validation_images")
    metrics = pd.read_csv(synth / "metrics.csv")
    assert set(metrics["canonical_class"]) == set(gate["canonical_class"])
    assert metrics["kid"].notna().any()
    assert (synth / "grid.png").stat().st_size > 5_000
    # generators saw training images only: the pool's non-train rows are never in a model's
    # training data (the logs name the training-image counts)
    log = (workdir / "logs" / "synthesis" / "cyclegan" / "train_cwgan.log").read_text()
    assert "C-WGAN-GP over" in log


def test_quality_curves(workflow_run, report_html):
    """The target quality_curves (built with the report): the C-WGAN-GP's curve over
    its classes and one per few-shot class, each snapshot's KID against real
    validation images and the gate judge's acceptance, and the table of them all."""
    _, workdir = workflow_run
    synth = workdir / "results" / "synthesis" / "cyclegan"
    routes = pd.read_csv(synth / "routes.csv", keep_default_na=False)
    generating = routes[(routes["to_generate"] > 0) & (routes["route"] != "none")]
    table = pd.read_csv(synth / "curves" / "curves.csv")
    cwgan = table[table["generator"] == "cwgan"]
    routed = generating.loc[generating["route"] == "cwgan", "canonical_class"]
    assert set(cwgan["canonical_class"]) == set(routed)
    # the tiny run's 4 iterations, one snapshot each (5 asked for)
    assert sorted(set(cwgan["iteration"])) == [1, 2, 3, 4]
    fewshot = generating.loc[generating["route"] == "fewshot", "canonical_class"]
    for name in fewshot:
        rows = table[(table["generator"] == "fewshot") & (table["canonical_class"] == name)]
        assert rows["iteration"].tolist() == [1, 2], name  # 2 adaptation iterations
        assert (synth / "curves" / f"fewshot_{name}.png").stat().st_size > 5_000
    assert (table["fake_images"] == 4).all() and table["kid"].notna().all()
    assert (table["seconds"] > 0).all()
    # the gate's judge says whether each point's images show their class
    assert table["acceptance"].between(0, 1).all()
    pool = pd.read_parquet(synth / "pool" / "index.parquet")
    reference = pool[pool["split"].isin(["val", "held_out"])]["canonical_class"].value_counts()
    for row in table.itertuples():
        assert row.real_images == min(6, reference.get(row.canonical_class, 0))
    assert (synth / "curves" / "cwgan.png").stat().st_size > 5_000


def test_classifier_outputs_and_report(workflow_run, report_html):
    _, workdir = workflow_run
    results = workdir / "results" / "classifier" / "full"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["training_images"]["synthetic"] > 0 and summary["training_images"]["real"] > 0
    assert summary["training_images"]["oversampled"] > 0
    evaluation = json.loads((results / "evaluation" / "summary.json").read_text())
    synth = workdir / "results" / "synthesis" / "cyclegan"
    pool = pd.read_parquet(synth / "pool" / "index.parquet")
    assert evaluation["n_images"] == (pool["split"] == "test").sum()
    assert evaluation["balanced_accuracy_low"] <= evaluation["balanced_accuracy"]
    assert evaluation["balanced_accuracy"] <= evaluation["balanced_accuracy_high"]
    predictions = pd.read_parquet(results / "evaluation" / "predictions.parquet")
    # evaluated on real test images only
    test_ids = set(pool.loc[pool["split"] == "test", "record_id"])
    assert set(predictions["record_id"]) == test_ids
    assert not predictions["record_id"].str.startswith("synthetic:").any()
    cm = pd.read_csv(results / "evaluation" / "confusion.csv", index_col=0)
    assert cm.to_numpy().sum() == len(predictions)
    headline = json.loads((workdir / "results" / "summary.json").read_text())
    balanced = headline["classifier"]["balanced_accuracy"]
    assert balanced["value"] == evaluation["balanced_accuracy"]
    assert balanced["ci95"] == [
        evaluation["balanced_accuracy_low"],
        evaluation["balanced_accuracy_high"],
    ]
    by_class = {row["canonical_class"]: row for row in headline["synthesis"]}
    balancing = pd.read_csv(synth / "balanced" / "routed" / "balancing.csv")
    assert set(by_class) == set(balancing["canonical_class"])
    for row in pd.read_csv(synth / "balanced" / "routed" / "gate.csv").itertuples():
        said = by_class[row.canonical_class]
        assert said["used"] == row.used and said["route"] == row.route
        assert said["balanced_by"] == ("synthetic" if row.route == "cwgan" else "sampling")
        assert said["targets_met"] is (row.route == "cwgan")
        assert bool(said["missed"]) is (row.route != "cwgan")
    judge = pd.read_csv(synth / "gate_classifier" / "real_acceptance.csv")
    assert [r["canonical_class"] for r in headline["gate_judge"]["classes"]] == list(
        judge["canonical_class"]
    )
    assert headline["gate_judge"]["too_strict"] == []
    assert len(headline["normalization"]) >= 1 and headline["data"]["kept"] > 0
    # the HTML report builds
    text = report_html.read_text(errors="replace")
    assert report_html.stat().st_size > 100_000
    for category in ("data", "normalization", "synthesis", "classification"):
        assert category in text


# report() outputs of targets the workflow run above does not make
NOT_IN_THIS_RUN = {
    "ablation_table.rst",
    "ablation_chart.rst",
    "cwgan_curve.rst",
    "lolo_table.rst",
    "lolo_chart.rst",
    # the rare-class study is its own target (dry-run tested), not built in this run
    "rare_study_summary.rst",
    "rare_study_lift.rst",
    "rare_study_chart.rst",
}
REPORT_CALL = re.compile(
    r'report\(\s*f?"[^"]*",\s*caption="\.\./report/([^"]+)",\s*'
    r'category="([^"]+)",\s*subcategory="([^"]+)"'
)


def report_declarations() -> list[tuple[str, str, str]]:
    """(caption file, category, subcategory) of every report() output in the rules."""
    found = []
    for rules in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        found += REPORT_CALL.findall(rules.read_text())
    return found


def plain(text: str) -> str:
    return " ".join(text.replace("``", "").split())


def caption_opening(caption_file: str) -> str:
    """The caption's words before any markup or template that the report renders
    differently: what a reader must see in the result's description."""
    text = plain((REPO / "workflow" / "report" / caption_file).read_text())
    return re.split(r"[{*`|]", text)[0][:70].strip()


def test_report_renders_in_a_browser(report_html):
    """Every category, every result with its caption, and every figure decoded, as
    headless Chromium shows the report (a JavaScript application)."""
    if find_chromium() is None:
        pytest.skip(
            "chromium is not installed (apt-get install chromium, or set HEMAFLOW_CHROMIUM "
            "to a Chromium binary): the report was not opened in a browser"
        )
    shown = check_report(report_html)
    assert shown["errors"] == []
    landing = shown["landing"]
    assert "RESULTS" in landing.upper()
    categories = {"data", "normalization", "synthesis", "classification"}
    assert set(shown["categories"]) == categories
    assert all(category in landing for category in categories)
    declarations = report_declarations()
    assert len(declarations) >= 17  # the parser found the rules' report() calls
    for caption, category, subcategory in declarations:
        if caption in NOT_IN_THIS_RUN:
            continue
        pattern = re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(subcategory)) + "$")
        subs = {
            name: sub
            for name, sub in shown["categories"][category]["subcategories"].items()
            if pattern.match(name)
        }
        assert subs, f"{caption}: no subcategory {subcategory!r} in {category!r}"
        opening = caption_opening(caption)
        assert len(opening) > 10, caption
        for name, sub in subs.items():
            infos = [plain(result["info"]) for result in sub["results"].values()]
            assert any(opening in info for info in infos), (
                f"{caption}: {category}/{name} shows no result with the caption {opening!r}"
            )
    for category, entry in shown["categories"].items():
        for name, sub in entry["subcategories"].items():
            assert name in plain(sub["menu"]), f"{category}/{name} not in the menu"
            for path, result in sub["results"].items():
                assert "DESCRIPTION" in result["info"].upper(), path
                if result["mime_type"].startswith("image/"):
                    width, height = result["image"]
                    assert width > 100 and height > 100, f"{path} did not render: {result}"


def test_cross_lab_target(workflow_run):
    _, workdir = workflow_run
    snakemake(workdir, "cross_lab")
    results = workdir / "results" / "cross_lab"
    table = pd.read_csv(results / "table.csv", keep_default_na=False)
    assert set(table["method"]) == {"none", "reinhard", "macenko", "cyclegan"}
    assert set(table["test_domain"]) == {"pbc", "bccd", "zheng_tecom"}
    target = json.loads((workdir / "results" / "normalization" / "plan.json").read_text())["target"]
    assert (table["train_domain"] == target).all()  # auto: the normalization target

    def index(domain):
        return pd.read_parquet(workdir / "results" / "cache" / domain / "index.parquet")

    trained = index(target)
    model_classes = set(trained.loc[trained["split"] == "train", "canonical_class"])
    # every lab is evaluated on its val + test images, over the classes it shares
    for domain in ("pbc", "bccd", "zheng_tecom"):
        rows = table[table["test_domain"] == domain]
        cache = index(domain)
        held_out = cache[cache["split"].isin(["val", "test"]) & cache["canonical_class"].ne("")]
        shared = sorted(set(held_out["canonical_class"]) & model_classes)
        assert rows["shared_classes"].eq(" ".join(shared)).all()
        assert (rows["n_images"] == held_out["canonical_class"].isin(shared).sum()).all()
    assert (table["balanced_accuracy_low"] <= table["balanced_accuracy"]).all()
    # the training lab's own row does not depend on the normalization (it is the target)
    assert table.loc[table["test_domain"] == target, "balanced_accuracy"].nunique() == 1
    assert (results / "balanced_accuracy.png").stat().st_size > 5_000
    summary = json.loads((results / target / "summary.json").read_text())
    assert summary["train_domain"] == target


def test_leave_one_lab_out_target(workflow_run):
    """Each labelled lab is tested, all its kept images, by a classifier that was trained
    on the other labs only; one row per normalization and lab, a chart with the
    confusion matrices."""
    _, workdir = workflow_run
    snakemake(workdir, "leave_one_lab_out")
    results = workdir / "results" / "leave_one_lab_out"
    table = pd.read_csv(results / "table.csv", keep_default_na=False)
    labs = {"pbc", "bccd", "zheng_tecom"}
    assert set(table["held_out"]) == labs
    assert set(table["method"]) == {"none", "reinhard", "macenko", "cyclegan"}
    for row in table.itertuples():
        assert row.held_out not in row.train_domains.split()
        assert set(row.train_domains.split()) == labs - {row.held_out}
        cache = pd.read_parquet(workdir / "results" / "cache" / row.held_out / "index.parquet")
        kept = cache[cache["canonical_class"].ne("") & cache["canonical_class"].notna()]
        result = json.loads((results / row.method / row.held_out / "result.json").read_text())
        # ALL kept images of the held-out lab over the shared classes, not a split of them
        assert row.n_images == kept["canonical_class"].isin(result["classes"]).sum()
        assert row.n_images > kept["split"].eq("test").sum()
        matrix = np.asarray(result["confusion"])
        assert matrix.sum() == row.n_images
        assert result["tta"] is True  # cross_lab.tta's default reaches the evaluation
        assert result["balance_labs"] is False  # cross_lab.balance_labs default
        assert row.balanced_accuracy_low <= row.balanced_accuracy <= row.balanced_accuracy_high
    assert (results / "balanced_accuracy.png").stat().st_size > 5_000


def test_ablation_target(workflow_run):
    """Every variant is a full pipeline: its own pool, routes, balanced set and classifier,
    evaluated on its own real test images; one table and one chart."""
    _, workdir = workflow_run
    snakemake(workdir, "ablation")
    table = pd.read_csv(workdir / "results" / "ablation" / "table.csv")
    assert list(table["variant"]) == [
        "full",
        "no_normalization",
        "no_cwgan",
        "no_fewshot",
        "fewshot_all",
        "no_ge",
    ]
    assert table.loc[table["variant"] == "full", "balanced_accuracy_vs_full"].iloc[0] == 0
    full = json.loads(
        (workdir / "results" / "classifier" / "full" / "evaluation" / "summary.json").read_text()
    )
    assert table.loc[0, "balanced_accuracy"] == full["balanced_accuracy"]
    assert (table["balanced_accuracy_low"] <= table["balanced_accuracy"]).all()
    assert any(column.startswith("sensitivity_") for column in table)
    assert (workdir / "results" / "ablation" / "chart.png").stat().st_size > 5_000

    def manifest(norm, variant):
        path = workdir / "results" / "synthesis" / norm / "balanced" / variant
        return pd.read_parquet(path / "manifest.parquet")

    variants = ("routed", "no_cwgan", "no_fewshot", "fewshot_all")
    synthetic = {
        variant: manifest("cyclegan", variant).query("origin == 'synthetic'")
        for variant in variants
    }
    oversampled = {
        variant: set(
            manifest("cyclegan", variant).query("origin == 'oversampled'")["canonical_class"]
        )
        for variant in variants
    }
    # the tiny config: the C-WGAN-GP meets its quality targets, the few-shot GAN misses
    # its own, so a few-shot class is balanced by repeating its real images
    routes = pd.read_csv(workdir / "results" / "synthesis" / "cyclegan" / "routes.csv")
    needing = routes[routes["to_generate"] > 0]
    fewshot_classes = set(needing.query("route == 'fewshot'")["canonical_class"])
    cwgan_classes = set(needing.query("route == 'cwgan'")["canonical_class"])
    assert set(synthetic["routed"]["generator"]) == {"cwgan"}
    assert oversampled["routed"] == fewshot_classes
    assert synthetic["no_cwgan"].empty and oversampled["no_cwgan"] == fewshot_classes
    assert set(synthetic["no_fewshot"]["generator"]) == {"cwgan"}
    assert oversampled["no_fewshot"] == set()
    # few-shot for all: the C-WGAN-GP's classes are generated by adapted few-shot GANs,
    # and held to the few-shot route's targets
    assert synthetic["fewshot_all"].empty
    assert oversampled["fewshot_all"] == fewshot_classes | cwgan_classes
    balancing = pd.read_csv(
        workdir
        / "results"
        / "synthesis"
        / "cyclegan"
        / "balanced"
        / "fewshot_all"
        / "balancing.csv"
    ).set_index("canonical_class")
    assert (balancing.loc[sorted(cwgan_classes), "route"] == "fewshot").all()
    # without normalization: the pool holds the raw images, and the classifier saw them
    raw = workdir / "results" / "synthesis" / "none" / "pool" / "index.parquet"
    assert (pd.read_parquet(raw)["normalization"] == "none").all()
    # with the CycleGAN: each row names what it got (its pair's decision; none: the target)
    normalized = pd.read_parquet(
        workdir / "results" / "synthesis" / "cyclegan" / "pool" / "index.parquet"
    )
    decisions = pd.read_csv(workdir / "results" / "normalization" / "metrics.csv")
    method_of = {
        pair.split("_to_")[0]: method
        for pair, method in zip(decisions["pair"], decisions["decision"])
    }
    expected = [method_of.get(domain, "none") for domain in normalized["domain"]]
    assert normalized["normalization"].tolist() == expected
    no_ge = torch_options(workdir / "results" / "classifier" / "no_ge" / "model.pt")
    assert no_ge["gather_excite"] is False
    assert torch_options(workdir / "results" / "classifier" / "full" / "model.pt")["gather_excite"]


def torch_options(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["options"]


def test_rerun_behaviour(workflow_run):
    data_root, workdir = workflow_run
    assert planned_jobs(snakemake(workdir, "-n")) == {}
    # a hospital sends one more image: only that dataset's ingest and what follows
    new_image = data_root / "pbc" / "basophil" / "BA_added_for_test.jpg"
    shutil.copyfile(require_shared_datasets() / "pbc" / "basophil" / "BA_999747.jpg", new_image)
    try:
        jobs = planned_jobs(snakemake(workdir, "-n"))
        assert jobs.get("ingest") == 1 and jobs.get("dedup") == 1 and jobs.get("subgroup") == 1
        dry = snakemake(workdir, "-n").stdout
        assert "wildcards: dataset=pbc" in dry and "wildcards: dataset=bccd" not in dry
    finally:
        new_image.unlink()
    # a dedup parameter changes: dedup and downstream, no ingest
    write_config(workdir, data_root, **{"dedup.near_threshold": 6})
    try:
        jobs = planned_jobs(snakemake(workdir, "-n"))
        assert "ingest" not in jobs and jobs.get("dedup") == 1 and jobs.get("subgroup") == 1
    finally:
        write_config(workdir, data_root)
    # a normalization parameter changes: normalization and downstream, no ingest or dedup
    write_config(workdir, data_root, **{"normalization.metrics_max_images": METRICS_IMAGES + 5})
    try:
        jobs = planned_jobs(snakemake(workdir, "-n"))
        assert "ingest" not in jobs and "dedup" not in jobs and "subgroup" not in jobs
        assert jobs.get("normalization_metrics", 0) >= 1
    finally:
        write_config(workdir, data_root)
    # the fallback changes: the decisions and what follows them, no CycleGAN retrained;
    # only the unlabelled raabin, which had the fallback instead, now gets one of its own
    write_config(workdir, data_root, **{"normalization.fallback": "none"})
    try:
        result = snakemake(workdir, "-n")
        jobs = planned_jobs(result)
        assert "ingest" not in jobs and jobs.get("train_cyclegan") == 1
        target = json.loads((workdir / "results" / "normalization" / "plan.json").read_text())
        trained = {w for rule, w in dry_run_jobs(result) if rule == "train_cyclegan"}
        assert trained == {f"source=raabin, target={target['target']}"}, trained
        assert jobs.get("normalization_decision", 0) == 3 and jobs.get("normalize_domain", 0) >= 3
    finally:
        write_config(workdir, data_root)
    # a classifier parameter changes: only the classifier, its evaluation and their readers
    write_config(workdir, data_root, classifier=dict(TINY_CLASSIFIER, iterations=7))
    try:
        jobs = planned_jobs(snakemake(workdir, "-n"))
        assert set(jobs) == {
            "train_classifier",
            "evaluate_classifier",
            "classifier_training_curve",
            "headline_summary",
            "all",
        }, jobs
    finally:
        write_config(workdir, data_root)
    assert planned_jobs(snakemake(workdir, "-n")) == {}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"image_sizee": 64}, "image_sizee"),
        ({"image_size": "large"}, "image_size"),
    ],
)
def test_config_error_stops_before_any_job(tmp_path, change, key):
    data_root = require_shared_datasets()
    write_config(tmp_path, data_root)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config.update(change)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert f"config key '{key}'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_missing_dataset_path_and_unknown_layout_are_refused(tmp_path):
    data_root = require_shared_datasets()
    write_config(tmp_path, data_root)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["datasets"]["pbc"]["path"] = "pbc_missing"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", check=False)
    assert (
        result.returncode != 0 and "config key 'datasets.pbc.path'" in result.stderr + result.stdout
    )
    config["datasets"]["pbc"].update(path="pbc", layout="tarball")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", check=False)
    assert (
        result.returncode != 0
        and "config key 'datasets.pbc.layout'" in result.stderr + result.stdout
    )


def test_dry_run_of_the_default_config(tmp_path):
    data_root = require_shared_datasets()
    write_config(tmp_path, data_root)
    jobs = planned_jobs(snakemake(tmp_path, "-n"))
    assert jobs["ingest"] == 4 and jobs["domain_cache"] == 4 and jobs["all"] == 1
    assert not any(rule.startswith("rare_") for rule in jobs)  # the study is a target of its own
    assert os.listdir(tmp_path) == ["config.yaml"] or ".snakemake" in os.listdir(tmp_path)
    assert "quality_curve_table" not in jobs  # the quality curves are asked for


def test_dry_run_with_the_quality_curves_in_the_default_target(tmp_path):
    write_config(
        tmp_path,
        require_shared_datasets(),
        **{"synthesis.curve": {"images_per_class": 4, "in_default_target": True}},
    )
    jobs = planned_jobs(snakemake(tmp_path, "-n"))
    # the curves' jobs wait for the route table (a checkpoint) to know the generators
    assert jobs["quality_curve_table"] == 1 and jobs["synthesis_routes"] == 1
    assert jobs["all"] == 1


def test_dry_run_of_the_rare_class_study(tmp_path):
    """Target rare_class_study: the few-shot GAN meta-trained once per seed, one job per
    (level, seed) (all its arms), one report; in the default target only when asked."""
    data_root = require_shared_datasets()
    write_config(tmp_path, data_root, rare_study={"levels": [50, 20], "seeds": [0, 1, 2]})
    dry = snakemake(tmp_path, "-n", "rare_class_study")
    jobs = planned_jobs(dry)
    assert jobs["rare_study_fewshot_meta"] == 3 and jobs["rare_study_runs"] == 6
    assert jobs["rare_study_report"] == 1 and jobs["rare_class_study"] == 1
    assert {w for rule, w in dry_run_jobs(dry) if rule == "rare_study_runs"} == {
        f"rare_level={level}, rare_seed={seed}" for level in (50, 20) for seed in (0, 1, 2)
    }
    assert "results/cache/pbc/images.npy" in dry.stdout.split("rule rare_study_runs:", 1)[1]
    study = {"in_default_target": True, "arms": ["none", "cwgan"], "levels": [20], "seeds": [0]}
    write_config(tmp_path, data_root, rare_study=study)
    jobs = planned_jobs(snakemake(tmp_path, "-n"))
    assert jobs["rare_study_runs"] == 1 and jobs["rare_study_report"] == 1
    assert "rare_study_fewshot_meta" not in jobs  # no arm uses the few-shot GAN


# ---------------------------------------------------------------------- a fourth lab

FOURTH_LAB_CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")


def link_small_subset(shared: Path, root: Path) -> None:
    """The default four datasets, small: 10 pbc images per class, the first 40 rows of
    bccd's and Tecom's label tables, 10 raabin frames; and a fourth labelled lab, pbc_slice
    (domain lab4): 8 other pbc images of each of four classes, in a folder of its own."""
    for class_dir in sorted((shared / "pbc").iterdir()):
        images = [p for p in sorted(class_dir.iterdir()) if not p.name.startswith(".")]
        (root / "pbc" / class_dir.name).mkdir(parents=True)
        for image in images[:10]:
            (root / "pbc" / class_dir.name / image.name).symlink_to(image)
        if class_dir.name in FOURTH_LAB_CLASSES:
            (root / "pbc_slice" / class_dir.name).mkdir(parents=True)
            for image in images[100:108]:  # none of them in the pbc subset
                (root / "pbc_slice" / class_dir.name / image.name).symlink_to(image)
    for name, table, images in (
        ("bccd", "labels.csv", "Original_Images"),
        ("zheng_tecom", "Class Labels of Dataset 1.csv", "Dataset 1"),
    ):
        (root / name).mkdir()
        lines = (shared / name / table).read_text().splitlines(keepends=True)
        (root / name / table).write_text("".join(lines[:41]))
        (root / name / images).symlink_to(shared / name / images, target_is_directory=True)
    for sub in ("images", "labels"):
        (root / "raabin_frames" / sub).mkdir(parents=True)
    for image in sorted((shared / "raabin_frames" / "images").iterdir())[:10]:
        (root / "raabin_frames" / "images" / image.name).symlink_to(image)
        label = shared / "raabin_frames" / "labels" / (image.stem + ".txt")
        (root / "raabin_frames" / "labels" / label.name).symlink_to(label)


def dry_run_jobs(result: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job of a dry-run, wildcards as snakemake prints them."""
    jobs = set()
    for block in result.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        wildcards = re.search(r"^\s*wildcards: (.*)$", block, re.MULTILINE)
        jobs.add((rule, wildcards.group(1).strip() if wildcards else ""))
    return jobs


def test_a_fourth_labelled_lab_gets_the_whole_treatment(tmp_path):
    """A lab added by config alone: in the normalization plan with a CycleGAN pair of its
    own, decided and normalized, in the cross-lab table and the leave-one-lab-out study."""
    shared = require_shared_datasets()
    data_root, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    link_small_subset(shared, data_root)
    write_config(workdir, data_root)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["datasets"]["pbc_slice"] = {
        "path": "pbc_slice",
        "domain": "lab4",
        "layout": "imagefolder",
        "crop": "cell",
    }
    config["class_map"]["pbc_slice"] = {name: name for name in FOURTH_LAB_CLASSES}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    # the data stages and the plan (a checkpoint: the jobs after it depend on it)
    snakemake(workdir, "results/normalization/plan.json")
    plan = json.loads((workdir / "results" / "normalization" / "plan.json").read_text())
    assert plan["target"] == "pbc"
    assert ["lab4", "pbc"] in plan["pairs"]
    assert set(plan["mapping"]["lab4"]) == set(FOURTH_LAB_CLASSES)
    pair = "source=lab4, target=pbc"
    jobs = dry_run_jobs(snakemake(workdir, "-n"))
    for rule in ("train_cyclegan", "normalization_decision", "normalization_metrics"):
        assert (rule, pair) in jobs, (rule, sorted(jobs))
    assert ("normalize_domain", "method=cyclegan, domain=lab4") in jobs
    normalize = snakemake(
        workdir, "-n", "--", "results/normalized/cyclegan/lab4/images.npy"
    ).stdout.split("rule normalize_domain:", 1)[1]
    assert "results/normalization/decisions/lab4_to_pbc.json" in normalize
    assert "results/normalization/reinhard/pbc/stats.json" in normalize  # the fallback
    jobs = dry_run_jobs(snakemake(workdir, "-n", "cross_lab"))
    for method in ("none", "reinhard", "macenko", "cyclegan"):
        assert ("normalize_domain", f"method={method}, domain=lab4") in jobs, sorted(jobs)
    table = snakemake(workdir, "-n", "cross_lab").stdout.split("rule cross_lab_table:", 1)[1]
    assert "results/normalized/cyclegan/lab4/index.parquet" in table.split("output:", 1)[0]
    jobs = dry_run_jobs(snakemake(workdir, "-n", "leave_one_lab_out"))
    lolo = {w for rule, w in jobs if rule == "train_lolo_classifier"}
    assert lolo == {
        f"method={method}, held_out={lab}"
        for method in ("none", "reinhard", "macenko", "cyclegan")
        for lab in ("pbc", "bccd", "zheng_tecom", "lab4")
    }


def rule_block(result: subprocess.CompletedProcess, rule: str) -> str:
    """The first job block of ``rule`` in a dry-run's output."""
    return result.stdout.split(f"rule {rule}:", 1)[1].split("\n\n", 1)[0]


def test_quality_is_measured_before_the_balanced_set(tmp_path):
    """After the route table (a checkpoint), the dry-run plans the gate judge's check on
    real validation images and each generated class's validation metrics before the
    balanced set, which reads them all and writes the balancing table; summary.json reads
    the balancing table and the judge's check."""
    shared = require_shared_datasets()
    data_root, workdir = tmp_path / "data", tmp_path / "work"
    workdir.mkdir()
    link_small_subset(shared, data_root)
    # no stain normalization: the route table without training a CycleGAN first
    write_config(workdir, data_root, **{"normalization.method": "none"})
    synth = "results/synthesis/none"
    snakemake(workdir, f"{synth}/routes.csv")
    routes = pd.read_csv(workdir / synth / "routes.csv", keep_default_na=False)
    generated = routes[(routes["route"] != "none") & (routes["to_generate"] > 0)]
    assert len(generated) > 0
    result = snakemake(workdir, "-n")
    jobs = dry_run_jobs(result)
    assert ("gate_real_acceptance", "norm=none") in jobs
    for row in generated.itertuples():
        wildcards = f"norm=none, generator={row.route}, synth_class={row.canonical_class}"
        assert ("validation_metrics", wildcards) in jobs, sorted(jobs)
    balanced = rule_block(result, "balanced_training_set")
    inputs, outputs = balanced.split("input:", 1)[1].split("output:", 1)
    assert f"{synth}/gate_classifier/real_acceptance.csv" in inputs
    for row in generated.itertuples():
        sample = f"{synth}/samples/{row.route}/{row.canonical_class}"
        assert f"{sample}/validation_metrics.json" in inputs
    assert f"{synth}/balanced/routed/balancing.csv" in outputs.split("\n", 1)[0]
    summary = rule_block(result, "headline_summary").split("output:", 1)[0]
    assert f"{synth}/balanced/routed/balancing.csv" in summary
    assert f"{synth}/gate_classifier/real_acceptance.csv" in summary
    # the old behaviour is a config switch: the same graph builds
    write_config(
        workdir,
        data_root,
        **{"normalization.method": "none", "synthesis.require_quality": False},
    )
    assert planned_jobs(snakemake(workdir, "-n"))["validation_metrics"] == len(generated)


def test_snakemake_lint_and_snakefmt_are_clean():
    lint = subprocess.run(
        [SNAKEMAKE, "--lint", "-s", str(REPO / "Snakefile"), "-d", str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "good condition" in lint.stdout + lint.stderr
    snakefmt = str(Path(sys.executable).parent / "snakefmt")
    files = [str(REPO / "Snakefile"), str(REPO / "workflow" / "rules")]
    fmt = subprocess.run([snakefmt, "--check", *files], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


# ---------------------------------------------------------------------------- bad inputs


def plant_bad_inputs(shared: Path, base: Path) -> tuple[Path, dict[str, str | None]]:
    """One csv dataset holding every bad-input case at once, built from real images;
    returns the data root and record_id -> expected reason code (None: kept)."""
    data_root = base / "data"
    images = data_root / "planted" / "imgs"
    images.mkdir(parents=True)
    cells = {
        label: [p for p in sorted((shared / "pbc" / label).glob("*.jpg")) if p.name[0] != "."]
        for label in ("neutrophil", "lymphocyte", "eosinophil")
    }
    for n in range(3):
        shutil.copyfile(cells["neutrophil"][n], images / f"good{n}.jpg")
    other = data_root / "other" / "lymphocyte"
    other.mkdir(parents=True)
    shutil.copyfile(cells["lymphocyte"][0], other / "LY.jpg")
    pool = data_root / "pool"
    pool.mkdir()
    shutil.copyfile(cells["lymphocyte"][1], pool / "L.jpg")
    outside = base / "elsewhere"
    outside.mkdir()
    shutil.copyfile(cells["eosinophil"][0], outside / "EO.jpg")
    (images / "broken_link.jpg").symlink_to(images / "gone.jpg")
    (images / "out.jpg").symlink_to(outside / "EO.jpg")
    (images / "linked").symlink_to(pool, target_is_directory=True)
    (images / "loop").symlink_to(images, target_is_directory=True)
    os.mkfifo(images / "x.jpg")
    (images / "notes.txt").write_text("not an image")
    (images / "zero.jpg").write_bytes(b"")
    rows = {
        "good0.jpg": "neutrophil",
        "good1.jpg": "neutrophil",
        "good2.jpg": "neutrophil",
        "broken_link.jpg": "neutrophil",
        "../../other/lymphocyte/LY.jpg": "lymphocyte",
        str(other / "LY.jpg"): "lymphocyte",
        "out.jpg": "eosinophil",
        "linked/L.jpg": "lymphocyte",
        "x.jpg": "neutrophil",
        "zero.jpg": "neutrophil",
    }
    table = "file,label\n" + "".join(f"{name},{label}\n" for name, label in rows.items())
    (data_root / "planted" / "labels.csv").write_text(table)
    expected = {
        "planted:imgs/good0.jpg": None,
        "planted:imgs/good1.jpg": None,
        "planted:imgs/good2.jpg": None,
        "planted:imgs/broken_link.jpg": "broken_link",
        "planted:labels.csv#line6": "bad_id",
        "planted:labels.csv#line7": "bad_id",
        "planted:imgs/out.jpg": "link_outside",
        "planted:imgs/linked/L.jpg": None,
        "planted:imgs/x.jpg": "not_a_file",
        "planted:imgs/zero.jpg": "empty_file",
        "planted:imgs/loop": "link_loop",
        "planted:imgs/notes.txt": "unsupported_extension",
    }
    return data_root, expected


def write_planted_config(workdir: Path, data_root: Path, class_map: dict) -> None:
    config = {
        "data_root": str(data_root),
        "datasets": {
            "planted": {
                "path": "planted",
                "domain": "planted",
                "layout": "csv",
                "csv": "labels.csv",
                "images_dir": "imgs",
                "id_column": "file",
                "label_column": "label",
            }
        },
        "class_map": {"planted": class_map},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_every_planted_bad_input_is_accounted_for(tmp_path):
    shared = require_shared_datasets()
    data_root, expected = plant_bad_inputs(shared, tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    classes = {"neutrophil": "neutrophil", "lymphocyte": "lymphocyte", "eosinophil": "eosinophil"}
    # a label the class map misses stops the run before any job, naming it
    write_planted_config(workdir, data_root, {"neutrophil": "neutrophil"})
    refused = snakemake(workdir, "results/data/manifest.parquet", check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "config key 'class_map.planted'" in output and "'lymphocyte'" in output
    assert not (workdir / "results").exists()
    # the complete map: the run goes through the broken link, FIFO and loop to the end
    write_planted_config(workdir, data_root, classes)
    snakemake(workdir, "results/data/manifest.parquet")
    manifest = pd.read_parquet(workdir / "results" / "data" / "manifest.parquet")
    found = {
        row.record_id: (None if row.status == "ok" else row.reason_code)
        for row in manifest.itertuples()
    }
    assert found == expected
    assert (workdir / "benchmarks" / "subgroup.tsv").stat().st_size > 0
    linked = manifest.set_index("record_id").loc["planted:imgs/linked/L.jpg"]
    assert linked["link_target"] == str((data_root / "pool" / "L.jpg").resolve())
    # the other folder's image was never read: its hash is nowhere in the manifest
    stolen = hashlib.sha256((data_root / "other" / "lymphocyte" / "LY.jpg").read_bytes())
    assert stolen.hexdigest() not in set(manifest["sha256"].dropna())


def test_own_config_replaces_the_default_one(tmp_path):
    """A user's --configfile describes exactly their datasets: the default config next to
    the Snakefile (whose datasets do not exist from here) is not merged in."""
    shared = require_shared_datasets()
    data_root, _ = plant_bad_inputs(shared, tmp_path)
    workdir = tmp_path / "work"
    (workdir / "config").mkdir(parents=True)
    shutil.copyfile(REPO / "config" / "config.yaml", workdir / "config" / "config.yaml")
    classes = {"neutrophil": "neutrophil", "lymphocyte": "lymphocyte", "eosinophil": "eosinophil"}
    write_planted_config(workdir, data_root, classes)
    (workdir / "config.yaml").rename(workdir / "my_labs.yaml")
    # as a user runs it: from the working folder, without -d
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--cores", "1"]
    # the README's order: targets first, then --configfile (it takes several values)
    result = subprocess.run(
        [*command, "-n", "results/data/manifest.parquet", "--configfile", "my_labs.yaml"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert planned_jobs(result) == {"ingest": 1, "dedup": 1, "subgroup": 1}
    assert "bccd" not in result.stdout + result.stderr
    # without a --configfile the default one is used (and here its data root is missing)
    default = subprocess.run(
        [*command, "-n"], capture_output=True, text=True, timeout=300, cwd=workdir
    )
    assert default.returncode != 0
    assert "config key 'data_root'" in default.stdout + default.stderr
