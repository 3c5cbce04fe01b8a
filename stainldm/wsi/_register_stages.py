"""The rigid and tile stages of :mod:`stainldm.wsi.register`: slide-level search, per-core ECC and
per-tile phase correlation, each able to check its move with its own (robust) measure."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.registration import phase_cross_correlation

from stainldm.wsi._register_signal import ncc, robust_pair, structure, tissue_signal
from stainldm.wsi._register_transform import CoreTransform, sample_transformed
from stainldm.wsi.reader import SlideReader

if TYPE_CHECKING:
    from stainldm.wsi.register import RegisterConfig

log = logging.getLogger(__name__)


def compare(fixed: np.ndarray, before: np.ndarray, after: np.ndarray, *, radius: int = 3) -> tuple[float, float]:
    """Robust similarity of two candidates (structure images in the fixed frame) to ``fixed``, on
    the pixels that neither candidate marks as one-sided, so both are scored on the same pixels."""
    fb, mb, keep_b = robust_pair(fixed, before, radius=radius)
    fa, ma, keep_a = robust_pair(fixed, after, radius=radius)
    keep = keep_a & keep_b
    if keep.sum() < 16:
        return 0.0, 0.0
    return ncc(fb, mb, keep), ncc(fa, ma, keep)


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


def ecc(template: np.ndarray, moving: np.ndarray, warp: np.ndarray, *, iterations: int = 200,
        motion: int = cv2.MOTION_AFFINE, mask: np.ndarray | None = None) -> np.ndarray:
    """ECC (Evangelidis & Psarakis 2008; affine by default) over ``mask`` of the template; returns
    the refined 2×3 warp (template coords -> moving coords), or the input warp when ECC does not
    converge."""
    w = warp.astype(np.float32).copy()
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-6)
    m = None if mask is None else mask.astype(np.uint8)
    try:
        _, w = cv2.findTransformECC(template.astype(np.float32), moving.astype(np.float32), w, motion, criteria, m, 1)
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
    warp = ecc(_pad_to(fixed, H, W), _pad_to(moving, H, W), warp)
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
# Stage 2: per-core rigid ECC
# ---------------------------------------------------------------------------------------------
def refine_core(unstained: SlideReader, stained: SlideReader, matrix: np.ndarray,
                bbox_xywh: tuple[int, int, int, int],
                cfg: RegisterConfig) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Rigid ECC on gradient magnitudes around one core.

    With ``cfg.stage_checks``, ECC runs on the robust pair (clipped, one-sided structure removed
    and masked out) and its move is kept only if the robust similarity at this stage's resolution
    rises; otherwise (the original stage) if the plain gradient NCC does not fall.

    Returns:
        (kept matrix, proposed matrix, similarity of the input, similarity of the proposal).
    """
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
    # Rigid (rotation + shift) per core: the slide-level stage already took the affine part; more
    # freedom here fits noise on faint modalities (unstained brightfield).
    if cfg.stage_checks:
        f2, m2, keep = robust_pair(fixed, moving, radius=cfg.one_sided_radius)
        warp = ecc(f2, m2, np.eye(3)[:2], motion=cv2.MOTION_EUCLIDEAN, mask=keep)
    else:
        warp = ecc(fixed, moving, np.eye(3)[:2], motion=cv2.MOTION_EUCLIDEAN)
    to_grid = np.array([[1 / step, 0, -xy[0] / step - 0.5], [0, 1 / step, -xy[1] / step - 0.5], [0, 0, 1]])
    to_level0 = np.array([[step, 0, xy[0] + 0.5 * step], [0, step, xy[1] + 0.5 * step], [0, 0, 1]])
    refined = matrix @ to_level0 @ np.vstack([warp, [0, 0, 1]]) @ to_grid
    if cfg.stage_checks:
        before, after = compare(fixed, moving, moving_for(refined), radius=cfg.one_sided_radius)
        kept = after > before
    else:
        before, after = ncc(fixed, moving), ncc(fixed, moving_for(refined))
        kept = after >= before  # ECC wandered off: keep the slide-level estimate
    return (refined if kept else matrix), refined, before, after


# ---------------------------------------------------------------------------------------------
# Stage 3: per-tile residual shifts
# ---------------------------------------------------------------------------------------------
def refine_tiles(unstained: SlideReader, stained: SlideReader, matrix: np.ndarray,
                 bbox_xywh: tuple[int, int, int, int], cfg: RegisterConfig,
                 baseline: np.ndarray | None = None) -> CoreTransform:
    """Sub-pixel residual shifts on a grid of level-0 tiles over a core's box.

    ``sim_before`` is measured with ``baseline`` (the slide-level matrix) when given, so that
    before/after compare the slide-level alignment with the final one at the same scale. Both are
    plain gradient NCC (what the refusal thresholds were measured with). With ``cfg.stage_checks``
    a tile's shift is kept only if it raises the robust
    similarity (robust to one-sided structure); otherwise if it raises the plain NCC.
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
            fixed = structure(tissue_signal(unstained.read_region(txy, (t, t)), cfg.unstained_modality))
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
            # estimated on the plain structure images (measured: the robust pair's clipped, masked
            # images give noisier peaks), checked with the robust measure below
            shift, _, _ = phase_cross_correlation(fixed, moving, upsample_factor=20, normalization=None)
            if np.hypot(*shift) > cfg.max_tile_shift_px:
                continue
            shifted = ndi.shift(moving, shift, order=1, mode="nearest")
            a = ncc(fixed, shifted)
            if cfg.stage_checks:
                rb, ra = compare(fixed, moving, shifted, radius=cfg.one_sided_radius)
                ok = ra > rb
            else:
                ok = a > b
            if ok:
                shifts[j, i] = (-shift[1], -shift[0])
                after[j, i] = a
    shifts = clean_shift_field(shifts)
    return CoreTransform(matrix, grid_x, grid_y, shifts, before, after)


def clean_shift_field(shifts: np.ndarray, *, tolerance_px: float = 1.5) -> np.ndarray:
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
