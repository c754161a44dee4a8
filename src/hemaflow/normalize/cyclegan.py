"""CycleGAN stain normalization at inference: a model file written by
``hemaflow.train.cyclegan.train_cyclegan`` read back, and its generators run over a lab's
images. (The training half, options and networks' construction, is in
``hemaflow.train.cyclegan``.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from hemaflow.train.cyclegan import CycleGANOptions, build_generator
from hemaflow.train.loop import (
    check_images,
    from_model_range,
    resize_float,
    resolve_device,
    to_model_range,
    uint8_tensor,
)
from hemaflow.train.model_file import read_model_file


def load_cyclegan(
    model_path: str | Path, device: str | None = None
) -> tuple[nn.Module, nn.Module, CycleGANOptions]:
    """G_AB, G_BA (eval mode, on ``device``; default CUDA if available) and the options
    of a model written by ``train_cyclegan``."""
    torch_device = resolve_device(device)
    payload, options = read_model_file(
        model_path, CycleGANOptions.KIND, CycleGANOptions, mark=None, required=("G_AB", "G_BA")
    )
    generators = []
    for name in ("G_AB", "G_BA"):
        generator = build_generator(options)
        generator.load_state_dict(payload[name])
        generators.append(generator.to(torch_device).eval())
    return generators[0], generators[1], options


@torch.no_grad()
def translate(
    generator: nn.Module, images: np.ndarray, batch_size: int = 64, device: str | None = None
) -> np.ndarray:
    """Run a generator over uint8 NHWC images; returns uint8 NHWC of the same shape.
    Images are resized to the generator's ``image_size`` and the output back to the
    input's size. ``device`` defaults to the generator's; the generator is moved there."""
    images = check_images(images, "translate")
    if device is None:
        torch_device = next(generator.parameters()).device
    else:
        torch_device = torch.device(device)
        generator.to(torch_device)
    size = getattr(generator, "image_size", None)
    height, width = images.shape[1:3]
    out = np.empty_like(images)
    was_training = generator.training
    generator.eval()
    try:
        for begin in range(0, len(images), batch_size):
            chunk = uint8_tensor(images[begin : begin + batch_size])
            batch = to_model_range(chunk.to(torch_device))
            if size is not None:
                batch = resize_float(batch, (size, size))
            result = resize_float(generator(batch).float(), (height, width))
            out[begin : begin + batch_size] = from_model_range(result.clamp(-1, 1)).cpu().numpy()
    finally:
        generator.train(was_training)
    return out
