"""Where a synthetic slide's cores are cut from the real H&E source, and its train/test split.

Disc centres are drawn where a fixed-threshold saturation / optical-density mask says the disc is
mostly tissue. The source is cut by a straight line into a *test* part, just large enough for the
test cores, and a *train* part, so no source pixel is shared by a train core and a test core (train
cores may overlap each other). Of the four ways to cut (along x or y, test part low or high), the
one leaving the most tissue to the train part wins.

:func:`plan_source` reads the source's thumbnail, once; everything else here is pure maths over
the mask and the candidate points. Coordinates are the source's level-0 pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from stainldm.data.tma_layout import Layout
from stainldm.errors import ConfigError, InputError
from stainldm.wsi.reader import SlideReader
from stainldm.wsi.tissue import he_fixed_threshold_mask


@dataclass(frozen=True)
class SamplingConfig:
    """Where cores are cut from the source.

    Attributes:
        min_tissue_fraction: a source disc must be at least this fraction tissue.
        train_min_distance, test_min_distance: minimum distance between source disc centres of
            the same split, as a fraction of the disc diameter (< 1 lets discs overlap).
        mask_mpp: µm/px of the source thumbnail the tissue mask is computed on.
    """

    min_tissue_fraction: float = 0.75
    train_min_distance: float = 0.3
    test_min_distance: float = 0.5
    mask_mpp: float = 4.0

    def __post_init__(self) -> None:
        if not 0 < self.min_tissue_fraction <= 1:
            raise ConfigError(f"sampling.min_tissue_fraction ({self.min_tissue_fraction}) must be in (0, 1]")
        if self.train_min_distance < 0 or self.test_min_distance < 0:
            raise ConfigError("sampling.train_min_distance and sampling.test_min_distance must not be negative")
        if self.mask_mpp <= 0:
            raise ConfigError(f"sampling.mask_mpp ({self.mask_mpp}) must be positive")


@dataclass
class SourcePlan:
    """How the source was cut.

    Attributes:
        radius_px: source disc radius, source level-0 px.
        f_xy: source level-0 px per output px.
        axis: ``"x"`` or ``"y"``.
        split_px: split line position along ``axis``, source level-0 px.
        test_side: ``"low"`` (coordinates below ``split_px``) or ``"high"``.
        glass_rgb: colour of the source's empty glass.
        dimensions: the source's level-0 ``(width, height)``.
    """

    radius_px: float
    f_xy: tuple[float, float]
    axis: str
    split_px: float
    test_side: str
    glass_rgb: tuple[int, int, int]
    dimensions: tuple[int, int]


def plan_source(source: SlideReader, layout: Layout, *, mpp: float, sampling: SamplingConfig,
                core_diameter_um: float, rng: np.random.Generator) -> SourcePlan:
    """Splits the source into test and train parts and sets every core's ``source_center_xy``.

    Args:
        source: an RGB H&E slide with a known mpp (its thumbnail is read once).
        layout: the cores to place; their ``source_center_xy`` are set in place.
        mpp: µm per pixel of the output slides.
        sampling: where discs may be cut.
        core_diameter_um: the cores' diameter (for messages).
        rng: the source of every random draw.

    Returns:
        the plan.

    Raises:
        InputError: the source has too little tissue for the cores.
    """
    fx, fy = mpp / source.mpp[0], mpp / source.mpp[1]
    radius0 = (layout.reach_px + 2) * max(fx, fy)  # +2: bilinear taps
    w0, h0 = source.dimensions
    max_px = int(np.clip(math.ceil(max(w0 * source.mpp[0], h0 * source.mpp[1]) / sampling.mask_mpp), 64, 4096))
    thumb = source.thumbnail(max_px)
    mask, glass_rgb = thumbnail_tissue(thumb)
    cell_xy = (w0 / thumb.shape[1], h0 / thumb.shape[0])
    pts = disc_centres(mask, cell_xy=cell_xy, radius_px=radius0, dimensions=(w0, h0),
                       min_tissue_fraction=sampling.min_tissue_fraction)
    train = [c for c in layout.cores if c.split == "train"]
    test = [c for c in layout.cores if c.split == "test"]
    d_train = sampling.train_min_distance * 2 * radius0
    d_test = sampling.test_min_distance * 2 * radius0
    reduce = ("reduce grid.rows/grid.cols, grid.test_cores, grid.core_diameter_um, "
              "sampling.min_tissue_fraction or sampling.*_min_distance, or use a source with more tissue")
    if len(pts) == 0:
        raise InputError(f"{source.name}: no place where a {core_diameter_um:g} µm core is "
                         f"{sampling.min_tissue_fraction:.0%} tissue; {reduce}")
    my, mx = np.nonzero(mask)
    mask_xy = ((mx + 0.5) * cell_xy[0], (my + 0.5) * cell_xy[1])
    best = choose_split(pts, mask_xy, radius_px=radius0, n_test=len(test), d_test=d_test,
                        n_train=len(train), d_train=d_train)
    if best is None:
        raise InputError(f"{source.name}: too little tissue to cut {len(train)} train and {len(test)} test "
                         f"cores of {core_diameter_um:g} µm from disjoint parts; {reduce}")
    axis, side, cut = best
    sign = 1.0 if side == "low" else -1.0
    a = sign * pts[:, axis]
    for cores, part, dmin in ((test, pts[a + radius0 <= cut], d_test), (train, pts[a - radius0 >= cut], d_train)):
        chosen = pick_spread(part, len(cores), dmin, rng)
        for core, xy in zip(cores, chosen, strict=True):
            core.source_center_xy = xy
    return SourcePlan(radius_px=radius0, f_xy=(fx, fy), axis="xy"[axis], split_px=float(sign * cut),
                      test_side=side, glass_rgb=glass_rgb, dimensions=(w0, h0))


def thumbnail_tissue(thumb: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Tissue mask of an H&E thumbnail (closed over 3×3) and the colour of its glass.

    Args:
        thumb: ``(h, w, 3)`` uint8.

    Returns:
        ``(h, w)`` bool mask, and the median RGB of bright non-tissue pixels (``(242, 242, 242)``
        when there are 100 or fewer).
    """
    mask = he_fixed_threshold_mask(thumb)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)).astype(bool)
    glass = thumb[~mask & (thumb.min(axis=2) > 200)]
    glass_rgb = tuple(int(v) for v in np.median(glass, axis=0)) if len(glass) > 100 else (242, 242, 242)
    return mask, glass_rgb


