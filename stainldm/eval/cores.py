"""Held-out cores from the tile store: which tiles make each core, the core assembled from them, its tissue.

Pure coordinate maths over the store's rows (each tile's level-0 ``x, y`` on the unstained slide):

    cores = split_cores(store, "test")                       # (slide_id, core) -> tile indices
    c = assemble_core(store, "s1", "A1", cores[("s1", "A1")], step=2.0)
    tissue = core_tissue(c, mask, step=2.0, slide_mpp=0.5, mask_mpp=8.0)

A core is evaluated in the unstained slide's frame at the store's mpp, pixel for pixel as the
model saw it in training: the real H&E is the store's registered tiles, not a fresh read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class CoreImages:
    """One core in the unstained frame at the store's mpp, assembled from its tiles.

    ``xy`` is the top-left corner in unstained level-0 px; pixel (u, v) covers
    ``xy + (u, v)·step`` level-0 px, exactly as ``read_at_mpp`` and the store's tiles do.
    """

    slide_id: str
    core: str
    xy: tuple[float, float]
    unstained: np.ndarray  # (H, W, C_in)
    real: np.ndarray  # (H, W, 3) uint8
    covered: np.ndarray  # (H, W) bool: under a tile
    tiles_uv: list[tuple[int, int]]  # each tile's top-left (u, v) in core px, in store order

    @property
    def key(self) -> str:
        """``slide_id:core``, the core's name in the report."""
        return f"{self.slide_id}:{self.core}"


def split_cores(store: Any, split: str) -> dict[tuple[str, str], list[int]]:
    """The cores of one split.

    Args:
        store: a :class:`~stainldm.data.store.TileStore`.
        split: ``train``, ``val`` or ``test``.

    Returns:
        ``(slide_id, core)`` -> the indices of its tiles in the split, in store order (cores in the
        order their first tile appears).
    """
    cores: dict[tuple[str, str], list[int]] = {}
    for i in store.indices(split):
        r = store.rows[i]
        cores.setdefault((r.slide_id, r.core), []).append(int(i))
    return cores


def assemble_core(store: Any, slide_id: str, core: str, idx: list[int], *, step: float) -> CoreImages:
    """Places a core's tiles on one canvas.

    Args:
        store: the tile store.
        slide_id, core: the core's names (kept on the result).
        idx: its tile indices (:func:`split_cores`).
        step: unstained level-0 px per store pixel (``tile mpp / slide mpp``).

    Returns:
        The core's unstained and real images (white / zero outside the tiles) and coverage.
    """
    rows = [store.rows[i] for i in idx]
    x0, y0 = min(r.x for r in rows), min(r.y for r in rows)
    t = store.tile_px
    uv = [(round((r.x - x0) / step), round((r.y - y0) / step)) for r in rows]
    w, h = max(u for u, _ in uv) + t, max(v for _, v in uv) + t
    first_unstained, _ = store.read(idx[0])
    unstained = np.zeros((h, w, first_unstained.shape[2]), first_unstained.dtype)
    real = np.full((h, w, 3), 255, np.uint8)
    covered = np.zeros((h, w), bool)
    for i, (u, v) in zip(idx, uv, strict=True):
        tile_unstained, tile_real = store.read(i)
        unstained[v : v + t, u : u + t] = tile_unstained
        real[v : v + t, u : u + t] = tile_real
        covered[v : v + t, u : u + t] = True
    return CoreImages(slide_id, core, (float(x0), float(y0)), unstained, real, covered, uv)


def core_tissue(core: CoreImages, slide_mask: np.ndarray, *, step: float, slide_mpp: float,
                mask_mpp: float) -> np.ndarray:
    """The unstained slide's tissue mask (as prepare computed it) on the core's pixels, under its tiles.

    Args:
        core: the assembled core.
        slide_mask: ``(H, W)`` bool tissue mask of the whole unstained slide at ``mask_mpp``.
        step: unstained level-0 px per core pixel.
        slide_mpp: the unstained slide's level-0 µm/px.
        mask_mpp: the mask's µm/px.

    Returns:
        ``(H, W)`` bool in core pixels: tissue, inside the mask's extent and under a tile.
    """
    h, w = core.covered.shape
    f = step * slide_mpp / mask_mpp  # mask px per core px
    # Each core pixel takes the mask pixel under its centre.
    mx = np.floor((core.xy[0] * slide_mpp / mask_mpp) + (np.arange(w) + 0.5) * f).astype(int)
    my = np.floor((core.xy[1] * slide_mpp / mask_mpp) + (np.arange(h) + 0.5) * f).astype(int)
    inside = ((mx[None, :] >= 0) & (mx[None, :] < slide_mask.shape[1])
              & (my[:, None] >= 0) & (my[:, None] < slide_mask.shape[0]))
    m = slide_mask[np.clip(my, 0, slide_mask.shape[0] - 1)][:, np.clip(mx, 0, slide_mask.shape[1] - 1)]
    return m & inside & core.covered


def tile_patches(img: np.ndarray, core: CoreImages, tile_px: int) -> list[np.ndarray]:
    """``img`` (in core pixels) cut at the core's store tiles: the patches FID/KID compare."""
    return [img[v : v + tile_px, u : u + tile_px] for u, v in core.tiles_uv]
