"""The deformable stage of registration: a regularised dense displacement field per core.

After the affine and tile stages the stained core is within a few pixels everywhere, but tissue
stretched by staining still bends between tile centres. This stage estimates the residual flow
between the two structure images (robust pair: clipped, one-sided structure removed) and adds it
to the core's pre-shift field on a denser grid of nodes (``deform_grid_um``), in two rounds.

Flow estimators (``RegisterConfig.deform_method``), chosen by measurement on make-sample pairs at a
20 px elastic warp (six cores, after the tile stage: TRE median 1.05 px, p95 2.50 px):

- ``blocks`` (default): dense phase correlation, one Hann-windowed block per node, all blocks in one
  batched FFT, sub-pixel by a parabola; outliers replaced by their neighbours' median, then
  confidence-weighted Gaussian smoothing on the node grid. Two rounds: median 0.29 px, p95 1.43 px.
- ``ilk`` / ``tvl1``: scikit-image's iterative Lucas-Kanade / TV-L1 on the same images with the
  same regularisation (normalised convolution): at best median ~0.6-0.9 px, p95 ~1.7-2.5 px per
  core, and on the plain (not robust) images they run away to the search limit.

SimpleITK B-splines were not tried (a ~50 MB wheel; the blocks already meet the goal).
A correction is kept only where it raises the robust similarity, block by block
(``deform_check_um``), and then over the whole core; corrections below ``deform_min_px`` (the
estimate's noise on aligned cores) are dropped.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy import fft as sfft
from skimage.registration import optical_flow_ilk, optical_flow_tvl1

from stainldm.wsi._register_signal import block_ncc, robust_pair, structure, tissue_signal
from stainldm.wsi._register_stages import clean_shift_field, compare
from stainldm.wsi._register_transform import CoreTransform, sample_transformed
from stainldm.wsi.reader import SlideReader

if TYPE_CHECKING:
    from stainldm.wsi.register import RegisterConfig

METHODS = ("blocks", "ilk", "tvl1")


def dense_flow(fixed: np.ndarray, moving: np.ndarray, *, method: str = "ilk", radius: int = 12) -> np.ndarray:
    """Flow ``(2, H, W)`` (dy, dx in pixels) such that ``moving(p + flow(p)) ≈ fixed(p)``."""
    if method == "ilk":  # window radius in pixels
        return optical_flow_ilk(fixed, moving, radius=radius, num_warp=5, gaussian=True)
    if method == "tvl1":
        return optical_flow_tvl1(fixed, moving, attachment=10, tightness=0.3, num_warp=5, num_iter=10)
    raise ValueError(f"unknown flow method {method!r}; use one of {METHODS}")


def block_flow(fixed: np.ndarray, moving: np.ndarray, centres_rc: np.ndarray, *, window: int,
               max_shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Dense phase correlation: the shift of ``moving`` against ``fixed`` in a ``window``² block
    around each centre (row, col), all blocks in one batched FFT, sub-pixel by a parabola through
    the peak.

    Returns:
        flow ``(N, 2)`` (dy, dx) with ``moving(p + flow) ≈ fixed(p)``, and each block's peak NCC
        (its confidence; 0 where the block has no structure or the peak lies beyond ``max_shift``).
    """
    half = window // 2
    pad = ((half + 1, half + 1), (half + 1, half + 1))
    fp, mp = np.pad(fixed, pad), np.pad(moving, pad)
    r = np.clip(np.round(centres_rc).astype(int), 0, np.array(fixed.shape) - 1) + 1  # padded top-left
    idx_r = r[:, 0, None] + np.arange(window)[None]
    idx_c = r[:, 1, None] + np.arange(window)[None]
    hann = np.outer(np.hanning(window), np.hanning(window)).astype(np.float32)
    fb = fp[idx_r[:, :, None], idx_c[:, None, :]]
    mb = mp[idx_r[:, :, None], idx_c[:, None, :]]
    fb = (fb - fb.mean(axis=(1, 2), keepdims=True)) * hann
    mb = (mb - mb.mean(axis=(1, 2), keepdims=True)) * hann
    fb, mb = fb.astype(np.float32), mb.astype(np.float32)
    corr = sfft.irfft2(sfft.rfft2(fb, workers=-1) * np.conj(sfft.rfft2(mb, workers=-1)), s=(window, window), workers=-1)
    corr = np.fft.fftshift(corr, axes=(1, 2))  # zero shift at (half, half)
    yy, xx = np.mgrid[:window, :window] - half
    corr[:, np.hypot(yy, xx) > max_shift] = -np.inf
    flat = corr.reshape(len(corr), -1).argmax(axis=1)
    py, px = np.unravel_index(flat, (window, window))
    n = np.arange(len(corr))
    c0 = corr[n, py, px]

    def vertex(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        lo, hi = np.where(np.isfinite(lo), lo, c0), np.where(np.isfinite(hi), hi, c0)
        den = lo - 2 * c0 + hi
        return np.where(den < 0, 0.5 * (lo - hi) / np.where(den < 0, den, -1), 0.0)

    dy = vertex(corr[n, np.maximum(py - 1, 0), px], corr[n, np.minimum(py + 1, window - 1), px])
    dx = vertex(corr[n, py, np.maximum(px - 1, 0)], corr[n, py, np.minimum(px + 1, window - 1)])
    shift = np.column_stack([py - half + dy, px - half + dx])  # fixed(p) ≈ moving(p - shift)
    norm = np.sqrt((fb * fb).sum(axis=(1, 2)) * (mb * mb).sum(axis=(1, 2)))
    conf = np.where(norm > 1e-6, c0 / np.maximum(norm, 1e-6), 0.0)
    return -shift, np.clip(conf, 0, 1)


def regularise(flow: np.ndarray, weight: np.ndarray, *, sigma: float, max_px: float) -> np.ndarray:
    """Confidence-weighted Gaussian smoothing of ``flow`` (2, H, W), capped at ``max_px``; 0 where
    no weight is near (normalised convolution, Knutsson & Westin 1993)."""
    w = cv2.GaussianBlur(weight.astype(np.float32), (0, 0), sigma)
    out = np.empty_like(flow, dtype=np.float32)
    for k in range(2):
        out[k] = cv2.GaussianBlur((flow[k] * weight).astype(np.float32), (0, 0), sigma)
    floor = 0.05 * float(w.max()) + 1e-9
    out = out / np.maximum(w, floor)  # where the weight is faint the mean fades towards 0
    norm = np.hypot(out[0], out[1])
    over = norm > max_px
    out[:, over] *= max_px / norm[over]
    return out


def refine_deform(unstained: SlideReader, stained: SlideReader, tf: CoreTransform,
                  bbox_xywh: tuple[int, int, int, int], cfg: RegisterConfig) -> tuple[CoreTransform, CoreTransform,
                                                                                    float, float]:
    """The deformable stage for one core: ``cfg.deform_iterations`` rounds of flow estimation on
    the robust pair, each added to the pre-shift field on a grid of ``cfg.deform_grid_um`` nodes.

    Returns:
        (kept transform, proposed transform, robust similarity of ``tf``, of the proposal), both
        at ``cfg.deform_mpp``: the proposal is kept only if it scores higher.
    """
    x, y, w, h = bbox_xywh
    margin = 0.05 * max(w, h)
    step = cfg.deform_mpp / unstained.mpp[0]  # level-0 px per pixel
    xy = (x - margin, y - margin)
    size = (max(16, math.ceil((w + 2 * margin) / step)), max(16, math.ceil((h + 2 * margin) / step)))
    fixed = structure(tissue_signal(unstained.read_at_mpp(xy, size, cfg.deform_mpp), cfg.unstained_modality))

    def moving_for(t: CoreTransform) -> np.ndarray:
        return structure(tissue_signal(sample_transformed(stained, t, xy, size, step=step), cfg.stained_modality))

    g = cfg.deform_grid_um / unstained.mpp[0]  # node spacing, level-0 px
    nx, ny = max(2, math.ceil((w + 2 * margin) / g) + 1), max(2, math.ceil((h + 2 * margin) / g) + 1)
    grid_x = x + w / 2 + (np.arange(nx) - (nx - 1) / 2) * g
    grid_y = y + h / 2 + (np.arange(ny) - (ny - 1) / 2) * g
    gx, gy = np.meshgrid(grid_x, grid_y)
    nodes = np.column_stack([gx.ravel(), gy.ravel()])
    rc = np.column_stack([(nodes[:, 1] - xy[1]) / step - 0.5, (nodes[:, 0] - xy[0]) / step - 0.5])
    first = moving = moving_for(tf)
    tile_x, tile_y = tf.sim_grid
    proposed = tf
    for _ in range(cfg.deform_iterations):
        f2, m2, keep = robust_pair(fixed, moving, radius=cfg.one_sided_radius)
        d = _node_flow(f2, m2, keep, rc, (ny, nx), cfg, step) * step  # (ny, nx, 2) dx, dy level-0 px
        # pre-shift fields compose by adding, to first order: moving(p + f) = stained(M(p + f + d(p)))
        shifts = proposed.displacement(nodes).reshape(ny, nx, 2) + d
        proposed = CoreTransform(tf.matrix, grid_x, grid_y, shifts, tf.sim_before, tf.sim_after, tile_x, tile_y)
        moving = moving_for(proposed)
    # local check: blocks of the core where the new field does not raise the robust similarity
    # keep the tile stage's field
    block = max(16, round(cfg.deform_check_um / cfg.deform_mpp))
    fb, mb, keep_b = robust_pair(fixed, first, radius=cfg.one_sided_radius)
    fa, ma, keep_a = robust_pair(fixed, moving, radius=cfg.one_sided_radius)
    worse = block_ncc(fa, ma, keep_a & keep_b, block) <= block_ncc(fb, mb, keep_a & keep_b, block)
    bi = np.clip(np.floor(rc / block + 0.5 / block).astype(int), 0, np.array(worse.shape) - 1)
    rejected = worse[bi[:, 0], bi[:, 1]].reshape(ny, nx)
    if rejected.any():
        shifts = proposed.shifts.copy()
        shifts[rejected] = tf.displacement(nodes).reshape(ny, nx, 2)[rejected]
        proposed = CoreTransform(tf.matrix, grid_x, grid_y, shifts, tf.sim_before, tf.sim_after, tile_x, tile_y)
        moving = moving_for(proposed)
    before, after = compare(fixed, first, moving, radius=cfg.one_sided_radius)
    return (proposed if after > before else tf), proposed, before, after


def _node_flow(f2: np.ndarray, m2: np.ndarray, keep: np.ndarray, rc: np.ndarray, shape: tuple[int, int],
               cfg: RegisterConfig, step: float) -> np.ndarray:
    """The regularised residual flow at the nodes ``rc`` (row, col in pixels of this stage):
    ``shape + (2,)``, (dx, dy) in pixels of this stage."""
    max_px = cfg.max_deform_px / step
    sigma_nodes = cfg.deform_sigma_um / cfg.deform_grid_um
    if cfg.deform_method == "blocks":
        window = 2 * max(8, round(cfg.deform_window_um / cfg.deform_mpp / 2))
        flow, conf = block_flow(f2, m2, rc, window=window, max_shift=max_px)
        field = flow[:, ::-1].reshape(*shape, 2).copy()
        conf = conf.reshape(shape)
        field[conf < 0.1] = np.nan  # no confident peak: filled from the neighbours
        field = clean_shift_field(field, tolerance_px=1.0)
        weight = np.maximum(conf, 0.1).astype(np.float32)
        smooth = [cv2.GaussianBlur((field[..., k] * weight).astype(np.float32), (0, 0), sigma_nodes)
                  for k in range(2)]
        out = np.stack(smooth, axis=-1) / cv2.GaussianBlur(weight, (0, 0), sigma_nodes)[..., None]
    else:
        flow = dense_flow(f2, m2, method=cfg.deform_method, radius=max(2, round(cfg.deform_window_um / 4 / cfg.deform_mpp)))
        dense = regularise(flow, np.minimum(f2, m2) * keep, sigma=cfg.deform_sigma_um / cfg.deform_mpp, max_px=max_px)
        r, c = rc[:, 0].astype(np.float32)[None], rc[:, 1].astype(np.float32)[None]
        out = np.stack([cv2.remap(dense[k], c, r, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
                        for k in (1, 0)], axis=-1).reshape(*shape, 2)
    norm = np.hypot(out[..., 0], out[..., 1])
    out = out * np.minimum(1.0, max_px / np.maximum(norm, 1e-9))[..., None]
    # corrections below the noise of the estimate (measured: ~0.2-0.3 px on aligned cores) would
    # only add that noise to a field the tile stage already got right
    out[norm < cfg.deform_min_px / step] = 0.0
    return out
