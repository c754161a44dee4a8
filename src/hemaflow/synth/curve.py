"""Quality against training time: KID and k-NN precision and recall of a generator's
images at each of its snapshots (``hemaflow.train.snapshots``), per class, so that a user
sees what more compute buys.

The reference is the class's real *validation* images and the training images that
``synthesis.subsample`` held out (``CURVE_SPLITS``), never the test split: how long to
train is chosen on this curve, and a choice made on the test images would make them no
longer a test. Each class's real features are extracted once; every snapshot generates
``images_per_class`` images per class from the same seed (the same latent vectors at
every snapshot, so the curve follows the generator, not the noise). The time axis is the
training seconds of the loss CSV at the snapshot's iteration (linearly interpolated
between logged iterations); a few-shot class's adds the meta-training's seconds, which it
needed first.

Given a judge (``classifier_judge``: a real-data classifier that never guided the
generator, the workflow's gate classifier), each point also has ``acceptance``: the share
of its images that the judge gives their class at ``min_confidence``, the gate's rule.
KID, precision and recall compare a class's images with that class's real ones only, so a
generator that ignores the class it is asked for (every class's images alike) can still
score well on them; acceptance is what shows it.

Inception features are the cost (about 0.2-0.4 s per image per CPU thread): a curve costs
``(snapshots * images_per_class + real_per_class)`` images per class."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hemaflow.metrics import compute_metrics
from hemaflow.progress import Progress
from hemaflow.synth.evaluate import PR_K, seeded_subset

if TYPE_CHECKING:  # loaded where used: the curve's table job starts without torch
    from hemaflow.metrics.inception import InceptionFeatures

log = logging.getLogger(__name__)

# the validation split and the training rows that subsampling held out; never "test"
CURVE_SPLITS = ("val", "held_out")
CURVE_COLUMNS = (
    "generator",
    "canonical_class",
    "iteration",
    "seconds",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "acceptance",
    "fake_images",
    "real_images",
)
KID_SUBSET_SIZE = 100

SampleFn = Callable[[str, int, int], np.ndarray]  # (class, n, seed) -> uint8 NHWC
Judge = Callable[[str, np.ndarray], float]  # (class, uint8 NHWC images) -> share accepted


@dataclass(frozen=True)
class CurveSettings:
    """How many images a curve point costs: ``images_per_class`` generated per class and
    snapshot, against at most ``real_per_class`` real held-out images per class (a seeded
    choice); ``seed`` of the latent vectors, the choice and the KID subsets."""

    images_per_class: int = 100
    real_per_class: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("images_per_class", "real_per_class"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"synthesis.curve.{name}: must be an integer >= 2, got {value!r}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, seed: int = 0) -> CurveSettings:
        """From the ``synthesis.curve`` section (keys that do not set a size, such as
        ``in_default_target``, are the workflow's)."""
        section = dict(section or {})
        return cls(
            images_per_class=section.get("images_per_class", cls.images_per_class),
            real_per_class=section.get("real_per_class", cls.real_per_class),
            seed=seed,
        )


@dataclass(frozen=True)
class CurvePoint:
    """One snapshot: its iteration, the training seconds it took to get there, and how to
    draw images of a class from it."""

    iteration: int
    seconds: float
    sample: SampleFn


# ------------------------------------------------------------------------------ time axis


def _time_log(losses_csv: str | Path) -> pd.DataFrame:
    log_table = pd.read_csv(losses_csv)
    missing = [c for c in ("iteration", "seconds") if c not in log_table]
    if missing:
        raise ValueError(f"{losses_csv}: not a training loss log (no {', '.join(missing)} column)")
    return log_table.sort_values("iteration")


def seconds_at(losses_csv: str | Path, iterations: Sequence[int]) -> np.ndarray:
    """Training seconds at each of ``iterations``, from the loss CSV's ``seconds``
    (cumulative over resumptions) at its logged iterations, linearly interpolated in
    between (0 s at iteration 0)."""
    table = _time_log(losses_csv)
    x = np.concatenate([[0.0], table["iteration"].to_numpy(float)])
    y = np.concatenate([[0.0], table["seconds"].to_numpy(float)])
    return np.interp(np.asarray(iterations, float), x, y)


def training_seconds(losses_csv: str | Path) -> float:
    """The seconds of a whole training run: its loss CSV's last ``seconds`` (the last
    iteration is always logged); 0 for a run without a logged iteration."""
    table = _time_log(losses_csv)
    return float(table["seconds"].iloc[-1]) if len(table) else 0.0


# -------------------------------------------------------------------------------- metrics


def real_features(
    held_out: Mapping[str, np.ndarray],
    settings: CurveSettings,
    inception: InceptionFeatures,
) -> dict[str, np.ndarray]:
    """Inception features of at most ``real_per_class`` held-out images of each class."""
    return {
        name: inception.features(seeded_subset(images, settings.real_per_class, settings.seed))
        for name, images in held_out.items()
    }


def point_metrics(fake: np.ndarray, real: np.ndarray, seed: int) -> dict[str, float]:
    """KID (mean and standard deviation over subsets) and k-NN precision and recall of
    one class's fake features against its real ones; NaN where a set is too small (KID
    needs 2 images per set, the k-NN manifolds more than k)."""
    result = dict.fromkeys(("kid", "kid_std", "precision", "recall"), float("nan"))
    smaller = min(len(fake), len(real))
    names = ["kid"] if smaller >= 2 else []
    if smaller > PR_K:
        names += ["precision", "recall"]
    if names:
        result.update(
            compute_metrics(
                names,
                real_features=real,
                fake_features=fake,
                kid_subset_size=min(KID_SUBSET_SIZE, smaller),
                pr_k=PR_K,
                seed=seed,
            )
        )
    return result


def classifier_judge(
    model_path: str | Path,
    min_confidence: float,
    device: str | None = None,
    per_class: Mapping[str, float] | None = None,
):
    """A ``Judge`` from a classifier's model file: the workflow's gate classifier
    (``hemaflow.classify``, the ``classifier`` kind) or a real-data classifier
    (``train_real_classifier``). It gives the share of images whose probability of the
    class asked for is at least ``min_confidence``, or the class's own threshold in
    ``per_class`` (the gate's, with ``fair_confidence``); a class the classifier does not
    know is refused by name."""
    import torch

    from hemaflow.classify.options import FILE_KIND as CLASSIFIER_KIND
    from hemaflow.classify.predict import load_classifier, predict_proba
    from hemaflow.synth.real_classifier import classify, load_real_classifier

    thresholds = dict(per_class or {})
    for what, value in [("min_confidence", min_confidence), *thresholds.items()]:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"classifier_judge: {what}'s threshold must be in [0, 1], got {value}")
    # read once (weights only, as the loaders read it), then loaded by its kind
    payload = torch.load(model_path, map_location="cpu", weights_only=True)
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind == CLASSIFIER_KIND:
        net, names, _ = load_classifier(model_path, device, payload=payload)
        probabilities = predict_proba
    else:  # refused with the file's kind named unless it is a real-data classifier
        net, names, _ = load_real_classifier(model_path, device, payload=payload)
        probabilities = classify
    del payload

    def judge(name: str, images: np.ndarray) -> float:
        if name not in names:
            raise ValueError(
                f"classifier_judge: class {name!r} is not among the classes of {model_path}"
            )
        threshold = thresholds.get(name, min_confidence)
        return float((probabilities(net, images)[:, names.index(name)] >= threshold).mean())

    return judge


