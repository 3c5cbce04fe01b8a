"""Tissue masks from low-resolution images of H&E, unstained brightfield and fluorescence slides.

Pure functions over a thumbnail (``H×W×C`` array); :func:`slide_tissue_mask` reads the thumbnail
at a fixed mpp so that areas in config are physical (µm²), whatever the scanner.

Each modality has its own foreground feature, then the same clean-up:

* **H&E** — optical density (OD = -log10(I/I₀)) and saturation; pen ink (green, blue, black), which
  is as dense as tissue, is cut by hue and value before thresholding.
* **unstained brightfield** — tissue is nearly transparent: only a few percent darker than the
  glass, but textured. The feature is darkness below the glass level plus local contrast, scaled by
  the glass's own noise.
* **fluorescence** (autofluorescence, any channel count) — dark background: per-channel robust
  normalisation, summed, on a log scale.

Clean-up: Otsu threshold (bounded by a noise floor so an empty slide stays empty), closing to join
faint fatty tissue, hole filling, opening to drop coverslip edges, bubble rims and hair-thin
scratches, then removal of specks below ``min_area_um2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage import color, filters, morphology

from stainldm.errors import InputError

Modality = Literal["auto", "he", "brightfield", "fluorescence"]


@dataclass(frozen=True)
class TissueConfig:
    """Parameters of tissue detection (physical units, so they hold across scanners).

    Attributes:
        mask_mpp: µm per pixel of the image the mask is computed on.
        min_area_um2: connected regions smaller than this are dust or debris.
        max_hole_um2: holes smaller than this inside tissue are filled (fat, tears).
        close_um: radius of the closing that joins loose, faint tissue.
        open_um: radius of the opening that removes thin lines (coverslip edges, scratches, bubble rims).
        sensitivity: scales the threshold; > 1 keeps fainter tissue, < 1 is stricter.
    """

    mask_mpp: float = 4.0
    min_area_um2: float = 20_000.0
    max_hole_um2: float = 50_000.0
    close_um: float = 16.0
    open_um: float = 16.0
    sensitivity: float = 1.0


def tissue_mask(image: np.ndarray, *, mpp: float, modality: Modality = "auto",
                cfg: TissueConfig = TissueConfig()) -> np.ndarray:
    """Boolean tissue mask of a low-resolution slide image.

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` array: RGB uint8 (H&E or unstained), gray, or
            fluorescence of any channel count and dtype.
        mpp: µm per pixel of ``image`` (converts the config's µm to pixels).
        modality: which feature to use; ``"auto"`` guesses from channels, dtype, background
            brightness and colour saturation (see :func:`guess_modality`).
        cfg: thresholds and morphology sizes.

    Returns:
        ``(H, W)`` bool mask, True on tissue.
    """
    img = image[..., None] if image.ndim == 2 else image
    if img.ndim != 3 or img.shape[0] < 2 or img.shape[1] < 2:
        raise InputError(f"tissue_mask: expected an H×W×C image, got shape {image.shape}")
    if modality == "auto":
        modality = guess_modality(img)
    if modality == "he":
        feature, floor, exclude = _he_feature(img)
    elif modality == "brightfield":
        feature, floor, exclude = _brightfield_feature(img)
    elif modality == "fluorescence":
        feature, floor, exclude = _fluorescence_feature(img)
    else:
        raise InputError(f"unknown tissue modality '{modality}'; use auto, he, brightfield or fluorescence")
    mask = _threshold(feature, floor=floor, sensitivity=cfg.sensitivity) & ~exclude
    return _clean(mask, mpp=mpp, cfg=cfg)


def guess_modality(image: np.ndarray) -> Literal["he", "brightfield", "fluorescence"]:
    """Guesses the imaging modality of an ``H×W×C`` image from its background and colour.

    Dark borders mean fluorescence; bright borders with coloured content mean H&E; bright borders
    with (nearly) gray content mean unstained brightfield.
    """
    img = image[..., None] if image.ndim == 2 else image
    as_float = _unit(img)
    border = np.concatenate([as_float[0], as_float[-1], as_float[:, 0], as_float[:, -1]])
    if np.median(border) < 0.35:
        return "fluorescence"
    if img.shape[2] == 3:
        sat = color.rgb2hsv(as_float[..., :3])[..., 1]
        if np.percentile(sat, 95) > 0.12:
            return "he"
    return "brightfield"


def slide_mask(slide, cfg: TissueConfig = TissueConfig(), *, modality: Modality = "auto") -> np.ndarray:
    """Tissue mask of a whole :class:`~stainldm.wsi.reader.SlideReader` at ``cfg.mask_mpp``.

    Raises:
        InputError: the slide does not record its mpp.
    """
    if slide.mpp is None:
        raise InputError(f"{slide.name}: the slide does not record its mpp; pass `mpp`")
    w, h = slide.dimensions
    size = (max(2, math.ceil(w * slide.mpp[0] / cfg.mask_mpp)), max(2, math.ceil(h * slide.mpp[1] / cfg.mask_mpp)))
    thumb = slide.read_at_mpp((0, 0), size, cfg.mask_mpp)
    return tissue_mask(thumb, mpp=cfg.mask_mpp, modality=modality, cfg=cfg)


def tissue_fraction(mask: np.ndarray) -> float:
    """Fraction of the mask that is tissue."""
    return float(np.count_nonzero(mask)) / mask.size if mask.size else 0.0


# ---------------------------------------------------------------------------------------------
# Features: each returns (feature, noise floor for the threshold, pixels to exclude)
# ---------------------------------------------------------------------------------------------
def _he_feature(img: np.ndarray):
    if img.shape[2] != 3:
        raise InputError(f"H&E tissue detection needs an RGB image, got {img.shape[2]} channels")
    rgb = _unit(img)
    od = -np.log10(np.clip(rgb, 1 / 255, 1.0))  # (H, W, 3) optical density
    hsv = color.rgb2hsv(rgb)
    hue, sat, val = hsv[..., 0] * 360, hsv[..., 1], hsv[..., 2]
    # Eosin and haematoxylin span pink..purple..blue-violet (about 250°-360° and 0°-30°).
    green_cyan_ink = (hue > 70) & (hue < 200) & (sat > 0.2)
    blue_ink = (hue >= 200) & (hue < 245) & (sat > 0.45)
    black_ink = (val < 0.2) & (sat < 0.35)
    ink = ndi.binary_dilation(green_cyan_ink | blue_ink | black_ink, iterations=2)
    feature = 0.5 * od.mean(axis=2) / 0.3 + 0.5 * sat / 0.25  # both ~1 on typical tissue
    return feature, 0.25, ink


def _brightfield_feature(img: np.ndarray):
    gray = _unit(img).mean(axis=2)
    # Glass level: the brightest mode of the histogram (robust whether glass or tissue dominates).
    hist, edges = np.histogram(gray, bins=256, range=(float(gray.min()), float(gray.max()) + 1e-6))
    upper = np.arange(256) >= np.searchsorted(edges, np.median(gray)) - 1
    glass = float(edges[np.argmax(np.where(upper, hist, -1))]) + 0.5 * float(edges[1] - edges[0])
    dark = filters.gaussian(glass - gray, 1.5)  # smoothed darkness below the glass
    local = np.sqrt(np.clip(filters.gaussian(gray**2, 2) - filters.gaussian(gray, 2) ** 2, 0, None))
    # Noise of both features, measured on pixels brighter than the glass level (surely glass):
    # darkness there is half-normal, local contrast there is the glass's own.
    on_glass = dark < 0
    if np.count_nonzero(on_glass) < 16:
        return np.zeros_like(gray), 1.0, np.zeros_like(gray, bool)
    sigma_dark = max(float(np.sqrt(np.mean(dark[on_glass] ** 2))), 1e-4)
    loc = local[on_glass]
    sigma_loc = max(1.4826 * float(np.median(np.abs(loc - np.median(loc)))), 1e-4)
    z_dark = dark / sigma_dark
    z_texture = (local - float(np.median(loc))) / sigma_loc
    return np.maximum(z_dark, z_texture), 5.0, np.zeros_like(gray, bool)


def _fluorescence_feature(img: np.ndarray):
    # float32 throughout, channels summed in place: a whole-slide mask is the largest array
    # staining holds, so its bytes per pixel set how memory grows with the slide.
    total = np.zeros(img.shape[:2], np.float32)
    k = max(1, math.isqrt(total.size // 1_000_000))  # percentiles from about a million pixels
    for c in range(img.shape[2]):
        x = img[..., c].astype(np.float32)
        lo, hi = np.percentile(x[::k, ::k], [2, 99.8])
        x -= lo
        x *= 1 / max(float(hi - lo), 1e-6)
        np.clip(x, 0, 1, out=x)
        total += x
        del x
    total /= img.shape[2]
    total = filters.gaussian(total, 1.0, preserve_range=True).astype(np.float32, copy=False)
    bg = total[total <= np.percentile(total[::k, ::k], 50)]
    noise = max(1.4826 * float(np.median(np.abs(bg - np.median(bg)))), 1e-3)
    total -= float(np.median(bg))
    total /= noise
    return total, 5.0, np.zeros(total.shape, bool)


# ---------------------------------------------------------------------------------------------
def _threshold(feature: np.ndarray, *, floor: float, sensitivity: float) -> np.ndarray:
    finite = np.isfinite(feature)
    values = feature.ravel() if finite.all() else feature[finite]
    if values.size == 0 or float(values.max() - values.min()) < 1e-9:
        return np.zeros(feature.shape, bool)
    t = filters.threshold_otsu(values)
    t = max(t, floor) / max(sensitivity, 1e-3)
    return feature > t


def _clean(mask: np.ndarray, *, mpp: float, cfg: TissueConfig) -> np.ndarray:
    px_area = mpp * mpp
    close_r = max(0, round(cfg.close_um / mpp))
    open_r = max(0, round(cfg.open_um / mpp))
    if close_r:  # pad so that closing does not eat tissue touching the border
        padded = np.pad(mask, close_r, mode="edge")
        mask = ndi.binary_closing(padded, structure=morphology.disk(close_r))[close_r:-close_r, close_r:-close_r]
    holes = ndi.binary_fill_holes(mask) & ~mask
    mask = mask | _small_components(holes, max(1.0, cfg.max_hole_um2 / px_area))
    if open_r:
        mask = ndi.binary_opening(mask, structure=morphology.disk(open_r))
    return mask & ~_small_components(mask, max(1.0, cfg.min_area_um2 / px_area))


def _small_components(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """The connected components of ``mask`` with fewer than ``max_area_px`` pixels."""
    labels, n = ndi.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    small = sizes < max_area_px
    small[0] = False
    return small[labels]


def _unit(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    x = img.astype(np.float32)
    hi = float(np.percentile(x, 99.9)) or 1.0
    return np.clip(x / hi, 0, 1)


# ---------------------------------------------------------------------------------------------
# A fixed-threshold mask for known H&E on glass
# ---------------------------------------------------------------------------------------------
# Natural-log optical density of each 8-bit value (+1 keeps 0 finite).
_OD_LUT = (-np.log((np.arange(256) + 1.0) / 256.0)).astype(np.float32)


def he_fixed_threshold_mask(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel H&E tissue mask with fixed saturation / optical-density thresholds.

    Unlike :func:`tissue_mask` it adapts to nothing (no Otsu threshold, no ink removal, no
    morphological clean-up), so a pixel's answer does not depend on the rest of the image: right
    for masking pieces of one known H&E slide consistently, not for unknown scans.

    Args:
        rgb: ``(H, W, 3)`` uint8 H&E on glass.

    Returns:
        ``(H, W)`` bool: saturation above 0.08 or summed (natural-log) OD above 0.45.
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    sat = (mx - mn).astype(np.float32) / np.maximum(mx, 1)
    od = _OD_LUT[r] + _OD_LUT[g] + _OD_LUT[b]
    return (sat > 0.08) | (od > 0.45)
