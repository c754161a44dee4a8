"""Inference with a trained white-blood-cell classifier: the model file read back
(``load_classifier``) and class probabilities of uint8 images (``predict_proba``, with
test-time augmentation over the 8 symmetries of the square)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hemaflow.classify.options import FILE_KIND, ClassifierOptions, build_network
from hemaflow.train.amp import autocast
from hemaflow.train.loop import (
    check_images,
    resize_float,
    resolve_device,
    square_symmetry,
    to_model_range,
    uint8_tensor,
)
from hemaflow.train.model_file import read_model_file


@torch.no_grad()
def class_probabilities(
    net: nn.Module, images: torch.Tensor | np.ndarray, batch_size: int, tta: bool, amp: bool
) -> torch.Tensor:
    """Softmax of ``net`` on uint8 NHWC images (an array, or a tensor on any device),
    resized to ``net.image_size``, in eval mode (the mode is restored); on the CPU."""
    device = next(net.parameters()).device
    size = net.image_size
    out = torch.empty((len(images), net.n_outputs), dtype=torch.float32)
    was_training = net.training
    net.eval()
    try:
        for begin in range(0, len(images), batch_size):
            chunk = images[begin : begin + batch_size]
            if isinstance(chunk, np.ndarray):
                chunk = uint8_tensor(chunk)
            chunk = chunk.to(device)
            chunk = resize_float(to_model_range(chunk), (size, size))
            total = torch.zeros((len(chunk), net.n_outputs), device=device)
            for symmetry in range(8) if tta else (0,):
                with autocast(device, amp):
                    logits = net(square_symmetry(chunk, symmetry, "NCHW"))
                total += torch.softmax(logits.float(), dim=1)
            out[begin : begin + len(chunk)] = (total / (8 if tta else 1)).cpu()
    finally:
        net.train(was_training)
    return out


def load_classifier(
    path: str | Path, device: str | torch.device | None = None, payload: Any = None
) -> tuple[nn.Module, list[str], ClassifierOptions]:
    """The classifier (best weights, eval mode, on ``device``; default CUDA if available),
    its class names and options, from a file written by ``train_classifier``
    (``payload``: its contents already read, ``read_model_file``)."""
    payload, options = read_model_file(
        path, FILE_KIND, ClassifierOptions, required=("class_names", "state_dict"), payload=payload
    )
    names = list(payload["class_names"])
    try:
        net = build_network(options, len(names))
        net.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a usable {FILE_KIND} model file ({exc})") from exc
    return net.to(resolve_device(device)).eval(), names, options


def predict_proba(
    net: nn.Module, images_uint8: np.ndarray, batch_size: int = 256, tta: bool = False
) -> np.ndarray:
    """Class probabilities (float32, shape (N, n_classes), rows summing to 1) of uint8
    NHWC images, resized to the network's ``image_size``; eval mode, no gradients,
    float32, on the net's device. ``tta``: the mean of the probabilities over the 8
    symmetries of the square."""
    where = "predict_proba"
    images = check_images(images_uint8, f"{where}: images_uint8")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(tta, bool):
        raise ValueError(f"{where}: tta must be True or False, got {tta!r}")
    if not hasattr(net, "image_size") or not hasattr(net, "n_outputs"):
        raise ValueError(f"{where}: net must be a classifier from build_classifier")
    return class_probabilities(net, images, batch_size, tta, False).numpy()
