"""Synthetic unstained / H&E tissue-microarray (TMA) slide pairs, simulated from a real H&E slide.

No real, shareable pairs of an unstained scan and the H&E scan of the same section exist for a
demo, so :func:`make_tma_pair` builds one from a single real H&E slide:

    with open_slide("data/samples/CMU-1-Small-Region.svs") as src:
        pair = make_tma_pair(src, SampleConfig(seed=1))
    pair.unstained   # (H, W, 2) uint16 autofluorescence, or (H, W, 1) uint8 brightfield
    pair.stained     # (H', W', 3) uint8 H&E in the stained slide's own (misregistered) frame
    pair.truth       # what truth.json holds: cores, split, transform, landmarks

**Layout.** A grid of round cores on glass (QuPath labels ``A1, A2, … B1, …``; some positions
empty), placed with a little jitter and cut with a slightly irregular edge, as a TMA needle does.

**Cores from the source.** Each core is a disc of the real H&E, resampled to ``mpp`` with
``read_at_mpp``, rotated by a random angle and possibly mirrored. Disc centres are drawn where a
simple saturation / optical-density mask says the disc is mostly tissue. The source is cut by a
straight line into a *test* part, just large enough for the test cores, and a *train* part, so no
source pixel is shared by a train core and a test core (train cores may overlap each other).

**Stained slide.** The H&E composite in the unstained frame (``he_aligned``) is what the stained
slide shows after re-scanning: the section was re-placed on the scanner (rotation ≤ 3°, shift
≤ 200 µm, one rigid transform ``A``) and stretched a little by staining and coverslipping (a
smooth elastic field ``e`` of ≤ 3 px). A stained pixel ``q`` shows the unstained point
``p = A⁻¹(q + e(q))`` (rendered by ``cv2.remap``); the other direction, ``q = A(p) − e(q)``, is
solved by fixed-point iteration (``e`` is small and smooth, so it contracts at once).

**Unstained slide.** The H&E composite is turned into what a scanner records from the section
before staining: two-channel autofluorescence (default; uint16, dark background) or one-channel
brightfield (uint8, glass ≈ 245). The optical model — colour deconvolution, fluorophore and
phase-contrast response, PSFs, illumination, camera noise — and its limits are documented in
:mod:`stainldm.data._optics`.

**Limits.** It is a simulation from H&E, not a measurement: the unstained image is (up to noise
and granules) a function of the H&E, so a model can learn relations real pairs do not have, and
real autofluorescence carries contrast H&E lacks (elastin vs collagen, lipids, metabolic state).
The stained slide is the real H&E resampled, not a second scan: no stain or focus differences
between the slides, no tissue lost, folded or torn by staining. All cores come from one small skin
slide, so tissue repeats across train cores.

Coordinates are level-0 pixels, continuous, pixel ``(i, j)`` covering ``[i, i+1) × [j, j+1)`` as
in :meth:`SlideReader.read_at_mpp`; its centre is ``(i + 0.5, j + 0.5)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

import stainldm
from stainldm.config import config_hash, to_dict
from stainldm.data._optics import (
    AUTOFLUORESCENCE_CHANNELS,
    BRIGHTFIELD_CHANNELS,
    AutofluorescenceConfig,
    BrightfieldConfig,
    simulate_autofluorescence,
    simulate_brightfield,
)
from stainldm.errors import ConfigError, InputError, RunError
from stainldm.wsi.reader import SlideReader

log = logging.getLogger(__name__)

TRUTH_FORMAT = "stainldm-sample-truth/1"
CONVENTIONS = ("level-0 pixels, continuous: pixel (i, j) covers [i, i+1) x [j, j+1), its centre is "
               "(i+0.5, j+0.5); row/col are 0-based grid indices (A1 = row 0, col 0); landmarks are "
               "[x_unstained, y_unstained, x_stained, y_stained]; source_* in the source's level-0 pixels")
_BAND = 512  # rows processed at a time for full-canvas work (bounded memory)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridConfig:
    """TMA layout in the unstained slide.

    Attributes:
        rows, cols: grid size (rows ≤ 26; labelled A.., 1..).
        missing: number of empty grid positions (drawn at random).
        test_cores: number of present cores cut from the test part of the source.
        core_diameter_um, gap_um: core size and the glass between neighbouring cores.
        margin_um: glass around the grid; None means one core diameter.
        jitter_um: maximum random offset of each core from its grid position.
        edge_irregularity: maximum relative deviation of the core edge from a circle.
    """

    rows: int = 3
    cols: int = 4
    missing: int = 1
    test_cores: int = 3
    core_diameter_um: float = 350.0
    gap_um: float = 100.0
    margin_um: float | None = None
    jitter_um: float = 10.0
    edge_irregularity: float = 0.03

    def __post_init__(self) -> None:
        if not 1 <= self.rows <= 26 or self.cols < 1:
            raise ConfigError(f"grid.rows ({self.rows}) must be 1-26 and grid.cols ({self.cols}) at least 1")
        present = self.rows * self.cols - self.missing
        if self.missing < 0 or present < 2:
            raise ConfigError(f"grid.missing ({self.missing}) must leave at least 2 of the "
                              f"{self.rows * self.cols} positions filled")
        if not 1 <= self.test_cores < present:
            raise ConfigError(f"grid.test_cores ({self.test_cores}) must be between 1 and {present - 1} "
                              f"(the {present} present cores need at least one train core)")
        if self.core_diameter_um <= 0 or self.gap_um < 0 or (self.margin_um is not None and self.margin_um < 0):
            raise ConfigError("grid.core_diameter_um must be positive, grid.gap_um and grid.margin_um not negative")
        if not 0 <= self.jitter_um <= self.gap_um / 4:
            raise ConfigError(f"grid.jitter_um ({self.jitter_um}) must be between 0 and a quarter of "
                              f"grid.gap_um ({self.gap_um / 4:g}) so cores never touch")
        if not 0 <= self.edge_irregularity <= 0.2:
            raise ConfigError(f"grid.edge_irregularity ({self.edge_irregularity}) must be between 0 and 0.2")


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


@dataclass(frozen=True)
class SampleConfig:
    """Everything :func:`make_tma_pair` needs; ``seed`` drives every random draw.

    Attributes:
        seed: random seed.
        modality: ``"autofluorescence"`` (2 × uint16) or ``"brightfield"`` (1 × uint8).
        mpp: µm per pixel of both output slides.
        thickness_variation: per-core section thickness factor is drawn from ``1 ± this``.
        landmarks_per_core: tissue landmarks recorded per core.
    """

    seed: int = 0
    modality: Literal["autofluorescence", "brightfield"] = "autofluorescence"
    mpp: float = 0.5
    thickness_variation: float = 0.15
    landmarks_per_core: int = 120
    grid: GridConfig = field(default_factory=GridConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    misregistration: MisregistrationConfig = field(default_factory=MisregistrationConfig)
    autofluorescence: AutofluorescenceConfig = field(default_factory=AutofluorescenceConfig)
    brightfield: BrightfieldConfig = field(default_factory=BrightfieldConfig)

    def __post_init__(self) -> None:
        if not 0.05 <= self.mpp <= 10:
            raise ConfigError(f"mpp ({self.mpp}) must be between 0.05 and 10 µm/px")
        if not 0 <= self.thickness_variation < 1:
            raise ConfigError(f"thickness_variation ({self.thickness_variation}) must be in [0, 1)")
        if self.landmarks_per_core < 1:
            raise ConfigError(f"landmarks_per_core ({self.landmarks_per_core}) must be at least 1")
        if self.grid.core_diameter_um / self.mpp < 32:
            raise ConfigError(f"grid.core_diameter_um ({self.grid.core_diameter_um}) is under 32 px at mpp "
                              f"{self.mpp}; use larger cores")


@dataclass(frozen=True, eq=False)
class SamplePair:
    """A simulated slide pair.

    Attributes:
        unstained: ``(H, W, C)`` unstained slide (uint16 autofluorescence or uint8 brightfield).
        stained: ``(H', W', 3)`` uint8 H&E slide in its own frame.
        he_aligned: ``(H, W, 3)`` uint8 H&E in the unstained frame (what ``stained`` is warped from).
        tissue_mask: ``(H, W)`` bool, tissue in the unstained frame.
        channel_names: names of the unstained channels.
        mpp: µm per pixel of both slides.
        truth: the ground truth, as written to truth.json (JSON-serialisable).
    """

    unstained: np.ndarray
    stained: np.ndarray
    he_aligned: np.ndarray
    tissue_mask: np.ndarray
    channel_names: tuple[str, ...]
    mpp: float
    truth: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------
def make_tma_pair(source: SlideReader, cfg: SampleConfig) -> SamplePair:
    """Simulates an unstained / H&E TMA slide pair from a real H&E slide.

    Args:
        source: an RGB H&E slide with a known mpp.
        cfg: the simulation settings (``cfg.seed`` makes it reproducible).

    Returns:
        the pair and its ground truth (see the module docstring and truth.json's ``conventions``).

    Raises:
        InputError: the source has no mpp, is not RGB, or has too little tissue for the cores.
        ConfigError: the grid margin is too small for the misregistration.
    """
    if source.mpp is None:
        raise InputError(f"{source.name}: the source slide does not record its resolution (mpp); use a slide "
                         "that does, or give it explicitly (--source-mpp)")
    if source.channels != 3 or source.dtype != np.uint8:
        raise InputError(f"{source.name}: the source must be an RGB uint8 H&E slide, got {source.channels} "
                         f"channel(s) of {np.dtype(source.dtype).name}")
    rng_layout, rng_source, rng_warp, rng_optics, rng_marks = (
        np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(5))

    layout = _plan_layout(cfg, rng_layout)
    plan = _plan_source(source, cfg, layout, rng_source)
    log.debug("source split %s at %.1f px; %d train, %d test cores", plan.axis, plan.split_px,
              sum(c.split == "train" for c in layout.cores), sum(c.split == "test" for c in layout.cores))
    he, alphas = _render_he(source, cfg, layout, plan)
    tissue = np.zeros(he.shape[:2], dtype=bool)
    for x0, y0, alpha in alphas:
        h, w = alpha.shape
        tissue[y0 : y0 + h, x0 : x0 + w] |= (alpha > 0.5) & _tissue_mask(he[y0 : y0 + h, x0 : x0 + w])
    transform = _draw_misregistration(cfg, layout, rng_warp)
    stained = _render_stained(he, transform, plan.glass_rgb)
    thickness = [c.thickness for c in layout.cores]
    if cfg.modality == "autofluorescence":
        unstained = simulate_autofluorescence(he, tissue, alphas, thickness, plan.glass_rgb,
                                              af=cfg.autofluorescence, mpp=cfg.mpp, rng=rng_optics)
        names = AUTOFLUORESCENCE_CHANNELS
    else:
        unstained = simulate_brightfield(he, tissue, alphas, thickness, plan.glass_rgb,
                                         bf=cfg.brightfield, mpp=cfg.mpp, rng=rng_optics)
        names = BRIGHTFIELD_CHANNELS
    landmarks = _landmarks(layout, tissue, transform, cfg.landmarks_per_core, rng_marks)
    truth = _truth(source, cfg, layout, plan, transform, landmarks, unstained, stained, names)
    return SamplePair(unstained=unstained, stained=stained, he_aligned=he, tissue_mask=tissue,
                      channel_names=names, mpp=cfg.mpp, truth=truth)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
@dataclass
class _Core:
    id: str
    row: int
    col: int
    center_xy: np.ndarray  # unstained frame
    split: str = "train"
    rotation_deg: float = 0.0
    flip: bool = False
    thickness: float = 1.0
    edge: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (k, amplitude, phase)
    source_center_xy: np.ndarray = field(default_factory=lambda: np.zeros(2))


@dataclass
class _Layout:
    size_wh: tuple[int, int]
    radius_px: float  # nominal core radius
    reach_px: float  # largest distance of any core pixel from its centre (edge + antialiasing)
    margin_px: float
    cores: list[_Core]
    missing: list[str]


def _plan_layout(cfg: SampleConfig, rng: np.random.Generator) -> _Layout:
    g = cfg.grid
    d = g.core_diameter_um / cfg.mpp
    gap = g.gap_um / cfg.mpp
    margin = (g.core_diameter_um if g.margin_um is None else g.margin_um) / cfg.mpp
    size_wh = (math.ceil(2 * margin + g.cols * d + (g.cols - 1) * gap),
               math.ceil(2 * margin + g.rows * d + (g.rows - 1) * gap))
    n = g.rows * g.cols
    missing = set(rng.choice(n, size=g.missing, replace=False).tolist())
    present = [i for i in range(n) if i not in missing]
    test = set(rng.choice(present, size=g.test_cores, replace=False).tolist())
    cores, missing_ids = [], []
    jitter = g.jitter_um / cfg.mpp
    for i in range(n):
        r, c = divmod(i, g.cols)
        cid = f"{chr(ord('A') + r)}{c + 1}"
        if i in missing:
            missing_ids.append(cid)
            continue
        center = np.array([margin + d / 2 + c * (d + gap), margin + d / 2 + r * (d + gap)])
        center += rng.uniform(-jitter, jitter, size=2)
        k = np.arange(2, 6)
        amp = rng.uniform(-1, 1, size=k.size) / k
        amp *= g.edge_irregularity / max(np.abs(amp).sum(), 1e-9)
        cores.append(_Core(
            id=cid, row=r, col=c, center_xy=center, split="test" if i in test else "train",
            rotation_deg=float(rng.uniform(0, 360)), flip=bool(rng.integers(2)),
            thickness=float(rng.uniform(1 - cfg.thickness_variation, 1 + cfg.thickness_variation)),
            edge=np.column_stack([k, amp, rng.uniform(0, 2 * np.pi, size=k.size)]),
        ))
    return _Layout(size_wh=size_wh, radius_px=d / 2, reach_px=d / 2 * (1 + g.edge_irregularity) + 1,
                   margin_px=margin, cores=cores, missing=missing_ids)


def _core_matrix(core: _Core) -> np.ndarray:
    """2×2 linear part of unstained offset -> source offset (at output mpp): rotation after flip."""
    t = math.radians(core.rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return rot @ np.diag([-1.0 if core.flip else 1.0, 1.0])


def _core_alpha(core: _Core, radius: float, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Coverage of the pixels of box (x0, y0, w, h) by the core's irregular disc (antialiased)."""
    dx = (np.arange(w) + x0 + 0.5 - core.center_xy[0]).astype(np.float32)
    dy = (np.arange(h)[:, None] + y0 + 0.5 - core.center_xy[1]).astype(np.float32)
    rho = np.hypot(dx, dy)
    n = 4096  # edge radius tabulated over the angle; smooth, so nearest sample is exact enough
    phi = np.linspace(-np.pi, np.pi, n + 1)
    edge = np.ones(n + 1)
    for k, a, ph in core.edge:
        edge += a * np.cos(k * phi + ph)
    idx = np.rint((np.arctan2(dy, dx) + np.pi) * (n / (2 * np.pi))).astype(np.intp)
    return np.clip((radius * edge.astype(np.float32))[idx] - rho + 0.5, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Source discs and the train/test split
# ---------------------------------------------------------------------------------------------
@dataclass
class _SourcePlan:
    radius_px: float  # source disc radius, source level-0 px
    f_xy: tuple[float, float]  # source level-0 px per output px
    axis: str  # "x" or "y"
    split_px: float  # split line position along axis, source level-0 px
    test_side: str  # "low" (coordinates below split_px) or "high"
    glass_rgb: tuple[int, int, int]
    dimensions: tuple[int, int]


def _plan_source(source: SlideReader, cfg: SampleConfig, layout: _Layout, rng: np.random.Generator) -> _SourcePlan:
    fx, fy = cfg.mpp / source.mpp[0], cfg.mpp / source.mpp[1]
    radius0 = (layout.reach_px + 2) * max(fx, fy)  # +2: bilinear taps
    w0, h0 = source.dimensions
    max_px = int(np.clip(math.ceil(max(w0 * source.mpp[0], h0 * source.mpp[1]) / cfg.sampling.mask_mpp), 64, 4096))
    thumb = source.thumbnail(max_px)
    mask = _tissue_mask(thumb)
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)).astype(bool)
    glass = thumb[~mask & (thumb.min(axis=2) > 200)]
    glass_rgb = tuple(int(v) for v in np.median(glass, axis=0)) if len(glass) > 100 else (242, 242, 242)
    gx, gy = w0 / thumb.shape[1], h0 / thumb.shape[0]
    rx, ry = radius0 / gx, radius0 / gy
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * round(rx) + 1, 2 * round(ry) + 1)).astype(np.float32)
    frac = cv2.filter2D(mask.astype(np.float32), -1, kernel / kernel.sum(), borderType=cv2.BORDER_CONSTANT)
    iy, ix = np.nonzero(frac >= cfg.sampling.min_tissue_fraction)  # row-major: raster order
    pts = np.column_stack([(ix + 0.5) * gx, (iy + 0.5) * gy])
    inside = ((pts[:, 0] >= radius0) & (pts[:, 0] <= w0 - radius0)
              & (pts[:, 1] >= radius0) & (pts[:, 1] <= h0 - radius0))
    pts = pts[inside]
    train = [c for c in layout.cores if c.split == "train"]
    test = [c for c in layout.cores if c.split == "test"]
    d_train = cfg.sampling.train_min_distance * 2 * radius0
    d_test = cfg.sampling.test_min_distance * 2 * radius0
    reduce = ("reduce grid.rows/grid.cols, grid.test_cores, grid.core_diameter_um, "
              "sampling.min_tissue_fraction or sampling.*_min_distance, or use a source with more tissue")
    if len(pts) == 0:
        raise InputError(f"{source.name}: no place where a {cfg.grid.core_diameter_um:g} µm core is "
                         f"{cfg.sampling.min_tissue_fraction:.0%} tissue; {reduce}")

    best = None
    my, mx = np.nonzero(mask)
    mask_coords = ((mx + 0.5) * gx, (my + 0.5) * gy)
    for axis in (0, 1):
        for side in ("low", "high"):
            sign = 1.0 if side == "low" else -1.0
            a = sign * pts[:, axis]  # mirrored so that the test part is always the low side
            cuts = np.unique(a + radius0)
            if len(_greedy_pack(pts, d_test, len(test))) < len(test):
                continue
            lo, hi = 0, len(cuts) - 1  # smallest cut with room for the test cores
            while lo < hi:
                mid = (lo + hi) // 2
                if len(_greedy_pack(pts[a + radius0 <= cuts[mid]], d_test, len(test))) >= len(test):
                    hi = mid
                else:
                    lo = mid + 1
            cut = cuts[lo]
            if len(_greedy_pack(pts[a - radius0 >= cut], d_train, len(train))) < len(train):
                continue
            train_tissue = int(np.count_nonzero(sign * mask_coords[axis] >= cut))
            if best is None or train_tissue > best[0]:
                best = (train_tissue, axis, side, cut)
    if best is None:
        raise InputError(f"{source.name}: too little tissue to cut {len(train)} train and {len(test)} test "
                         f"cores of {cfg.grid.core_diameter_um:g} µm from disjoint parts; {reduce}")
    _, axis, side, cut = best
    sign = 1.0 if side == "low" else -1.0
    a = sign * pts[:, axis]
    for cores, part, dmin in ((test, pts[a + radius0 <= cut], d_test), (train, pts[a - radius0 >= cut], d_train)):
        chosen = _pick_spread(part, len(cores), dmin, rng)
        for core, xy in zip(cores, chosen, strict=True):
            core.source_center_xy = xy
    return _SourcePlan(radius_px=radius0, f_xy=(fx, fy), axis="xy"[axis], split_px=float(sign * cut),
                       test_side=side, glass_rgb=glass_rgb, dimensions=(w0, h0))