def quality_curve(
    generator: str,
    points: Sequence[CurvePoint],
    real: Mapping[str, np.ndarray],
    settings: CurveSettings,
    inception: InceptionFeatures,
    image_size: int | None = None,
    judge: Judge | None = None,
) -> pd.DataFrame:
    """One row per (snapshot, class of ``real``): the columns of ``CURVE_COLUMNS``.
    ``real``: each class's real features (``real_features``). Generated images are
    resized to ``image_size`` (the real images') before their features are taken, as the
    workflow's generation does. ``acceptance``: the ``judge``'s, NaN without one."""
    from hemaflow.train.loop import resize_images

    rows = []
    progress = Progress(f"{generator} curve", len(points) * len(real), "points", logger=log)
    for point in points:
        for name, real_feats in real.items():
            fake = point.sample(name, settings.images_per_class, settings.seed)
            if image_size is not None:
                fake = resize_images(fake, image_size)
            metrics = point_metrics(inception.features(fake), real_feats, settings.seed)
            metrics["acceptance"] = judge(name, fake) if judge and len(fake) else float("nan")
            if len(real_feats) < 2:
                log.warning("%s: %d real held-out images, no metrics", name, len(real_feats))
            rows.append(
                {
                    "generator": generator,
                    "canonical_class": name,
                    "iteration": point.iteration,
                    "seconds": point.seconds,
                    **metrics,
                    "fake_images": len(fake),
                    "real_images": len(real_feats),
                }
            )
            progress.advance(extra=f"{name}, iteration {point.iteration}: KID {metrics['kid']:.4g}")
    progress.finish()
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


