"""The stained slide's misregistration against the unstained one: drawing it, rendering it, inverting it.

The stained section was re-placed on the scanner (one rigid transform ``A``: rotation about the
slide centre, then a shift) and stretched a little by staining and coverslipping (a smooth elastic
field ``e``, bilinear between nodes every ``step_px`` stained pixels). A stained pixel ``q`` shows
the unstained point ``p = A⁻¹(q + e(q))``; the other direction, ``q = A(p) − e(q)``, is solved by
fixed-point iteration (``e`` is small and smooth, so it contracts at once).

Pure maths over arrays: :func:`draw_misregistration` takes its random draws from the generator
passed in; the point maps work from truth.json's ``transform`` alone, so a reader of a sample needs
nothing else. Coordinates are level-0 pixels, continuous, pixel ``(i, j)`` covering
``[i, i+1) × [j, j+1)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from stainldm.errors import ConfigError, RunError

_BAND = 512  # stained rows rendered at a time (bounded memory)


@dataclass(frozen=True)
class MisregistrationConfig:
    """The stained slide's misregistration against the unstained one (maxima; drawn uniformly).

    Attributes:
        max_rotation_deg: rotation about the slide centre.
        max_translation_um: shift of the slide centre.
        elastic_max_px: largest displacement of the smooth elastic warp.
        elastic_scale_um: spatial scale (Gaussian σ) of the warp.
    """

    max_rotation_deg: float = 3.0
    max_translation_um: float = 200.0
    elastic_max_px: float = 3.0
    elastic_scale_um: float = 150.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_rotation_deg <= 45:
            raise ConfigError(f"misregistration.max_rotation_deg ({self.max_rotation_deg}) must be 0-45")
        if self.max_translation_um < 0 or self.elastic_max_px < 0:
            raise ConfigError("misregistration.max_translation_um and elastic_max_px must not be negative")
        if self.elastic_scale_um <= 0:
            raise ConfigError(f"misregistration.elastic_scale_um ({self.elastic_scale_um}) must be positive")


@dataclass
class Misregistration:
    """One drawn misregistration: the rigid transform ``A`` and the elastic field ``e``.

    Attributes:
        rotation_deg: rotation about ``center_xy``.
        translation_px: ``(2,)`` shift of the centre.
        center_xy: ``(2,)`` rotation centre (the unstained slide's centre).
        matrix: ``(2, 3)`` affine matrix of ``A``: ``A(p) = matrix @ [x, y, 1]``.
        step_px: spacing of the elastic field's nodes, stained pixels.
        field: ``(2, ny, nx)`` dx, dy at stained points ``(i * step_px, j * step_px)``.
        size_wh: the stained canvas.
    """

    rotation_deg: float
    translation_px: np.ndarray
    center_xy: np.ndarray
    matrix: np.ndarray
    step_px: int
    field: np.ndarray
    size_wh: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        """truth.json's ``transform`` (JSON-serialisable; what the point maps read)."""
        return {
            "rotation_deg": self.rotation_deg,
            "translation_px": self.translation_px.tolist(),
            "center_xy": self.center_xy.tolist(),
            "matrix": self.matrix.tolist(),
            "elastic_max_px": float(np.hypot(self.field[0], self.field[1]).max()),
            "model": "stained q = A(p) - e(q), unstained p = A^-1(q + e(q)); A(p) = matrix @ [x, y, 1]; "
                     "e = bilinear interpolation of elastic_field, node (i, j) at stained (i*step_px, j*step_px)",
            "elastic_field": {"step_px": self.step_px, "dx": self.field[0].tolist(), "dy": self.field[1].tolist()},
        }


def draw_misregistration(mis: MisregistrationConfig, *, size_wh: tuple[int, int], centers_xy: np.ndarray,
                         reach_px: float, margin_px: float, mpp: float,
                         rng: np.random.Generator) -> Misregistration:
    """Draws a rigid re-placement and an elastic field that keep every core inside the stained scan.

    Args:
        mis: the maxima.
        size_wh: the unstained canvas.
        centers_xy: ``(N, 2)`` core centres in the unstained frame.
        reach_px: largest distance of any core pixel from its centre.
        margin_px: glass around the grid.
        mpp: µm per pixel of both slides.
        rng: the source of every random draw (rotation, shift, then the field).

    Returns:
        the misregistration; its canvas grows right/down as far as the shifted cores need.

    Raises:
        ConfigError: no shift within ``max_translation_um`` keeps the tissue off the top/left edge.
    """
    w, h = size_wh
    center = np.array([w / 2, h / 2])
    theta = float(rng.uniform(-mis.max_rotation_deg, mis.max_rotation_deg))
    rad = math.radians(theta)
    rot = np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])
    reach = reach_px + mis.elastic_max_px
    pad = max(16.0, margin_px / 4)
    max_t = mis.max_translation_um / mpp
    for _ in range(1000):  # reject shifts that would push tissue off the top/left of the scan
        length, angle = max_t * math.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)  # uniform in a disc
        t = length * np.array([math.cos(angle), math.sin(angle)])
        mapped = (centers_xy - center) @ rot.T + center + t
        if (mapped.min(axis=0) - reach >= pad).all():
            break
    else:
        raise ConfigError(f"grid.margin_um is too small for misregistration.max_translation_um "
                          f"({mis.max_translation_um:g}): tissue would leave the stained scan; raise the margin")
    hi = mapped.max(axis=0) + reach + pad
    stained_wh = (max(w, math.ceil(hi[0])), max(h, math.ceil(hi[1])))
    matrix = np.column_stack([rot, center + t - rot @ center])
    step, field = _elastic_field(mis, stained_wh, mpp, rng)
    return Misregistration(rotation_deg=theta, translation_px=t, center_xy=center, matrix=matrix, step_px=step,
                           field=field, size_wh=stained_wh)


