"""The per-core transform (affine + a bilinear field of pre-shifts) and warped reading through it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from stainldm.wsi import _resample
from stainldm.wsi.reader import SlideReader

STAGES = ("core", "tiles", "deform")  # the per-core stages after the slide-level one, coarse to fine


@dataclass
class StageMotion:
    """How far one per-core stage moved a core (stained level-0 px, over the core's points).

    Attributes:
        proposed_px: median distance the stage's own estimate would have moved the points.
        moved_px: median distance it did move them (0 when its check did not confirm the move).
        offset_xy: median displacement vector of the proposal (its rigid part: what a biased
            stage gets wrong), stained level-0 px.
        kept: whether the stage's check confirmed its move.
        sim_before, sim_after: the stage's own (robust) similarity of the coarser result and of
            its proposal, at its resolution.
    """

    proposed_px: float = 0.0
    moved_px: float = 0.0
    offset_xy: tuple[float, float] = (0.0, 0.0)
    kept: bool = True
    sim_before: float = float("nan")
    sim_after: float = float("nan")

    def to_json(self) -> dict:
        return {"proposed_px": round(self.proposed_px, 4), "moved_px": round(self.moved_px, 4),
                "offset_xy": [round(float(v), 4) for v in self.offset_xy], "kept": self.kept,
                "sim_before": _num(self.sim_before), "sim_after": _num(self.sim_after)}

    @classmethod
    def from_json(cls, data: dict) -> StageMotion:
        return cls(float(data.get("proposed_px", 0.0)), float(data.get("moved_px", 0.0)),
                   tuple(float(v) for v in data.get("offset_xy", (0.0, 0.0))), bool(data.get("kept", True)),
                   _float(data.get("sim_before")), _float(data.get("sim_after")))


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def _float(v) -> float:
    return float("nan") if v is None else float(v)


@dataclass
class CoreTransform:
    """Unstained -> stained mapping of one core: affine plus a grid of residual pre-shifts.

    Attributes:
        matrix: 3×3 affine, unstained level-0 px -> stained level-0 px.
        grid_x, grid_y: node coordinates (unstained level-0 px) of the shift grid: tile centres,
            or the denser grid of the deformable stage.
        shifts: ``(len(grid_y), len(grid_x), 2)`` pre-shifts (dx, dy) in unstained level-0 px.
        sim_before, sim_after: per-tile similarity (gradient NCC) before/after refinement.
        tile_x, tile_y: tile centres of ``sim_before``/``sim_after`` (default: ``grid_x``/``grid_y``).
        motion: per stage (``core``, ``tiles``, ``deform``), how far it moved the core.
        disagree_px: how far the stages' estimates of the core's position lie from the final one,
            the largest over stages, each in its own pixels (``RegisterConfig.max_disagreement_px``).
    """

    matrix: np.ndarray
    grid_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grid_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    shifts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))
    sim_before: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    sim_after: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    tile_x: np.ndarray | None = None
    tile_y: np.ndarray | None = None
    motion: dict[str, StageMotion] = field(default_factory=dict)
    disagree_px: float = 0.0

    @property
    def sim_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Tile centres (x, y) of ``sim_before``/``sim_after``."""
        return (self.grid_x if self.tile_x is None else self.tile_x,
                self.grid_y if self.tile_y is None else self.tile_y)

    def displacement(self, xy: np.ndarray) -> np.ndarray:
        """Bilinearly interpolated pre-shift at unstained points ``xy`` (N, 2)."""
        if self.shifts.size == 0:
            return np.zeros_like(xy, dtype=np.float64)
        out = np.empty((len(xy), 2))
        fx = _grid_coord(self.grid_x, xy[:, 0])
        fy = _grid_coord(self.grid_y, xy[:, 1])
        for k in range(2):
            out[:, k] = ndi.map_coordinates(self.shifts[..., k], [fy, fx], order=1, mode="nearest")
        return out

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Maps unstained level-0 points (N, 2) to stained level-0 points (N, 2)."""
        xy = np.asarray(xy, dtype=np.float64)
        p = xy + self.displacement(xy)
        return p @ self.matrix[:2, :2].T + self.matrix[:2, 2]

    def to_json(self) -> dict:
        out = {"matrix": self.matrix.tolist(), "grid_x": self.grid_x.tolist(), "grid_y": self.grid_y.tolist(),
               "shifts": np.round(self.shifts, 4).tolist()}
        if self.tile_x is not None:
            out["tile_x"], out["tile_y"] = self.tile_x.tolist(), self.tile_y.tolist()
        if self.motion:
            out["motion"] = {k: v.to_json() for k, v in self.motion.items()}
            out["disagree_px"] = round(self.disagree_px, 4)
        return out

    @classmethod
    def from_json(cls, data: dict) -> CoreTransform:
        """Reads :meth:`to_json`'s dict; files written before the deformable stage (no
        ``tile_x``/``motion``) load too."""
        shifts = np.asarray(data.get("shifts", []), dtype=np.float64)
        nx = len(data.get("grid_x", []))
        tf = cls(np.asarray(data["matrix"], dtype=np.float64), np.asarray(data.get("grid_x", []), dtype=np.float64),
                 np.asarray(data.get("grid_y", []), dtype=np.float64),
                 shifts.reshape(-1, nx or 0, 2) if shifts.size else np.zeros((0, 0, 2)))
        if "tile_x" in data:
            tf.tile_x = np.asarray(data["tile_x"], dtype=np.float64)
            tf.tile_y = np.asarray(data["tile_y"], dtype=np.float64)
        tf.motion = {k: StageMotion.from_json(v) for k, v in data.get("motion", {}).items()}
        tf.disagree_px = float(data.get("disagree_px", 0.0))
        return tf


def _grid_coord(grid: np.ndarray, v: np.ndarray) -> np.ndarray:
    if len(grid) == 1:
        return np.zeros_like(v)
    return np.interp(v, grid, np.arange(len(grid)))


def core_points(bbox_xywh: tuple[float, float, float, float], n: int = 15) -> np.ndarray:
    """An ``n×n`` grid of unstained level-0 points inside the ellipse inscribed in a core's box
    (where its tissue is), ``(M, 2)``: the points stage motions are measured on."""
    x, y, w, h = bbox_xywh
    u = (np.arange(n) + 0.5) / n
    gx, gy = np.meshgrid(x + u * w, y + u * h)
    inside = ((gx - x - w / 2) / (w / 2)) ** 2 + ((gy - y - h / 2) / (h / 2)) ** 2 <= 0.9
    return np.column_stack([gx[inside], gy[inside]])


def motion_between(a: CoreTransform, b: CoreTransform, pts: np.ndarray) -> tuple[float, tuple[float, float]]:
    """Median distance and median displacement vector (stained level-0 px) from ``a`` to ``b``."""
    d = b.map_points(pts) - a.map_points(pts)
    med = np.median(d, axis=0)
    return float(np.median(np.hypot(d[:, 0], d[:, 1]))), (float(med[0]), float(med[1]))


# ---------------------------------------------------------------------------------------------
# Warped reading
# ---------------------------------------------------------------------------------------------
def grid_points(xy: tuple[float, float], size_wh: tuple[int, int], step: float) -> np.ndarray:
    """Level-0 centres of an output grid: ``(H, W, 2)`` with (x, y) = xy + (u+0.5, v+0.5)·step."""
    w, h = size_wh
    u = xy[0] + (np.arange(w) + 0.5) * step
    v = xy[1] + (np.arange(h) + 0.5) * step
    gx, gy = np.meshgrid(u, v)
    return np.stack([gx, gy], axis=-1)


def sample_points(slide: SlideReader, pts: np.ndarray, *, step: float) -> np.ndarray:
    """Samples ``slide`` at level-0 points ``pts`` (H, W, 2), anti-aliased for a sampling ``step``.

    Args:
        slide: the slide to sample.
        pts: level-0 coordinates of every output pixel's centre.
        step: level-0 pixels of ``slide`` between neighbouring output pixels (sets the level and
            the anti-aliasing blur).
    """
    level = slide.best_level_for_downsample(step)
    ds = slide.level_downsamples[level]
    s = step / ds
    pad = math.ceil(3 * s) + 3
    q = pts / ds - 0.5  # level pixel coordinates (pixel-centre convention)
    x0 = math.floor(float(q[..., 0].min())) - pad
    y0 = math.floor(float(q[..., 1].min())) - pad
    x1 = math.ceil(float(q[..., 0].max())) + pad
    y1 = math.ceil(float(q[..., 1].max())) + pad
    src = slide.read_region((round(x0 * ds), round(y0 * ds)), (x1 - x0 + 1, y1 - y0 + 1), level)
    mx = (q[..., 0] - x0).astype(np.float32)
    my = (q[..., 1] - y0).astype(np.float32)
    return _resample.remap(src, mx, my, blur_sigma=max(0.0, (s - 1) / 2), background=slide.background)


def sample_transformed(slide: SlideReader, transform: CoreTransform, xy: tuple[float, float],
                       size_wh: tuple[int, int], *, step: float) -> np.ndarray:
    """The stained ``slide`` on an unstained-frame grid starting at ``xy`` with ``step`` unstained
    level-0 px per output pixel."""
    pts = grid_points(xy, size_wh, step)
    mapped = transform.map_points(pts.reshape(-1, 2)).reshape(pts.shape)
    scale = math.sqrt(abs(np.linalg.det(transform.matrix[:2, :2])))
    return sample_points(slide, mapped, step=step * scale)
