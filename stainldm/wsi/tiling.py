"""Tile grids: pure coordinate math (level-0 pixels), no I/O."""

from __future__ import annotations

import math

import numpy as np


def tile_grid(bbox_xywh: tuple[float, float, float, float], *, tile: float, stride: float) -> np.ndarray:
    """Top-left corners of tiles covering a box, centred on it.

    Args:
        bbox_xywh: the box in level-0 px.
        tile: tile edge in level-0 px.
        stride: distance between neighbouring tiles in level-0 px (``< tile`` overlaps).

    Returns:
        ``(N, 2)`` float array of (x, y), row-major (y, then x).
    """
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be positive")
    x, y, w, h = bbox_xywh
    nx = max(1, math.ceil((w - tile) / stride) + 1) if w > tile else 1
    ny = max(1, math.ceil((h - tile) / stride) + 1) if h > tile else 1
    span_x = (nx - 1) * stride + tile
    span_y = (ny - 1) * stride + tile
    x0 = x + (w - span_x) / 2
    y0 = y + (h - span_y) / 2
    gx, gy = np.meshgrid(x0 + np.arange(nx) * stride, y0 + np.arange(ny) * stride)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def mask_fraction(mask: np.ndarray, *, mask_px: float, xy: tuple[float, float], size: float) -> float:
    """Fraction of a square level-0 region covered by a mask whose pixels are ``mask_px`` level-0 px."""
    x0, y0 = xy[0] / mask_px, xy[1] / mask_px
    x1, y1 = (xy[0] + size) / mask_px, (xy[1] + size) / mask_px
    ix0, iy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    ix1, iy1 = min(mask.shape[1], math.ceil(x1)), min(mask.shape[0], math.ceil(y1))
    if ix1 <= ix0 or iy1 <= iy0:
        return 0.0
    # Weight edge pixels by their overlap with the region.
    wx = np.minimum(np.arange(ix0, ix1) + 1, x1) - np.maximum(np.arange(ix0, ix1), x0)
    wy = np.minimum(np.arange(iy0, iy1) + 1, y1) - np.maximum(np.arange(iy0, iy1), y0)
    covered = float(wy @ mask[iy0:iy1, ix0:ix1].astype(np.float64) @ wx)
    return covered / ((x1 - x0) * (y1 - y0))
