"""Random affine transforms and flips applied to whole batches of images, on their device.

torchvision's v2 transforms draw one set of parameters per call, so on a batch every image would
move the same way; per-sample parameters on a batch need the sampling grid built by hand
(``affine_grid`` + ``grid_sample``), which is what this module does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn


class BatchAugment(nn.Module):
    """Per-sample random translation, rotation, scaling and horizontal flip of ``(N, C, H, W)`` images.

    Args:
        translate: maximum shift as a fraction of width/height (0.1 = up to 10 %).
        rotate: maximum rotation in degrees, either direction.
        scale: maximum relative zoom (0.1 = factor in [0.9, 1.1]).
        hflip: flip each image left-right with probability 0.5 (sensible for clothes, not digits).

    Pixels uncovered by the transform are 0 (black, the background of MNIST-like images).
    """

    def __init__(self, translate: float = 0.0, rotate: float = 0.0, scale: float = 0.0, hflip: bool = False) -> None:
        super().__init__()
        self.translate, self.rotate, self.scale, self.hflip = translate, rotate, scale, hflip

    @property
    def active(self) -> bool:
        return bool(self.translate or self.rotate or self.scale or self.hflip)

    def forward(self, images: Tensor) -> Tensor:
        if self.hflip:
            flip = torch.rand(len(images), device=images.device) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        if not (self.translate or self.rotate or self.scale):
            return images
        n, device = len(images), images.device

        def uniform(limit: float) -> Tensor:
            return (torch.rand(n, device=device) * 2 - 1) * limit

        angle = uniform(math.radians(self.rotate))
        zoom = 1 + uniform(self.scale)
        # theta maps output coordinates to input coordinates (in [-1, 1]): the inverse transform
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos, -sin, uniform(2 * self.translate)], 1), torch.stack([sin, cos, uniform(2 * self.translate)], 1)], 1
        )
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
