"""The standard CIFAR augmentation (He et al. 2016): pad 4 pixels with zeros, crop a random 32 x 32
window, flip left-right with probability 1/2; drawn from a seeded NumPy stream, so a worker's
augmented batch is a pure function of (seed, worker, step)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PAD = 4


def crop_flip(images: torch.Tensor, rng: np.random.Generator, pad: int = PAD) -> torch.Tensor:
    """images (b, C, H, W) -> a new (b, C, H, W) tensor, each image shifted by up to ``pad`` pixels
    in each direction (zeros enter at the border) and mirrored with probability 1/2."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = rng.integers(0, 2 * pad + 1, size=(b, 2))
    flips = rng.random(b) < 0.5
    out = torch.empty_like(images)
    for i in range(b):
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, top:top + h, left:left + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out