def _greedy_pack(pts: np.ndarray, dmin: float, need: int) -> np.ndarray:
    """Up to ``need`` points at least ``dmin`` apart, taken greedily in the given order."""
    chosen = []
    rest = pts
    while len(rest) and len(chosen) < need:
        chosen.append(rest[0])
        rest = rest[((rest - rest[0]) ** 2).sum(axis=1) >= dmin**2]
    return np.array(chosen).reshape(-1, 2)


def _pick_spread(pts: np.ndarray, n: int, dmin: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` random points at least ``dmin`` apart, preferring far ones (randomised farthest-point)."""
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
    packed = _greedy_pack(pts, dmin, n)  # feasible: the split search checked it
    return packed[rng.permutation(n)]


_OD_LUT = (-np.log((np.arange(256) + 1.0) / 256.0)).astype(np.float32)


def _tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Saturation / optical-density tissue mask of an RGB uint8 image (H&E on glass)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    sat = (mx - mn).astype(np.float32) / np.maximum(mx, 1)
    od = _OD_LUT[r] + _OD_LUT[g] + _OD_LUT[b]
    return (sat > 0.08) | (od > 0.45)


# ---------------------------------------------------------------------------------------------
# Rendering the H&E composite and the stained slide
# ---------------------------------------------------------------------------------------------
def _render_he(source: SlideReader, cfg: SampleConfig, layout: _Layout, plan: _SourcePlan):
    """H&E cores on glass in the unstained frame; returns the image and per-core (x0, y0, alpha)."""
    w, h = layout.size_wh
    he = np.empty((h, w, 3), dtype=np.uint8)
    he[:] = plan.glass_rgb
    fx, fy = plan.f_xy
    half = math.ceil(plan.radius_px / min(fx, fy)) + 4
    box_src = 2 * half
    alphas = []
    for core in layout.cores:
        tl = (core.source_center_xy[0] - fx * half, core.source_center_xy[1] - fy * half)
        patch = source.read_at_mpp(tl, (box_src, box_src), cfg.mpp)
        pad = 8
        x0 = math.floor(core.center_xy[0] - layout.reach_px - pad)
        y0 = math.floor(core.center_xy[1] - layout.reach_px - pad)
        bw = math.ceil(core.center_xy[0] + layout.reach_px + pad) - x0
        bh = math.ceil(core.center_xy[1] + layout.reach_px + pad) - y0
        m = _core_matrix(core)
        # dst index d has centre p = d + (x0, y0) + 0.5; source patch coordinate s = half + M (p - c);
        # cv2 samples source index s - 0.5.
        offset = m @ (np.array([x0 + 0.5, y0 + 0.5]) - core.center_xy) + half - 0.5
        warped = cv2.warpAffine(patch, np.column_stack([m, offset]), (bw, bh),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        alpha = _core_alpha(core, layout.radius_px, x0, y0, bw, bh)
        glass = np.asarray(plan.glass_rgb, dtype=np.float32)
        mixed = alpha[..., None] * warped + (1 - alpha[..., None]) * glass
        he[y0 : y0 + bh, x0 : x0 + bw] = np.rint(mixed).astype(np.uint8)
        alphas.append((x0, y0, alpha))
    return he, alphas


@dataclass
class _Transform:
    rotation_deg: float
    translation_px: np.ndarray
    center_xy: np.ndarray
    matrix: np.ndarray  # 2×3
    step_px: int
    field: np.ndarray  # (2, ny, nx): dx, dy at stained points (i*step, j*step)
    size_wh: tuple[int, int]  # stained canvas

    def as_dict(self) -> dict[str, Any]:
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


def _draw_misregistration(cfg: SampleConfig, layout: _Layout, rng: np.random.Generator) -> _Transform:
    mis = cfg.misregistration
    w, h = layout.size_wh
    center = np.array([w / 2, h / 2])
    theta = float(rng.uniform(-mis.max_rotation_deg, mis.max_rotation_deg))
    rad = math.radians(theta)
    rot = np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])
    centers = np.array([c.center_xy for c in layout.cores])
    reach = layout.reach_px + mis.elastic_max_px
    pad = max(16.0, layout.margin_px / 4)
    max_t = mis.max_translation_um / cfg.mpp
    for _ in range(1000):  # reject shifts that would push tissue off the top/left of the scan
        length, angle = max_t * math.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)  # uniform in a disc
        t = length * np.array([math.cos(angle), math.sin(angle)])
        mapped = (centers - center) @ rot.T + center + t
        if (mapped.min(axis=0) - reach >= pad).all():
            break
    else:
        raise ConfigError(f"grid.margin_um is too small for misregistration.max_translation_um "
                          f"({mis.max_translation_um:g}): tissue would leave the stained scan; raise the margin")
    hi = mapped.max(axis=0) + reach + pad
    size_wh = (max(w, math.ceil(hi[0])), max(h, math.ceil(hi[1])))
    matrix = np.column_stack([rot, center + t - rot @ center])

    sigma = mis.elastic_scale_um / cfg.mpp
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
    return _Transform(rotation_deg=theta, translation_px=t, center_xy=center, matrix=matrix, step_px=step,
                      field=disp, size_wh=size_wh)


def _hat_matrix(coords: np.ndarray, n_nodes: int, step: float) -> np.ndarray:
    """Bilinear interpolation weights ``(len(coords), n_nodes)`` for nodes at ``i * step``."""
    u = np.clip(coords / step, 0, n_nodes - 1)
    i0 = np.minimum(np.floor(u).astype(int), n_nodes - 2)
    w1 = u - i0
    out = np.zeros((len(coords), n_nodes), dtype=np.float64)
    out[np.arange(len(coords)), i0] = 1 - w1
    out[np.arange(len(coords)), i0 + 1] = w1
    return out


def _render_stained(he: np.ndarray, tr: _Transform, glass_rgb: tuple[int, int, int]) -> np.ndarray:
    """The stained slide: each stained pixel centre q samples he at A⁻¹(q + e(q)) (bilinear)."""
    ws, hs = tr.size_wh
    out = np.empty((hs, ws, 3), dtype=np.uint8)
    # float32 maps: 3e-4 px rounding, far below cv2.remap's own 1/32 px interpolation grid.
    qx = (np.arange(ws) + 0.5).astype(np.float32)
    wx = _hat_matrix(qx, tr.field.shape[2], tr.step_px).astype(np.float32)
    fx, fy = (tr.field[k].astype(np.float32) @ wx.T for k in (0, 1))  # (ny, ws)
    inv = np.linalg.inv(tr.matrix[:, :2]).astype(np.float32)
    shift = tr.matrix[:, 2]
    for y0 in range(0, hs, _BAND):
        qy = np.arange(y0, min(hs, y0 + _BAND)) + 0.5
        wy = _hat_matrix(qy, tr.field.shape[1], tr.step_px).astype(np.float32)
        zx = wy @ fx + (qx - np.float32(shift[0] + 0.0))  # q + e(q) - shift, (band, ws)
        zy = wy @ fy + (qy[:, None] - shift[1]).astype(np.float32)
        px = inv[0, 0] * zx + inv[0, 1] * zy - np.float32(0.5)  # cv2 indexes pixel centres at integers
        py = inv[1, 0] * zx + inv[1, 1] * zy - np.float32(0.5)
        out[y0 : y0 + len(qy)] = cv2.remap(he, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                           borderValue=tuple(float(v) for v in glass_rgb))
    return out


# ---------------------------------------------------------------------------------------------
# Point mapping between the two slides (pure; works from truth.json's "transform")
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


# ---------------------------------------------------------------------------------------------
# Landmarks and the truth record
# ---------------------------------------------------------------------------------------------
def _landmarks(layout: _Layout, tissue: np.ndarray, tr: _Transform, n: int,
               rng: np.random.Generator) -> dict[str, list[list[float]]]:
    """``n`` tissue pixel centres per core (inside 85% of its radius) and their stained positions."""
    transform = tr.as_dict()
    points, owners = [], []
    for core in layout.cores:
        r = 0.85 * layout.radius_px
        x0, y0 = math.floor(core.center_xy[0] - r), math.floor(core.center_xy[1] - r)
        x1, y1 = math.ceil(core.center_xy[0] + r), math.ceil(core.center_xy[1] + r)
        ys, xs = np.nonzero(tissue[y0:y1, x0:x1])
        px, py = xs + x0 + 0.5, ys + y0 + 0.5
        inside = np.hypot(px - core.center_xy[0], py - core.center_xy[1]) <= r
        px, py = px[inside], py[inside]
        pick = np.sort(rng.choice(len(px), size=min(n, len(px)), replace=False))
        points.append(np.column_stack([px[pick], py[pick]]))
        owners += [core.id] * len(pick)
    p = np.concatenate(points)
    q = np.round(unstained_to_stained(p, transform), 4)
    residual = np.abs(stained_to_unstained(q, transform) - p).max(initial=0.0)
    if residual >= 1e-3:
        raise RunError(f"landmark round trip residual {residual:.2g} px exceeds 1e-3 px; report this")
    out: dict[str, list[list[float]]] = {c.id: [] for c in layout.cores}
    for cid, pp, qq in zip(owners, p.tolist(), q.tolist(), strict=True):
        out[cid].append([*pp, *qq])
    return out


def _truth(source: SlideReader, cfg: SampleConfig, layout: _Layout, plan: _SourcePlan, tr: _Transform,
           landmarks, unstained: np.ndarray, stained: np.ndarray, names: tuple[str, ...]) -> dict[str, Any]:
    transform = tr.as_dict()
    centers = np.array([c.center_xy for c in layout.cores])
    centers_s = unstained_to_stained(centers, transform)
    fx, fy = plan.f_xy
    cores = []
    for core, cs in zip(layout.cores, centers_s, strict=True):
        lin = np.diag([fx, fy]) @ _core_matrix(core)
        cores.append({
            "id": core.id, "row": core.row, "col": core.col, "split": core.split,
            "center_unstained_xy": core.center_xy.tolist(), "center_stained_xy": np.round(cs, 4).tolist(),
            "diameter_px": 2 * layout.radius_px,
            "source_center_xy": core.source_center_xy.tolist(), "source_radius_px": plan.radius_px,
            "rotation_deg": core.rotation_deg, "flip": core.flip,
            "unstained_to_source": np.column_stack([lin, core.source_center_xy - lin @ core.center_xy]).tolist(),
            "thickness": core.thickness,
        })
    w0, h0 = plan.dimensions
    ax = 0 if plan.axis == "x" else 1
    low = [0.0, 0.0, float(w0), float(h0)]
    low[2 + ax] = plan.split_px
    high = [0.0, 0.0, float(w0), float(h0)]
    high[ax], high[2 + ax] = plan.split_px, (w0, h0)[ax] - plan.split_px
    test_box, train_box = (low, high) if plan.test_side == "low" else (high, low)
    return {
        "format": TRUTH_FORMAT,
        "conventions": CONVENTIONS,
        "mpp": cfg.mpp,
        "modality": cfg.modality,
        "seed": cfg.seed,
        "unstained": {"size_wh": [unstained.shape[1], unstained.shape[0]], "channel_names": list(names),
                      "dtype": unstained.dtype.name},
        "stained": {"size_wh": [stained.shape[1], stained.shape[0]], "channel_names": ["R", "G", "B"],
                    "dtype": "uint8"},
        "grid": {"rows": cfg.grid.rows, "cols": cfg.grid.cols},
        "cores": cores,
        "missing": layout.missing,
        "landmarks": landmarks,
        "transform": transform,
        "source_regions": {
            "axis": plan.axis, "split_px": plan.split_px, "test_side": plan.test_side,
            "rule": "test discs lie wholly on test_side of the line axis = split_px, train discs wholly on "
                    "the other side; discs are source_center_xy ± source_radius_px",
            "test_xywh": test_box, "train_xywh": train_box,
        },
        "source": {"file": source.name, "mpp": list(source.mpp), "dimensions": list(source.dimensions)},
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "stainldm_version": stainldm.__version__,
    }
