"""Image-quality metrics and a named registry (in the style of stylegan2-ada's ``metric_main``).

``METRICS`` maps a metric name to a function ``fn(inputs: MetricInputs) -> dict[str, float]``;
:func:`compute_metrics` builds one :class:`MetricInputs` (which extracts Inception features at
most once per set, lazily) and runs the requested metrics:

==================  ==========================================  ==============================
name                result keys                                 needs
==================  ==========================================  ==============================
``fid``             ``fid``                                     real + fake (images/features)
``kid``             ``kid``, ``kid_std``                        real + fake (images/features)
``precision``       ``precision`` (k-NN, k=3)                   real + fake (images/features)
``recall``          ``recall`` (k-NN, k=3)                      real + fake (images/features)
``lpips_diversity`` ``lpips_diversity`` (mean pairwise LPIPS)    fake images
``ssim``            ``ssim`` (mean over pairs)                  paired real/fake images
``psnr``            ``psnr`` (mean over pairs, dB; inf if any    paired real/fake images
                    pair is identical)
==================  ==========================================  ==============================

New metrics are added with :func:`register_metric`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hemaflow.metrics._weights import MissingWeightsError
from hemaflow.metrics.fid import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    precision_recall,
)
from hemaflow.metrics.image import psnr, ssim

if TYPE_CHECKING:
    from hemaflow.metrics.inception import InceptionFeatures
    from hemaflow.metrics.lpips import LPIPS

# the networks' names load their modules (and torch, about 2 s) on first use, so that a
# job that imports this package for a table or the feature store starts without torch
_LAZY = {
    "InceptionFeatures": "hemaflow.metrics.inception",
    "LPIPS": "hemaflow.metrics.lpips",
    "get_lpips": "hemaflow.metrics.lpips",
    "lpips_diversity": "hemaflow.metrics.lpips",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METRICS",
    "InceptionFeatures",
    "LPIPS",
    "MetricInputs",
    "MissingWeightsError",
    "compute_metrics",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "get_lpips",
    "is_valid_metric",
    "kid_from_features",
    "list_valid_metrics",
    "lpips_diversity",
    "precision_recall",
    "psnr",
    "register_metric",
    "ssim",
]


@dataclass
class MetricInputs:
    """What the metric functions see: the two sets (images and/or features) and options.

    ``real_features()``/``fake_features()`` extract Inception features on first use and cache
    them; ``cache`` holds results shared by several metrics (precision and recall)."""

    real_images: np.ndarray | Sequence[np.ndarray] | None = None
    fake_images: np.ndarray | Sequence[np.ndarray] | None = None
    real_feats: np.ndarray | None = None
    fake_feats: np.ndarray | None = None
    inception: InceptionFeatures | None = None
    lpips_model: LPIPS | None = None
    device: Any = None
    batch_size: int = 50
    fid_method: str = "eig"
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    lpips_pairs: int = 1000
    seed: int = 0
    cache: dict[str, Any] = field(default_factory=dict)

    def _extractor(self) -> InceptionFeatures:
        if self.inception is None:
            from hemaflow.metrics.inception import InceptionFeatures

            self.inception = InceptionFeatures(self.device, self.batch_size)
        return self.inception

    def real_features(self) -> np.ndarray:
        if self.real_feats is None:
            if self.real_images is None:
                raise ValueError("this metric needs real images or real features")
            self.real_feats = self._extractor().features(self.real_images)
        return self.real_feats

    def fake_features(self) -> np.ndarray:
        if self.fake_feats is None:
            if self.fake_images is None:
                raise ValueError("this metric needs fake images or fake features")
            self.fake_feats = self._extractor().features(self.fake_images)
        return self.fake_feats

    def paired_images(self) -> tuple[np.ndarray, np.ndarray]:
        if self.real_images is None or self.fake_images is None:
            raise ValueError("paired metrics (ssim, psnr) need real and fake images")
        real, fake = np.asarray(self.real_images), np.asarray(self.fake_images)
        if real.shape != fake.shape:
            raise ValueError(
                f"paired metrics need real and fake batches of one shape: {real.shape} vs "
                f"{fake.shape}"
            )
        return real, fake


MetricFn = Callable[[MetricInputs], dict[str, float]]
METRICS: dict[str, MetricFn] = {}


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator adding ``fn(inputs) -> dict[str, float]`` to :data:`METRICS` under ``name``."""

    def decorate(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        return fn

    return decorate


def is_valid_metric(name: str) -> bool:
    return name in METRICS


def list_valid_metrics() -> list[str]:
    return list(METRICS)


@register_metric("fid")
def _fid(inputs: MetricInputs) -> dict[str, float]:
    value = fid_from_features(
        inputs.real_features(), inputs.fake_features(), method=inputs.fid_method
    )
    return {"fid": value}


@register_metric("kid")
def _kid(inputs: MetricInputs) -> dict[str, float]:
    mean, std = kid_from_features(
        inputs.real_features(),
        inputs.fake_features(),
        num_subsets=inputs.kid_subsets,
        max_subset_size=inputs.kid_subset_size,
        seed=inputs.seed,
    )
    return {"kid": mean, "kid_std": std}


def _precision_recall(inputs: MetricInputs) -> tuple[float, float]:
    if "precision_recall" not in inputs.cache:
        inputs.cache["precision_recall"] = precision_recall(
            inputs.real_features(), inputs.fake_features(), k=inputs.pr_k
        )
    return inputs.cache["precision_recall"]


@register_metric("precision")
def _precision(inputs: MetricInputs) -> dict[str, float]:
    return {"precision": _precision_recall(inputs)[0]}


@register_metric("recall")
def _recall(inputs: MetricInputs) -> dict[str, float]:
    return {"recall": _precision_recall(inputs)[1]}


@register_metric("lpips_diversity")
def _lpips_diversity(inputs: MetricInputs) -> dict[str, float]:
    if inputs.fake_images is None:
        raise ValueError("lpips_diversity needs fake images")
    from hemaflow.metrics.lpips import get_lpips, lpips_diversity

    model = inputs.lpips_model if inputs.lpips_model is not None else get_lpips(inputs.device)
    value = lpips_diversity(
        np.asarray(inputs.fake_images), num_pairs=inputs.lpips_pairs, seed=inputs.seed, model=model
    )
    return {"lpips_diversity": value}


@register_metric("ssim")
def _ssim(inputs: MetricInputs) -> dict[str, float]:
    return {"ssim": float(ssim(*inputs.paired_images()).mean())}


@register_metric("psnr")
def _psnr(inputs: MetricInputs) -> dict[str, float]:
    return {"psnr": float(psnr(*inputs.paired_images()).mean())}


def compute_metrics(
    names: str | Iterable[str],
    real_images: np.ndarray | Sequence[np.ndarray] | None = None,
    fake_images: np.ndarray | Sequence[np.ndarray] | None = None,
    *,
    real_features: np.ndarray | None = None,
    fake_features: np.ndarray | None = None,
    device: Any = None,
    batch_size: int = 50,
    inception: InceptionFeatures | None = None,
    lpips_model: LPIPS | None = None,
    fid_method: str = "eig",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    lpips_pairs: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Compute the named metrics of a fake set against a real set.

    Images are uint8 RGB ``(N, H, W, 3)`` arrays (or, for the feature metrics, sequences of
    ``(H, W, 3)`` arrays of any size). Precomputed Inception features may be passed instead
    of (or besides) images; features are extracted once per set and shared by ``fid``,
    ``kid``, ``precision`` and ``recall``. Returns ``{key: float}`` in the order requested
    (``kid`` adds ``kid_std``). ``fid_method="eig"`` gives the same FID as the standard
    ``"sqrtm"`` much faster (see :func:`frechet_distance`)."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {list_valid_metrics()}")
    inputs = MetricInputs(
        real_images=real_images,
        fake_images=fake_images,
        real_feats=None if real_features is None else np.asarray(real_features, np.float64),
        fake_feats=None if fake_features is None else np.asarray(fake_features, np.float64),
        inception=inception,
        lpips_model=lpips_model,
        device=device,
        batch_size=batch_size,
        fid_method=fid_method,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        pr_k=pr_k,
        lpips_pairs=lpips_pairs,
        seed=seed,
    )
    results: dict[str, float] = {}
    for name in dict.fromkeys(names):
        results.update({key: float(value) for key, value in METRICS[name](inputs).items()})
    return results