def disc_centres(mask: np.ndarray, *, cell_xy: tuple[float, float], radius_px: float,
                 dimensions: tuple[int, int], min_tissue_fraction: float) -> np.ndarray:
    """Thumbnail pixel centres where a disc of ``radius_px`` is mostly tissue and wholly inside the source.

    Args:
        mask: ``(h, w)`` bool tissue mask of the thumbnail.
        cell_xy: source level-0 pixels per thumbnail pixel, x and y.
        radius_px: disc radius, source level-0 px.
        dimensions: the source's level-0 ``(width, height)``.
        min_tissue_fraction: least tissue fraction of a disc.

    Returns:
        ``(N, 2)`` centres in source level-0 pixels, in raster order of the thumbnail.
    """
    gx, gy = cell_xy
    w0, h0 = dimensions
    rx, ry = radius_px / gx, radius_px / gy
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * round(rx) + 1, 2 * round(ry) + 1)).astype(np.float32)
    frac = cv2.filter2D(mask.astype(np.float32), -1, kernel / kernel.sum(), borderType=cv2.BORDER_CONSTANT)
    iy, ix = np.nonzero(frac >= min_tissue_fraction)  # row-major: raster order
    pts = np.column_stack([(ix + 0.5) * gx, (iy + 0.5) * gy])
    inside = ((pts[:, 0] >= radius_px) & (pts[:, 0] <= w0 - radius_px)
              & (pts[:, 1] >= radius_px) & (pts[:, 1] <= h0 - radius_px))
    return pts[inside]


