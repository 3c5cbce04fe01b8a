"""Validation helpers: image-quality metrics against the real H&E and sample grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stainldm.files import atomic_write_png


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in [-1, 1] -> ``(B, H, W, 3)`` uint8."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def psnr_ssim(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over a batch, on uint8 RGB (data range 255, SSIM per channel)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    p, t = to_uint8(pred), to_uint8(target)
    psnr = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(t, p, strict=True)]
    ssim = [structural_similarity(a, b, data_range=255, channel_axis=2) for a, b in zip(t, p, strict=True)]
    return float(np.mean(psnr)), float(np.mean(ssim))


def input_preview(x: torch.Tensor) -> np.ndarray:
    """Normalised unstained inputs ``(B, C, H, W)`` in ~[-1, 1] -> ``(B, H, W, 3)`` uint8 gray/false colour."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    if x.shape[1] == 1:
        return np.repeat(x.transpose(0, 2, 3, 1), 3, axis=3)
    if x.shape[1] == 2:  # two channels: green / magenta false colour
        return np.stack([x[:, 1], x[:, 0], x[:, 1]], axis=3)
    return x[:, :3].transpose(0, 2, 3, 1)


def sample_grid(x: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, path: Path, *, rows: int = 8) -> None:
    """Writes a PNG: one row per tile, columns unstained | generated | real H&E."""

    n = min(rows, x.shape[0])
    cols = [input_preview(x[:n]), to_uint8(pred[:n]), to_uint8(target[:n])]
    grid = np.concatenate([np.concatenate(list(c), axis=0) for c in cols], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_png(path, grid)
