"""What every stain normalizer offers, and the one that changes nothing."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class StainNormalizer(Protocol):
    """Learns a target stain from target images (``fit``), then maps uint8 NHWC images
    onto it (``transform``, same shape, uint8)."""

    name: str

    def fit(self, target_images: np.ndarray) -> StainNormalizer: ...

    def transform(self, images: np.ndarray) -> np.ndarray: ...

    def to_dict(self) -> dict[str, Any]: ...


class IdentityNormalizer:
    """Method ``none``: the baseline without normalization. ``transform`` returns its
    input unchanged (the same array object when it is already uint8)."""

    name = "none"

    def fit(self, target_images: np.ndarray) -> IdentityNormalizer:
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(images, dtype=np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IdentityNormalizer:
        if values.get("method") != cls.name:
            raise ValueError(f"not an identity normalizer: method {values.get('method')!r}")
        return cls()