def choose_split(pts: np.ndarray, mask_xy: tuple[np.ndarray, np.ndarray], *, radius_px: float, n_test: int,
                 d_test: float, n_train: int, d_train: float) -> tuple[int, str, float] | None:
    """The straight cut that fits the test discs on one side and leaves the most tissue to train.

    For each axis and side, the smallest cut whose test part holds ``n_test`` discs ``d_test``
    apart (binary search over the candidates' edges), kept if the rest holds ``n_train`` discs
    ``d_train`` apart.

    Args:
        pts: ``(N, 2)`` candidate disc centres.
        mask_xy: x and y of every tissue pixel (source level-0 px), to measure the train part's tissue.
        radius_px: disc radius.
        n_test, d_test, n_train, d_train: how many discs each part needs, and their least spacing.

    Returns:
        ``(axis, side, cut)``: axis 0 (x) or 1 (y); ``"low"`` when the test part lies below the
        line; ``cut`` in coordinates mirrored by side (the line is at ``cut`` for low, ``-cut``
        for high). None when no cut fits both parts.
    """
    best = None
    for axis in (0, 1):
        for side in ("low", "high"):
            sign = 1.0 if side == "low" else -1.0
            a = sign * pts[:, axis]  # mirrored so that the test part is always the low side
            cuts = np.unique(a + radius_px)
            if len(greedy_pack(pts, d_test, n_test)) < n_test:
                continue
            lo, hi = 0, len(cuts) - 1  # smallest cut with room for the test cores
            while lo < hi:
                mid = (lo + hi) // 2
                if len(greedy_pack(pts[a + radius_px <= cuts[mid]], d_test, n_test)) >= n_test:
                    hi = mid
                else:
                    lo = mid + 1
            cut = cuts[lo]
            if len(greedy_pack(pts[a - radius_px >= cut], d_train, n_train)) < n_train:
                continue
            train_tissue = int(np.count_nonzero(sign * mask_xy[axis] >= cut))
            if best is None or train_tissue > best[0]:
                best = (train_tissue, axis, side, cut)
    return None if best is None else best[1:]


def greedy_pack(pts: np.ndarray, dmin: float, need: int) -> np.ndarray:
    """Up to ``need`` points at least ``dmin`` apart, taken greedily in the given order.

    Returns:
        ``(k, 2)`` with ``k ≤ need``.
    """
    chosen = []
    rest = pts
    while len(rest) and len(chosen) < need:
        chosen.append(rest[0])
        rest = rest[((rest - rest[0]) ** 2).sum(axis=1) >= dmin**2]
    return np.array(chosen).reshape(-1, 2)


def pick_spread(pts: np.ndarray, n: int, dmin: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` random points at least ``dmin`` apart, preferring far ones (randomised farthest-point).

    After ten failed random tries it falls back to :func:`greedy_pack`, shuffled; the caller must
    know that ``n`` such points exist.

    Returns:
        ``(n, 2)``.
    """
    for _ in range(10):
        chosen = [pts[rng.integers(len(pts))]]
        dist = np.hypot(*(pts - chosen[0]).T)
        while len(chosen) < n:
            ok = dist >= max(dmin, 0.7 * dist.max())
            if dist.max() < dmin or not ok.any():
                break
            chosen.append(pts[rng.choice(np.flatnonzero(ok))])
            dist = np.minimum(dist, np.hypot(*(pts - chosen[-1]).T))
        if len(chosen) == n:
            return np.array(chosen)
    packed = greedy_pack(pts, dmin, n)  # feasible: the split search checked it
    return packed[rng.permutation(n)]
