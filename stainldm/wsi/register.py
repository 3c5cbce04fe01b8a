"""Cross-modal registration of a stained (H&E) slide onto its unstained scan.

Transforms map **unstained level-0 pixels to stained level-0 pixels** (the direction needed to
resample the stained slide onto the unstained tile grid):

    p_stained = M_core · (p_unstained + d(p_unstained))

where ``M_core`` is a 3×3 affine per core and ``d`` a smooth field of per-tile residual shifts
(bilinear between tile centres). Three stages, each on a modality-robust representation:

1. **coarse** (slide, ~8 µm/px): "tissue signal" images that are positive on tissue in every
   modality (optical density of H&E, darkness of unstained brightfield, normalised intensity of
   autofluorescence). A rotation search with FFT cross-correlation at each angle (normalised
   cross-correlation, NCC) gives a rigid transform; ECC (Evangelidis & Psarakis 2008) refines it
   to an affine.
2. **core** (~2 µm/px): rigid ECC between *gradient magnitudes* of the tissue signals — edges of
   nuclei, fibres and the core outline are shared across modalities even where intensities are
   inverted (nuclei are dark in autofluorescence, dark purple in H&E).
3. **tiles** (level 0): sub-pixel phase correlation (scikit-image, upsampled) of gradient
   magnitudes per tile; shifts that do not raise the similarity, exceed the allowed size or
   disagree with their neighbours are replaced by the neighbours' median.

Similarity is reported as NCC of gradient magnitudes before (after the coarse stage only) and
after; a pair whose similarity stays low is refused (:class:`RegistrationError`), so mismatched
slides never produce silently misaligned training pairs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from stainldm.errors import InputError, StainLDMError
from stainldm.wsi import _resample
from stainldm.wsi.reader import SlideReader
from stainldm.wsi.tissue import guess_modality

log = logging.getLogger(__name__)


class RegistrationError(StainLDMError):
    """The slides could not be aligned (different tissue, or too little shared structure)."""

    exit_code = 1


@dataclass(frozen=True)
class RegisterConfig:
    """Parameters of registration.

    Attributes:
        coarse_mpp: µm/px of the slide-level search.
        max_rotation_deg: rotation search range (±) of the coarse stage.
        rotation_step_deg: step of the coarse rotation search (refined by ECC afterwards).
        core_mpp: µm/px of the per-core affine refinement.
        core_margin: margin around a core's box, as a fraction of its size.
        tile_px: tile edge (level-0 px) of the residual-shift stage.
        max_tile_shift_px: larger residual shifts (level-0 px) are rejected.
        min_similarity: median similarity over cores (gradient NCC after registration) below which
            the pair is refused. Measured on make-sample pairs: same section 0.56-0.71, different
            cores on the same grid 0.20-0.22.
        min_core_similarity: a single core below this is left out of the training tiles (lowest
            matched core seen: 0.38, an epidermis edge; mismatched cores: ≤ 0.34, median 0.2).
        unstained_modality, stained_modality: tissue-signal model per slide (``auto`` guesses).
    """

    coarse_mpp: float = 8.0
    max_rotation_deg: float = 10.0
    rotation_step_deg: float = 0.5
    core_mpp: float = 2.0
    core_margin: float = 0.15
    tile_px: int = 256
    max_tile_shift_px: float = 8.0
    min_similarity: float = 0.35
    min_core_similarity: float = 0.25
    unstained_modality: str = "auto"
    stained_modality: str = "he"


@dataclass
class CoreTransform:
    """Unstained -> stained mapping of one core: affine plus a grid of residual pre-shifts.

    Attributes:
        matrix: 3×3 affine, unstained level-0 px -> stained level-0 px.
        grid_x, grid_y: tile-centre coordinates (unstained level-0 px) of the shift grid.
        shifts: ``(len(grid_y), len(grid_x), 2)`` pre-shifts (dx, dy) in unstained level-0 px.
        sim_before, sim_after: per-tile similarity (gradient NCC) before/after refinement.
    """

    matrix: np.ndarray
    grid_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grid_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    shifts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 2)))
    sim_before: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    sim_after: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

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
        return {"matrix": self.matrix.tolist(), "grid_x": self.grid_x.tolist(), "grid_y": self.grid_y.tolist(),
                "shifts": np.round(self.shifts, 4).tolist()}

    @classmethod
    def from_json(cls, data: dict) -> CoreTransform:
        shifts = np.asarray(data.get("shifts", []), dtype=np.float64)
        return cls(np.asarray(data["matrix"], dtype=np.float64), np.asarray(data.get("grid_x", [])),
                   np.asarray(data.get("grid_y", [])), shifts.reshape(-1, len(data.get("grid_x", [])) or 0, 2)
                   if shifts.size else np.zeros((0, 0, 2)))


def _grid_coord(grid: np.ndarray, v: np.ndarray) -> np.ndarray:
    if len(grid) == 1:
        return np.zeros_like(v)
    return np.interp(v, grid, np.arange(len(grid)))


# ---------------------------------------------------------------------------------------------
# Representations
# ---------------------------------------------------------------------------------------------
def tissue_signal(img: np.ndarray, modality: str = "auto") -> np.ndarray:
    """A float32 image that is ~0 on glass and positive on tissue, whatever the modality."""
    img = img[..., None] if img.ndim == 2 else img
    if modality == "auto":
        modality = guess_modality(img)
    if modality == "he":
        rgb = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        return np.clip(-np.log10(np.clip(rgb, 1 / 255, 1)).mean(axis=2), 0, 2).astype(np.float32)
    if modality == "brightfield":
        gray = img.astype(np.float32).mean(axis=2)
        glass = float(np.percentile(gray, 95)) or 1.0
        return np.clip(1 - gray / glass, 0, 1).astype(np.float32) * 10
    if modality == "fluorescence":
        x = img.astype(np.float32)
        out = np.zeros(x.shape[:2], np.float32)
        for c in range(x.shape[2]):
            lo, hi = np.percentile(x[..., c], [1, 99.5])
            out += np.clip((x[..., c] - lo) / max(hi - lo, 1e-6), 0, 1.5)
        return out / x.shape[2]
    raise InputError(f"unknown modality '{modality}' for registration; use auto, he, brightfield or fluorescence")


def structure(signal: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Gradient magnitude of the smoothed signal: sign-free edges shared across modalities."""
    s = cv2.GaussianBlur(signal.astype(np.float32), (0, 0), sigma)
    gx = cv2.Sobel(s, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(s, cv2.CV_32F, 0, 1, ksize=3)
    g = np.sqrt(gx * gx + gy * gy)
    scale = float(np.percentile(g, 99)) or 1.0
    return np.clip(g / scale, 0, 2)


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two images (optionally within a mask)."""
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 0 else 0.0


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


# ---------------------------------------------------------------------------------------------
# Stage 1: slide-level rigid search + affine ECC
# ---------------------------------------------------------------------------------------------
def _thumb(slide: SlideReader, mpp: float) -> np.ndarray:
    w, h = slide.dimensions
    size = (max(8, math.ceil(w * slide.mpp[0] / mpp)), max(8, math.ceil(h * slide.mpp[1] / mpp)))
    return slide.read_at_mpp((0, 0), size, mpp)


def _pixel_frame(f: float) -> tuple[np.ndarray, np.ndarray]:
    """(level-0 -> grid, grid -> level-0) 3×3 maps for a grid of ``f`` level-0 px per pixel,
    pixel centres at (i + 0.5)·f."""
    to_grid = np.array([[1 / f, 0, -0.5], [0, 1 / f, -0.5], [0, 0, 1]])
    to_level0 = np.array([[f, 0, 0.5 * f], [0, f, 0.5 * f], [0, 0, 1]])
    return to_grid, to_level0


def _ecc(template: np.ndarray, moving: np.ndarray, warp: np.ndarray, *, iterations: int = 200,
         motion: int = cv2.MOTION_AFFINE) -> np.ndarray:
    """ECC (affine by default); returns the refined 2×3 warp (template coords -> moving coords),
    or the input warp when ECC does not converge."""
    w = warp.astype(np.float32).copy()
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-6)
    try:
        _, w = cv2.findTransformECC(template.astype(np.float32), moving.astype(np.float32), w,
                                    motion, criteria, None, 1)
    except cv2.error as exc:
        log.debug("ECC did not converge (%s); keeping the previous estimate", exc)
        return warp
    return w.astype(np.float64)


def coarse_align(unstained: SlideReader, stained: SlideReader, cfg: RegisterConfig) -> tuple[np.ndarray, float]:
    """Slide-level affine (3×3, unstained level-0 -> stained level-0) and its tissue-signal NCC."""
    fixed = tissue_signal(_thumb(unstained, cfg.coarse_mpp), cfg.unstained_modality)
    moving = tissue_signal(_thumb(stained, cfg.coarse_mpp), cfg.stained_modality)
    fixed = fixed / (float(np.percentile(fixed, 99.5)) or 1.0)
    moving = moving / (float(np.percentile(moving, 99.5)) or 1.0)
    H = max(fixed.shape[0], moving.shape[0])
    W = max(fixed.shape[1], moving.shape[1])
    ph, pw = cv2.getOptimalDFTSize(2 * H), cv2.getOptimalDFTSize(2 * W)
    f_pad = np.zeros((ph, pw), np.float32)
    f_pad[: fixed.shape[0], : fixed.shape[1]] = fixed - fixed.mean()
    F = np.fft.rfft2(f_pad)
    centre = (moving.shape[1] / 2, moving.shape[0] / 2)
    best = (-np.inf, 0.0, (0, 0))
    n_steps = round(cfg.max_rotation_deg / cfg.rotation_step_deg)
    for k in range(-n_steps, n_steps + 1):
        angle = k * cfg.rotation_step_deg
        rot = cv2.getRotationMatrix2D(centre, angle, 1.0)
        g = cv2.warpAffine(moving, rot, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)
        g_pad = np.zeros((ph, pw), np.float32)
        g_pad[:H, :W] = g - g.mean()
        corr = np.fft.irfft2(F * np.conj(np.fft.rfft2(g_pad)), s=(ph, pw))
        score = float(corr.max()) / (float(np.linalg.norm(f_pad)) * float(np.linalg.norm(g_pad)) + 1e-9)
        if score > best[0]:
            iy, ix = np.unravel_index(int(np.argmax(corr)), corr.shape)
            best = (score, angle, (ix if ix < pw // 2 else ix - pw, iy if iy < ph // 2 else iy - ph))
    _, angle, (tx, ty) = best
    # corr peak t: fixed(p + t) ~ g(p) = moving(rot⁻¹ p)  =>  moving point = rot⁻¹ (p_fixed - t)
    rot3 = np.vstack([cv2.getRotationMatrix2D(centre, angle, 1.0), [0, 0, 1]])
    shift = np.array([[1, 0, -tx], [0, 1, -ty], [0, 0, 1]], dtype=np.float64)
    warp = (np.linalg.inv(rot3) @ shift)[:2]
    warp = _ecc(_pad_to(fixed, H, W), _pad_to(moving, H, W), warp)
    f_u = cfg.coarse_mpp / unstained.mpp[0]
    f_s = cfg.coarse_mpp / stained.mpp[0]
    to_grid_u, _ = _pixel_frame(f_u)
    _, to_level0_s = _pixel_frame(f_s)
    matrix = to_level0_s @ np.vstack([warp, [0, 0, 1]]) @ to_grid_u
    warped = cv2.warpAffine(_pad_to(moving, H, W), warp.astype(np.float32), (W, H),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return matrix, ncc(_pad_to(fixed, H, W), warped)


def _pad_to(a: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    out[: a.shape[0], : a.shape[1]] = a
    return out


# ---------------------------------------------------------------------------------------------
# Stage 2: per-core affine
# ---------------------------------------------------------------------------------------------
def refine_core(unstained: SlideReader, stained: SlideReader, matrix: np.ndarray,
                bbox_xywh: tuple[int, int, int, int], cfg: RegisterConfig) -> tuple[np.ndarray, float, float]:
    """Rigid ECC on gradient magnitudes around one core; returns (matrix, sim_before, sim_after)."""
    x, y, w, h = bbox_xywh
    mx, my = cfg.core_margin * w, cfg.core_margin * h
    xy = (x - mx, y - my)
    step = cfg.core_mpp / unstained.mpp[0]
    size = (max(16, math.ceil((w + 2 * mx) / step)), max(16, math.ceil((h + 2 * my) / step)))
    fixed = structure(tissue_signal(unstained.read_at_mpp(xy, size, cfg.core_mpp), cfg.unstained_modality))

    def moving_for(m: np.ndarray) -> np.ndarray:
        img = sample_transformed(stained, CoreTransform(m), xy, size, step=step)
        return structure(tissue_signal(img, cfg.stained_modality))

    moving = moving_for(matrix)
    before = ncc(fixed, moving)
    # Rigid (rotation + shift) per core: the slide-level stage already took the affine part; more
    # freedom here fits noise on faint modalities (unstained brightfield).
    warp = _ecc(fixed, moving, np.eye(3)[:2], motion=cv2.MOTION_EUCLIDEAN)
    to_grid = np.array([[1 / step, 0, -xy[0] / step - 0.5], [0, 1 / step, -xy[1] / step - 0.5], [0, 0, 1]])
    to_level0 = np.array([[step, 0, xy[0] + 0.5 * step], [0, step, xy[1] + 0.5 * step], [0, 0, 1]])
    refined = matrix @ to_level0 @ np.vstack([warp, [0, 0, 1]]) @ to_grid
    after = ncc(fixed, moving_for(refined))
    if after < before:  # ECC wandered off: keep the slide-level estimate
        return matrix, before, before
    return refined, before, after


# ---------------------------------------------------------------------------------------------
# Stage 3: per-tile residual shifts
# ---------------------------------------------------------------------------------------------
def refine_tiles(unstained: SlideReader, stained: SlideReader, matrix: np.ndarray,
                 bbox_xywh: tuple[int, int, int, int], cfg: RegisterConfig,
                 baseline: np.ndarray | None = None) -> CoreTransform:
    """Sub-pixel residual shifts on a grid of level-0 tiles over a core's box.

    ``sim_before`` is measured with ``baseline`` (the slide-level matrix) when given, so that
    before/after compare the slide-level alignment with the final one at the same scale.
    """
    x, y, w, h = bbox_xywh
    t = cfg.tile_px
    while t > 64 and t > min(w, h) / 2.5:  # small cores: smaller tiles, so tiles see tissue, not glass
        t //= 2
    nx, ny = max(1, math.ceil(w / t)), max(1, math.ceil(h / t))
    x0 = x + (w - nx * t) / 2
    y0 = y + (h - ny * t) / 2
    grid_x = x0 + (np.arange(nx) + 0.5) * t
    grid_y = y0 + (np.arange(ny) + 0.5) * t
    shifts = np.full((ny, nx, 2), np.nan)
    before = np.full((ny, nx), np.nan)
    after = np.full((ny, nx), np.nan)
    base = CoreTransform(matrix)
    for j in range(ny):
        for i in range(nx):
            txy = (round(x0 + i * t), round(y0 + j * t))
            sig = tissue_signal(unstained.read_region(txy, (t, t)), cfg.unstained_modality)
            fixed = structure(sig)
            moving = structure(tissue_signal(sample_transformed(stained, base, txy, (t, t), step=1.0),
                                             cfg.stained_modality))
            b = ncc(fixed, moving)
            after[j, i] = b
            if baseline is None:
                before[j, i] = b
            else:
                ref = sample_transformed(stained, CoreTransform(baseline), txy, (t, t), step=1.0)
                before[j, i] = ncc(fixed, structure(tissue_signal(ref, cfg.stained_modality)))
            if fixed.std() < 1e-3 or moving.std() < 1e-3:
                continue  # glass: no structure to match
            shift, _, _ = phase_cross_correlation(fixed, moving, upsample_factor=20, normalization=None)
            if np.hypot(*shift) > cfg.max_tile_shift_px:
                continue
            a = ncc(fixed, ndi.shift(moving, shift, order=1, mode="nearest"))
            if a > b:
                shifts[j, i] = (-shift[1], -shift[0])
                after[j, i] = a
    shifts = _clean_shift_field(shifts)
    return CoreTransform(matrix, grid_x, grid_y, shifts, before, after)


def _clean_shift_field(shifts: np.ndarray, *, tolerance_px: float = 1.5) -> np.ndarray:
    """Fills missing shifts and replaces outliers with the median of their 3×3 neighbours."""
    out = shifts.copy()
    valid = ~np.isnan(out[..., 0])
    if not valid.any():
        return np.zeros_like(out)
    global_median = np.nanmedian(out.reshape(-1, 2), axis=0)
    ny, nx = valid.shape
    for j in range(ny):
        for i in range(nx):
            nb = shifts[max(0, j - 1) : j + 2, max(0, i - 1) : i + 2].reshape(-1, 2)
            nb = nb[~np.isnan(nb[:, 0])]
            med = np.median(nb, axis=0) if len(nb) else global_median
            if not valid[j, i] or (len(nb) >= 3 and np.hypot(*(out[j, i] - med)) > tolerance_px):
                out[j, i] = med
    return out


# ---------------------------------------------------------------------------------------------
# All stages
# ---------------------------------------------------------------------------------------------
@dataclass
class PairRegistration:
    """Registration of one slide pair: the slide-level affine and one transform per core."""

    matrix: np.ndarray
    coarse_similarity: float
    cores: dict[str, CoreTransform]
    core_similarity: dict[str, tuple[float, float]]

    min_similarity: float = 0.0

    def core_ok(self, core_id: str) -> bool:
        """Whether a core registered well enough for its tiles to be used."""
        return core_id in self.core_similarity and self.core_similarity[core_id][1] >= self.min_similarity

    def to_json(self) -> dict:
        return {"matrix": self.matrix.tolist(), "coarse_similarity": self.coarse_similarity,
                "cores": {k: {**v.to_json(), "sim_before": self.core_similarity[k][0],
                              "sim_after": self.core_similarity[k][1]} for k, v in self.cores.items()}}


def register_pair(unstained: SlideReader, stained: SlideReader, regions: dict[str, tuple[int, int, int, int]],
                  cfg: RegisterConfig = RegisterConfig()) -> PairRegistration:
    """Registers ``stained`` onto ``unstained`` for the given regions (core id -> level-0 bbox).

    Raises:
        InputError: a slide has no mpp.
        RegistrationError: the median similarity after refinement is below ``cfg.min_similarity``
            (different tissue, or a slide of the wrong section).
    """
    for slide in (unstained, stained):
        if slide.mpp is None:
            raise InputError(f"{slide.name}: registration needs the slide's mpp; pass `mpp` when opening it")
    matrix, coarse_sim = coarse_align(unstained, stained, cfg)
    log.info("coarse alignment: NCC %.3f, matrix %s", coarse_sim, np.round(matrix[:2], 4).tolist())
    cores: dict[str, CoreTransform] = {}
    sims: dict[str, tuple[float, float]] = {}
    for core_id, bbox in regions.items():
        m, _, _ = refine_core(unstained, stained, matrix, bbox, cfg)
        tf = refine_tiles(unstained, stained, m, bbox, cfg, baseline=matrix)
        cores[core_id] = tf
        sims[core_id] = (float(np.nanmedian(tf.sim_before)), float(np.nanmedian(tf.sim_after)))
    if sims:
        median_after = float(np.median([s[1] for s in sims.values()]))
        if median_after < cfg.min_similarity:
            raise RegistrationError(
                f"{stained.name} does not match {unstained.name}: structural similarity reached only "
                f"{median_after:.3f} after registration (needs ≥ {cfg.min_similarity}, slide-level NCC "
                f"{coarse_sim:.3f}); check that both scans show the same section")
    weak = [k for k, v in sims.items() if v[1] < cfg.min_core_similarity]
    if weak:
        log.warning("%s: cores %s registered below similarity %.2f; their tiles are left out",
                    stained.name, ", ".join(weak), cfg.min_core_similarity)
    return PairRegistration(matrix, coarse_sim, cores, sims, cfg.min_core_similarity)


def registration_errors(reg: PairRegistration, landmarks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Target registration error (level-0 stained px) per core for truth landmarks
    ``[x_unstained, y_unstained, x_stained, y_stained]``."""
    out = {}
    for core_id, pts in landmarks.items():
        if core_id not in reg.cores:
            continue
        pts = np.asarray(pts, dtype=np.float64)
        mapped = reg.cores[core_id].map_points(pts[:, :2])
        out[core_id] = np.hypot(*(mapped - pts[:, 2:4]).T)
    return out