def _elastic_field(mis: MisregistrationConfig, size_wh: tuple[int, int], mpp: float,
                   rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """Node spacing and ``(2, ny, nx)`` nodes of a smooth field whose peak is at most ``elastic_max_px``."""
    sigma = mis.elastic_scale_um / mpp
    step = int(np.clip(8 * round(sigma / 32), 8, 64))
    ny, nx = math.ceil(size_wh[1] / step) + 2, math.ceil(size_wh[0] / step) + 2
    disp = np.zeros((2, ny, nx))
    for scale in (1.0, 2.0):  # two smooth fields of different scale
        noise = rng.standard_normal((2, ny, nx))
        disp += gaussian_filter(noise, sigma=(0, scale * sigma / step, scale * sigma / step), mode="reflect")
    peak = np.hypot(disp[0], disp[1]).max()
    target = mis.elastic_max_px * rng.uniform(0.6, 1.0)
    disp = np.round(disp * (target / peak if peak > 0 else 0.0), 4)
    # Rounding could nudge the peak above the bound; the bilinear field never exceeds its nodes.
    disp *= min(1.0, mis.elastic_max_px / max(np.hypot(disp[0], disp[1]).max(), 1e-12))
    return step, disp


def hat_matrix(coords: np.ndarray, n_nodes: int, step: float) -> np.ndarray:
    """Bilinear (hat-function) interpolation weights for nodes at ``i * step``.

    Args:
        coords: ``(N,)`` positions; those beyond the nodes are clamped to the end nodes.
        n_nodes: number of nodes (at least 2).
        step: node spacing.

    Returns:
        ``(N, n_nodes)`` float64 weights, two non-zero per row, each row summing to 1.
    """
    u = np.clip(coords / step, 0, n_nodes - 1)
    i0 = np.minimum(np.floor(u).astype(int), n_nodes - 2)
    w1 = u - i0
    out = np.zeros((len(coords), n_nodes), dtype=np.float64)
    out[np.arange(len(coords)), i0] = 1 - w1
    out[np.arange(len(coords)), i0 + 1] = w1
    return out


def render_stained(he: np.ndarray, tr: Misregistration, glass_rgb: tuple[int, int, int]) -> np.ndarray:
    """The stained slide: each stained pixel centre ``q`` samples ``he`` at ``A⁻¹(q + e(q))`` (bilinear).

    Args:
        he: ``(H, W, 3)`` uint8 H&E in the unstained frame.
        tr: the misregistration.
        glass_rgb: colour of what lies outside ``he``.

    Returns:
        ``(H', W', 3)`` uint8, ``(W', H') = tr.size_wh``.
    """
    ws, hs = tr.size_wh
    out = np.empty((hs, ws, 3), dtype=np.uint8)
    # float32 maps: 3e-4 px rounding, far below cv2.remap's own 1/32 px interpolation grid.
    qx = (np.arange(ws) + 0.5).astype(np.float32)
    wx = hat_matrix(qx, tr.field.shape[2], tr.step_px).astype(np.float32)
    fx, fy = (tr.field[k].astype(np.float32) @ wx.T for k in (0, 1))  # (ny, ws)
    inv = np.linalg.inv(tr.matrix[:, :2]).astype(np.float32)
    shift = tr.matrix[:, 2]
    for y0 in range(0, hs, _BAND):
        qy = np.arange(y0, min(hs, y0 + _BAND)) + 0.5
        wy = hat_matrix(qy, tr.field.shape[1], tr.step_px).astype(np.float32)
        zx = wy @ fx + (qx - np.float32(shift[0] + 0.0))  # q + e(q) - shift, (band, ws)
        zy = wy @ fy + (qy[:, None] - shift[1]).astype(np.float32)
        px = inv[0, 0] * zx + inv[0, 1] * zy - np.float32(0.5)  # cv2 indexes pixel centres at integers
        py = inv[1, 0] * zx + inv[1, 1] * zy - np.float32(0.5)
        out[y0 : y0 + len(qy)] = cv2.remap(he, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                           borderValue=tuple(float(v) for v in glass_rgb))
    return out


# ---------------------------------------------------------------------------------------------
# Point mapping between the two slides (works from truth.json's "transform")
# ---------------------------------------------------------------------------------------------
def elastic_displacement(points_xy: np.ndarray, transform: Mapping[str, Any]) -> np.ndarray:
    """The elastic field ``e(q)`` at stained points.

    Args:
        points_xy: ``(N, 2)`` stained level-0 coordinates.
        transform: truth.json's ``transform`` (needs ``elastic_field``).

    Returns:
        ``(N, 2)`` displacement in pixels.
    """
    ef = transform["elastic_field"]
    step = float(ef["step_px"])
    q = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    coords = np.stack([q[:, 1] / step, q[:, 0] / step])
    return np.column_stack([map_coordinates(np.asarray(ef[k], dtype=np.float64), coords, order=1, mode="nearest")
                            for k in ("dx", "dy")])


def stained_to_unstained(points_xy: np.ndarray, transform: Mapping[str, Any]) -> np.ndarray:
    """Maps stained-slide points to the unstained slide: ``p = A⁻¹(q + e(q))``.

    Args:
        points_xy: ``(N, 2)`` stained level-0 coordinates.
        transform: truth.json's ``transform``.

    Returns:
        ``(N, 2)`` unstained level-0 coordinates.
    """
    q = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(transform["matrix"], dtype=np.float64)
    z = q + elastic_displacement(q, transform) - m[:, 2]
    return z @ np.linalg.inv(m[:, :2]).T


def unstained_to_stained(points_xy: np.ndarray, transform: Mapping[str, Any], *, tol: float = 1e-9,
                         max_iter: int = 100) -> np.ndarray:
    """Maps unstained-slide points to the stained slide by solving ``q = A(p) − e(q)``.

    Fixed-point iteration; it contracts because ``e`` is small and smooth (|∇e| ≪ 1).

    Args:
        points_xy: ``(N, 2)`` unstained level-0 coordinates.
        transform: truth.json's ``transform``.
        tol: stop when no point moves more than this (px).
        max_iter: iteration limit.

    Returns:
        ``(N, 2)`` stained level-0 coordinates.

    Raises:
        RunError: the iteration did not converge (the field is not a small smooth warp).
    """
    p = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(transform["matrix"], dtype=np.float64)
    ap = p @ m[:, :2].T + m[:, 2]
    q = ap.copy()
    for _ in range(max_iter):
        q_new = ap - elastic_displacement(q, transform)
        moved = np.abs(q_new - q).max(initial=0.0)
        q = q_new
        if moved < tol:
            return q
    raise RunError(f"unstained_to_stained: fixed-point iteration did not converge (last step {moved:.3g} px); "
                   "the elastic field is too large or rough to invert")