# ----------------------------------------------------------------------------- generators


def _image_size(held_out: Mapping[str, np.ndarray]) -> int | None:
    sizes = {np.asarray(images).shape[1] for images in held_out.values() if len(images)}
    if len(sizes) > 1:
        raise ValueError(f"held-out images of several sizes: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def cwgan_curve(
    model_path: str | Path,
    losses_csv: str | Path,
    held_out: Mapping[str, np.ndarray],
    settings: CurveSettings,
    inception: InceptionFeatures | None = None,
    device: str | None = None,
    judge: Judge | None = None,
) -> pd.DataFrame:
    """The curve of a C-WGAN-GP model file (``train_cwgan`` with ``snapshots``) for every
    class it generates; ``held_out``: class -> real held-out uint8 images (of at least
    the model's classes; ``CURVE_SPLITS`` of the pool). A file without snapshots gives
    one point (its final generator). ``judge``: ``quality_curve``'s."""
    from hemaflow.synth.cwgan import generate_cwgan, load_cwgan_snapshots

    generators, names, _ = load_cwgan_snapshots(model_path, device)
    missing = [name for name in names if name not in held_out]
    if missing:
        raise ValueError(
            f"cwgan_curve: no held-out images given for {', '.join(missing)} "
            f"(classes of {model_path})"
        )
    from hemaflow.metrics.inception import InceptionFeatures

    inception = inception or InceptionFeatures(device)
    real = real_features({name: held_out[name] for name in names}, settings, inception)
    seconds = seconds_at(losses_csv, [iteration for iteration, _ in generators])
    points = [
        CurvePoint(
            iteration,
            float(at),
            lambda name, n, seed, g=generator: generate_cwgan(g, names.index(name), n, seed),
        )
        for (iteration, generator), at in zip(generators, seconds)
    ]
    size = _image_size(held_out)
    return quality_curve("cwgan", points, real, settings, inception, size, judge)


def fewshot_curve(
    model_path: str | Path,
    losses_csv: str | Path,
    class_name: str,
    held_out: np.ndarray,
    settings: CurveSettings,
    meta_losses_csv: str | Path | None = None,
    inception: InceptionFeatures | None = None,
    device: str | None = None,
    judge: Judge | None = None,
) -> pd.DataFrame:
    """The curve of a few-shot GAN adapted to ``class_name`` (``adapt_fewshot`` with
    ``snapshots``) against the class's real ``held_out`` images. Time: the adaptation's
    seconds plus, with ``meta_losses_csv``, the whole meta-training's. ``judge``:
    ``quality_curve``'s."""
    from hemaflow.synth.fewshot_adapt import generate_fewshot, load_fewshot_snapshots

    snapshots, _ = load_fewshot_snapshots(model_path, device)
    from hemaflow.metrics.inception import InceptionFeatures

    inception = inception or InceptionFeatures(device)
    real = real_features({class_name: held_out}, settings, inception)
    offset = training_seconds(meta_losses_csv) if meta_losses_csv is not None else 0.0
    seconds = offset + seconds_at(losses_csv, [iteration for iteration, _, _ in snapshots])
    points = [
        CurvePoint(
            iteration,
            float(at),
            lambda name, n, seed, g=generator, c=code: generate_fewshot(g, c, n, seed),
        )
        for (iteration, generator, code), at in zip(snapshots, seconds)
    ]
    size = _image_size({class_name: held_out})
    return quality_curve("fewshot", points, real, settings, inception, size, judge)


def concat_curves(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The curve tables of several generators (CSV files of ``CURVE_COLUMNS``) in one. A
    table written before curves had ``acceptance`` gets it empty (NaN)."""
    tables = [pd.read_csv(path) for path in paths]
    for index, (path, table) in enumerate(zip(paths, tables)):
        if "acceptance" not in table:
            tables[index] = table = table.assign(acceptance=float("nan"))
        missing = [c for c in CURVE_COLUMNS if c not in table]
        if missing:
            raise ValueError(f"{path}: not a quality curve table (no {', '.join(missing)})")
    if not tables:
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    return pd.concat([t[list(CURVE_COLUMNS)] for t in tables], ignore_index=True)
