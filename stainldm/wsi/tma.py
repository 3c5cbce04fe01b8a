"""TMA dearraying: find the cores on a tissue mask, fit the grid, label them as QuPath does.

    cores, grid = dearray(mask, mask_mpp=4.0)       # pure: mask in, cores in level-0 px out
    write_cores_geojson(cores, "cores.geojson")     # QuPath: File > Import objects

The grid fit is pure geometry on core centroids: the rotation is the dominant direction of the
vectors between nearest neighbours (modulo 90°), the spacing their median length; rotated
centroids are clustered into rows and columns, indexed by their distance from the first in units
of spacing, so a whole missing row or column still leaves the others' labels right. Labels are a
row letter and a column number from 1 (``A1, A2, … B1``). A grid position inside the fitted
array with no tissue is reported ``missing``; several pieces in one position ``fragmented``; a
piece much larger than a core, or spanning two positions, ``merged``.

A slide that is not a TMA (fewer than four pieces, or pieces that do not form a grid) yields one
region covering all tissue, named ``tissue``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from stainldm.errors import InputError
from stainldm.files import atomic_write_csv, atomic_write_json


@dataclass(frozen=True)
class Core:
    """One TMA core (or the single tissue region of a non-TMA slide), in level-0 pixels.

    Attributes:
        id: QuPath-style label (``"A1"``), or ``"tissue"`` for a non-TMA slide.
        row, col: 0-based grid position (-1 for a non-TMA region).
        center_xy: centroid of the core's tissue (or the grid position when missing).
        diameter_px: equivalent diameter of its tissue area (expected diameter when missing).
        bbox_xywh: bounding box of its tissue.
        status: ``"ok"``, ``"missing"``, ``"fragmented"`` or ``"merged"``.
        area_px: tissue area in level-0 pixels.
        pieces: number of connected tissue pieces assigned to it.
    """

    id: str
    row: int
    col: int
    center_xy: tuple[float, float]
    diameter_px: float
    bbox_xywh: tuple[int, int, int, int]
    status: str
    area_px: float
    pieces: int


@dataclass(frozen=True)
class Grid:
    """The fitted array: rotation (degrees, counter-clockwise), spacing and size in level-0 px."""

    rotation_deg: float
    spacing_px: float
    rows: int
    cols: int
    is_tma: bool


def row_label(row: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA (QuPath's scheme for long arrays)."""
    label = ""
    row += 1
    while row:
        row, rem = divmod(row - 1, 26)
        label = chr(65 + rem) + label
    return label


