"""CycleGAN's history of generated images (Shrivastava et al. 2017): the critic sees a
mix of the newest fakes and older ones, which damps oscillation between the players.

The pool draws from its own ``torch.Generator``, and ``state_dict`` holds both the stored
images and that generator's state, so a resumed run makes exactly the same choices."""

from __future__ import annotations

from typing import Any

import torch


class ImagePool:
    """Up to ``size`` past fakes. ``query(images)`` returns a batch of the same shape:
    while the pool fills, the new images themselves; afterwards each image is, with
    probability 1/2, swapped for a random stored one (which the new image replaces)."""

    def __init__(self, size: int = 50, seed: int = 0):
        if size < 0:
            raise ValueError(f"ImagePool: size must be >= 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            image = image.float().unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
                continue
            # draws come from the pool's own CPU generator, never the global RNG
            if torch.rand(1, generator=self.generator).item() > 0.5:
                slot = int(torch.randint(0, self.size, (1,), generator=self.generator).item())
                out.append(self.images[slot].clone())
                self.images[slot] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, dim=0).to(images.dtype)

    def state_dict(self) -> dict[str, Any]:
        stored = torch.cat(self.images).cpu() if self.images else torch.empty(0)
        return {"size": self.size, "images": stored, "generator": self.generator.get_state()}

    def load_state_dict(
        self, state: dict[str, Any], device: torch.device | str | None = None
    ) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"ImagePool: state has size {state['size']}, this pool {self.size}")
        stored = state["images"]
        if device is not None:
            stored = stored.to(device)
        self.images = [stored[k : k + 1].clone() for k in range(stored.shape[0])]
        self.generator.set_state(state["generator"].cpu())
