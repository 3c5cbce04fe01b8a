"""Resampling kernels shared by the readers: exact affine scaling and streamed area reduction."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


def affine_scale(src: np.ndarray, *, scale_xy: tuple[float, float], offset_xy: tuple[float, float],
                 size_wh: tuple[int, int]) -> np.ndarray:
    """Samples ``src`` at ``(offset + u·scale)`` for output pixel ``u`` (pixel-centre convention).

    Anti-aliased when shrinking: a Gaussian of σ = (s-1)/2 per axis first (scikit-image's rule),
    then bilinear interpolation. Works for any channel count and uint8/uint16/float input.

    Args:
        src: ``(H, W, C)`` source pixels.
        scale_xy: source pixels per output pixel along x and y.
        offset_xy: source coordinate of output pixel (0, 0)'s centre.
        size_wh: output ``(width, height)``.
    """
    sx, sy = scale_xy
    dtype = src.dtype
    work = src.astype(np.float32)
    sig_x, sig_y = max(0.0, (sx - 1) / 2), max(0.0, (sy - 1) / 2)
    m = np.array([[sx, 0.0, offset_xy[0]], [0.0, sy, offset_xy[1]]], dtype=np.float64)
    out = np.empty((size_wh[1], size_wh[0], src.shape[2]), dtype=np.float32)
    for c0 in range(0, src.shape[2], 4):  # OpenCV filters take at most 4 channels at once
        part = np.ascontiguousarray(work[..., c0 : c0 + 4])
        if sig_x > 0.05 or sig_y > 0.05:
            part = cv2.GaussianBlur(part, (0, 0), sigmaX=max(sig_x, 1e-3), sigmaY=max(sig_y, 1e-3),
                                    borderType=cv2.BORDER_REFLECT)
        warped = cv2.warpAffine(part, m, size_wh, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        out[..., c0 : c0 + 4] = warped.reshape(size_wh[1], size_wh[0], -1)
    return _cast(out, dtype)


def remap(src: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, *, blur_sigma: float = 0.0,
          background: float = 0) -> np.ndarray:
    """Samples ``src`` (H, W, C) bilinearly at float pixel coordinates ``(map_x, map_y)``.

    ``blur_sigma`` > 0 low-passes the source first (anti-aliasing when the map shrinks it);
    coordinates outside the source read ``background``.
    """
    dtype = src.dtype
    work = src.astype(np.float32)
    out = np.empty((*map_x.shape, src.shape[2]), dtype=np.float32)
    for c0 in range(0, src.shape[2], 4):
        part = np.ascontiguousarray(work[..., c0 : c0 + 4])
        if blur_sigma > 0.05:
            part = cv2.GaussianBlur(part, (0, 0), blur_sigma, borderType=cv2.BORDER_REFLECT)
        got = cv2.remap(part, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=(float(background),) * 4)
        out[..., c0 : c0 + 4] = got.reshape(*map_x.shape, -1)
    return _cast(out, dtype)


def area_resize(src: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Area-averaging resize of an ``(H, W, C)`` array to ``size_wh`` (for shrinking)."""
    out = np.empty((size_wh[1], size_wh[0], src.shape[2]), dtype=np.float32)
    work = src.astype(np.float32)
    for c0 in range(0, src.shape[2], 4):
        part = cv2.resize(np.ascontiguousarray(work[..., c0 : c0 + 4]), size_wh, interpolation=cv2.INTER_AREA)
        out[..., c0 : c0 + 4] = part.reshape(size_wh[1], size_wh[0], -1)
    return _cast(out, src.dtype)


def area_resize_streamed(read_rows: Callable[[int, int], np.ndarray], *, size_wh: tuple[int, int],
                         out_wh: tuple[int, int], channels: int, dtype: np.dtype,
                         band_px: int = 2048) -> np.ndarray:
    """Shrinks a large image to ``out_wh`` reading it in bands of rows, so memory stays bounded.

    Args:
        read_rows: ``read_rows(y, rows)`` returns rows ``[y, y+rows)`` as ``(rows, W, C)``.
        size_wh: source ``(width, height)``.
        out_wh: output ``(width, height)``, not larger than the source.
    """
    w, h = size_wh
    ow, oh = out_wh
    if h * w <= band_px * band_px * 4:
        return area_resize(read_rows(0, h), out_wh)
    out = np.empty((oh, ow, channels), dtype=dtype)
    fy = h / oh
    rows_per_band = max(1, int(band_px // fy))
    for oy in range(0, oh, rows_per_band):
        oy1 = min(oh, oy + rows_per_band)
        y0, y1 = round(oy * fy), min(h, round(oy1 * fy))
        out[oy:oy1] = area_resize(read_rows(y0, max(1, y1 - y0)), (ow, oy1 - oy))
    return out


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)