def dearray(mask: np.ndarray, *, mask_mpp: float, level0_mpp: float | None = None,
            min_core_fraction: float = 0.25) -> tuple[list[Core], Grid]:
    """Finds and labels the cores of a TMA on a tissue mask.

    Args:
        mask: ``(H, W)`` bool tissue mask at ``mask_mpp``.
        mask_mpp: µm per mask pixel.
        level0_mpp: µm per level-0 pixel of the slide, to return coordinates in level-0 pixels;
            None returns mask pixels.
        min_core_fraction: pieces smaller than this fraction of the median piece are fragments
            (assigned to the nearest grid position, never a core of their own).

    Returns:
        the cores sorted by (row, col), including ``missing`` positions, and the fitted grid.

    Raises:
        InputError: the mask has no tissue at all.
    """
    scale = mask_mpp / level0_mpp if level0_mpp else 1.0
    labels, n = ndi.label(mask)
    if n == 0:
        raise InputError("no tissue found on the slide (empty tissue mask); check the slide, or lower "
                         "tissue.sensitivity/min_area_um2 in the config")
    idx = np.arange(1, n + 1)
    areas = ndi.sum_labels(np.ones_like(labels), labels, idx).astype(float)
    centroids = np.array(ndi.center_of_mass(np.ones_like(labels), labels, idx))[:, ::-1]  # (n, 2) x, y
    boxes = ndi.find_objects(labels)
    typical = float(np.median(areas[areas >= 0.25 * areas.max()]))
    main = areas >= min_core_fraction * typical
    whole = (areas >= 0.6 * typical) & (areas <= 1.5 * typical)  # fit on whole, single cores only
    fit = _fit_grid(centroids[whole], areas[whole]) if whole.sum() >= 4 else _fit_grid(centroids[main], areas[main])
    if fit is None:
        return [_single_region(mask, scale)], Grid(0.0, 0.0, 1, 1, is_tma=False)
    theta, spacing, origin = fit
    uv = (centroids - origin) @ _rotation(-theta).T / spacing  # grid units in the rotated frame
    rc = np.rint(uv[:, ::-1]).astype(int)  # (row, col) per piece
    rc -= rc[main].min(axis=0)
    rows, cols = (rc[main].max(axis=0) + 1).tolist()
    # Least-squares affine lattice through the whole cores that sit on it: xy = A @ (col, row) + b.
    on_lattice = whole & (np.abs(uv - np.rint(uv)).max(axis=1) < 0.3)
    design = np.column_stack([rc[on_lattice][:, 1], rc[on_lattice][:, 0], np.ones(int(on_lattice.sum()))])
    coef, *_ = np.linalg.lstsq(design, centroids[on_lattice], rcond=None)  # (3, 2)
    expected_area = float(np.median(areas[main]))
    # Typical core radius: median enclosing circle of whole cores (tissue may not fill a core).
    radius = float(np.median([_enclosing_radius(labels[boxes[i]] == i + 1) for i in np.flatnonzero(on_lattice)]))
    cores = []
    for r in range(rows):
        for c in range(cols):
            members = np.flatnonzero((rc[:, 0] == r) & (rc[:, 1] == c))
            label = f"{row_label(r)}{c + 1}"
            if len(members) == 0:
                centre = np.array([c, r, 1.0]) @ coef
                d = 2 * math.sqrt(expected_area / math.pi)
                cores.append(Core(label, r, c, _xy(centre, scale), d * scale,
                                  _box_around(centre, d, scale), "missing", 0.0, 0))
                continue
            area = float(areas[members].sum())
            cx, cy = (centroids[members] * areas[members, None]).sum(axis=0) / area
            x0 = min(boxes[i][1].start for i in members)
            y0 = min(boxes[i][0].start for i in members)
            x1 = max(boxes[i][1].stop for i in members)
            y1 = max(boxes[i][0].stop for i in members)
            d = 2 * math.sqrt(area / math.pi)
            circle = _fit_circle(np.isin(labels[y0:y1, x0:x1], members + 1), radius)
            if circle is not None:  # the core's cut edge is a circle: its centre beats the centroid
                cx, cy, d = x0 + circle[0], y0 + circle[1], 2 * circle[2]
            status = "fragmented" if len(members) > 1 or not main[members].any() else "ok"
            if area > 1.6 * expected_area or max(x1 - x0, y1 - y0) > 1.45 * spacing:
                status = "merged"
            cores.append(Core(label, r, c, _xy((cx, cy), scale), d * scale,
                              (round(x0 * scale), round(y0 * scale), round((x1 - x0) * scale),
                               round((y1 - y0) * scale)), status, area * scale * scale, len(members)))
    theta_fit = math.atan2(coef[0, 1], coef[0, 0])
    spacing_fit = float(np.mean(np.linalg.norm(coef[:2], axis=1)))
    grid = Grid(float(np.degrees(theta_fit)), spacing_fit * scale, rows, cols, is_tma=True)
    return cores, grid


def _enclosing_radius(piece: np.ndarray) -> float:
    pts = np.argwhere(piece)[:, ::-1].astype(np.float32)
    return float(cv2.minEnclosingCircle(pts)[1]) + 0.5


