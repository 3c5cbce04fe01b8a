"""The regression baseline: a deterministic U-Net from the unstained tile to H&E (pix2pix-style L1).

Every evaluation report shows the LDM beside it. MONAI ``BasicUNet`` with a tanh head so the
output lies in [-1, 1] like the targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BaselineConfig:
    """U-Net width per level (six numbers, MONAI BasicUNet's ``features``)."""

    features: tuple[int, int, int, int, int, int] = (32, 32, 64, 128, 256, 32)


class BaselineUNet(nn.Module):
    """``(B, C_in, H, W)`` unstained -> ``(B, 3, H, W)`` H&E in [-1, 1]; H, W multiples of 16."""

    def __init__(self, cfg: BaselineConfig, *, in_channels: int):
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=3, features=tuple(cfg.features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))