def _fit_circle(piece: np.ndarray, radius: float, *, min_support: float = 0.35):
    """Centre (x, y) and radius of the circular outline of a core (Hough transform on its
    boundary, radii within ±15% of ``radius``), or None when less than ``min_support`` of the
    circumference lies on the tissue boundary (a core that is not round)."""
    from skimage.transform import hough_circle, hough_circle_peaks

    pad = int(radius * 0.4) + 2
    piece = np.pad(piece, pad)
    edge = piece & ~ndi.binary_erosion(piece)
    radii = np.arange(max(3, int(radius * 0.85)), int(radius * 1.15) + 2)
    acc = hough_circle(edge, radii, normalize=False)
    _, cx, cy, r = hough_circle_peaks(acc, radii, total_num_peaks=1)
    if len(r) == 0:
        return None
    # Support: the fraction of directions (2° bins) in which the outline lies within 2 px of the circle.
    ey, ex = np.nonzero(edge)
    dx, dy = ex - cx[0], ey - cy[0]
    near = np.abs(np.hypot(dx, dy) - r[0]) <= 2
    bins = np.unique(((np.degrees(np.arctan2(dy[near], dx[near])) + 180) // 2).astype(int))
    if len(bins) < min_support * 180:
        return None
    # Refine: least-squares circle (Kåsa fit) through the outline pixels near the Hough circle.
    design = np.column_stack([ex[near], ey[near], np.ones(int(near.sum()))])
    rhs = ex[near] ** 2 + ey[near] ** 2
    (a, b, c0), *_ = np.linalg.lstsq(design.astype(float), rhs.astype(float), rcond=None)
    fx, fy = a / 2, b / 2
    fr = math.sqrt(max(c0 + fx * fx + fy * fy, 1.0))
    if abs(fr - r[0]) > 3 or math.hypot(fx - cx[0], fy - cy[0]) > 3:
        fx, fy, fr = float(cx[0]), float(cy[0]), float(r[0])
    # Outline pixels are the outermost tissue pixels: their centres lie half a pixel inside.
    return float(fx - pad), float(fy - pad), float(fr + 0.5)


def _fit_grid(xy: np.ndarray, areas: np.ndarray):
    """Rotation (rad), spacing (mask px) and an origin of the grid through ``xy``; None if no grid."""
    n = len(xy)
    if n < 4:
        return None
    diam = 2 * math.sqrt(float(np.median(areas)) / math.pi)
    tree = cKDTree(xy)
    dist, nn = tree.query(xy, k=min(5, n))
    nearest = dist[:, 1]
    spacing = float(np.median(nearest))
    if spacing < 0.85 * diam or spacing > 4 * diam:
        return None  # pieces touching each other or scattered far apart: not an array
    vecs = []
    for i in range(n):
        for j, d in zip(nn[i, 1:], dist[i, 1:], strict=True):
            if d < 1.35 * spacing:
                vecs.append(xy[j] - xy[i])
    if len(vecs) < n:
        return None
    vecs = np.array(vecs)
    angles = np.arctan2(vecs[:, 1], vecs[:, 0])
    # Dominant direction modulo 90°: mean of the 4θ unit vectors.
    z = np.exp(4j * angles).mean()
    if abs(z) < 0.8:
        return None  # neighbour directions do not agree on a square lattice
    theta = float(np.angle(z) / 4)
    spacing = float(np.median(np.linalg.norm(vecs, axis=1)))
    # Most pieces must sit on the lattice (outliers: merged or displaced pieces).
    best = None
    for ref in range(min(n, 8)):
        uv = (xy - xy[ref]) @ _rotation(-theta).T / spacing
        inliers = np.abs(uv - np.rint(uv)).max(axis=1) < 0.3
        if best is None or inliers.sum() > best[1].sum():
            best = (ref, inliers)
    ref, inliers = best
    if inliers.mean() < 0.7:
        return None
    return theta, spacing, xy[ref]


def _single_region(mask: np.ndarray, scale: float) -> Core:
    ys, xs = np.nonzero(mask)
    area = float(len(xs))
    return Core("tissue", -1, -1, _xy((xs.mean(), ys.mean()), scale), 2 * math.sqrt(area / math.pi) * scale,
                (round(xs.min() * scale), round(ys.min() * scale), round((xs.max() + 1 - xs.min()) * scale),
                 round((ys.max() + 1 - ys.min()) * scale)), "ok", area * scale * scale, 1)


def _rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _xy(p, scale: float) -> tuple[float, float]:
    # Mask pixel centres sit at (i + 0.5) mask px = (i + 0.5) * scale level-0 px.
    return (float((p[0] + 0.5) * scale), float((p[1] + 0.5) * scale))


def _box_around(centre, d, scale):
    x0, y0 = (centre[0] + 0.5 - d / 2) * scale, (centre[1] + 0.5 - d / 2) * scale
    return (round(x0), round(y0), round(d * scale), round(d * scale))


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------
def cores_to_geojson(cores: list[Core], *, vertices: int = 64) -> dict:
    """A GeoJSON FeatureCollection QuPath imports: one circular annotation per core, named by its
    label, classified by status, with the core's fields as measurements."""
    features = []
    colours = {"ok": [0, 160, 0], "missing": [200, 0, 0], "fragmented": [230, 150, 0], "merged": [150, 0, 200]}
    for core in cores:
        cx, cy = core.center_xy
        r = core.diameter_px / 2
        ring = [[cx + r * math.cos(t), cy + r * math.sin(t)] for t in np.linspace(0, 2 * math.pi, vertices + 1)]
        ring[-1] = ring[0]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "annotation",
                "name": core.id,
                "classification": {"name": f"TMA core ({core.status})" if core.status != "ok" else "TMA core",
                                   "color": colours.get(core.status, [0, 0, 0])},
                "isLocked": False,
                "measurements": {"row": core.row, "col": core.col, "diameter_px": round(core.diameter_px, 2),
                                 "area_px": round(core.area_px, 1), "pieces": core.pieces},
                "status": core.status,
            },
        })
    return {"type": "FeatureCollection", "features": features}


CORE_COLUMNS = ("id", "row", "col", "center_x", "center_y", "diameter_px", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
                "status", "area_px", "pieces")


def write_cores_geojson(cores: list[Core], path: str | os.PathLike) -> None:
    """Writes :func:`cores_to_geojson` atomically."""
    atomic_write_json(Path(path), cores_to_geojson(cores), indent=1)


def write_cores_csv(cores: list[Core], path: str | os.PathLike) -> None:
    """Writes ``cores.csv`` atomically: the header :data:`CORE_COLUMNS`, then one row per core
    (coordinates to 0.01 px, area to 0.1 px²)."""
    rows = [[c.id, c.row, c.col, f"{c.center_xy[0]:.2f}", f"{c.center_xy[1]:.2f}", f"{c.diameter_px:.2f}",
             *c.bbox_xywh, c.status, f"{c.area_px:.1f}", c.pieces] for c in cores]
    atomic_write_csv(Path(path), [CORE_COLUMNS, *rows])
