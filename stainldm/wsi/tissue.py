"""Tissue masks from low-resolution images of H&E, unstained brightfield and fluorescence slides.

Pure functions over a thumbnail (``H×W×C`` array); :func:`slide_mask` reads the thumbnail at a
fixed mpp so that areas in config are physical (µm²), whatever the scanner.

Each modality has its own feature, measured against an *absolute* model of glass, so a field that
is all tissue, all glass or anything between comes out right (a rank split, such as "the darker
half is glass", calls half of a tissue-filled field glass):

* **H&E** — optical density (OD = -log10(I/I₀)) and saturation, absolute by nature; pen ink
  (green, blue, black), which is as dense as tissue, is cut by hue and value before thresholding.
  Otsu's threshold separates glass from pale tissue, bounded below by a noise floor (an empty slide
  stays empty) and used only when the class below it looks like glass (OD and saturation under
  that floor): on a field with no glass it would split the tissue in two.
* **unstained brightfield** — glass is the brightest flat level (white after the scanner's white
  balance). Tissue is nearly transparent, a few percent darker at most, but textured: the feature
  is the image's structure at cellular scale (4-10 µm) beyond what its white noise explains, in
  8-bit gray levels, against an absolute floor (``brightfield_texture``); and darkness below the
  glass white (the level of the flat areas) beyond their own spread (shading, noise), or below
  the configured white by ``brightfield_darkness`` where nothing is flat. Glass, however noisy,
  is flat at that scale; shading is slower, and scanner field-of-view seams are lines that the
  clean-up removes.
* **fluorescence** (autofluorescence, any channel count and dtype) — glass is the camera offset
  plus a few background photons: the darkest level, flat. Its level is the 1st percentile of each
  channel (exact zeros, which are unscanned areas, left out) and its noise the median absolute
  Haar detail of the pixels at that level. Tissue is brighter than glass, in some channel, by
  ``fluorescence_contrast`` of the glass level and by ``noise_sigmas`` of its noise. A field with
  no glass has no dark level: its darkest tissue is the reference and nearly all of it is tissue.

Clean-up: closing to join faint fatty tissue, hole filling, opening to drop coverslip edges, bubble
rims, field-of-view seams and hair-thin scratches, then removal of specks below ``min_area_um2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage import color, filters, morphology

from stainldm.errors import InputError

Modality = Literal["auto", "he", "brightfield", "fluorescence"]

# Brightfield texture: band-pass between these scales (µm), nuclei and fibres, not shading.
_TEXTURE_UM = (4.0, 10.0)
_TEXTURE_WINDOW_UM = 8.0
# Optics (PSF, a thumbnail's anti-aliasing) and the brightfield texture window spread tissue evidence
# about this far onto the glass beside a tissue edge: the evidence is eroded by it.
_ERODE_UM = 4.0
_BORDER_PX = 2  # read_at_mpp blends the area outside a slide into its outermost pixels


@dataclass(frozen=True)
class TissueConfig:
    """Parameters of tissue detection (physical units, so they hold across scanners).

    Attributes:
        mask_mpp: µm per pixel of the image the mask is computed on.
        min_area_um2: connected regions smaller than this are dust or debris.
        max_hole_um2: holes smaller than this inside tissue are filled (fat, tears).
        close_um: radius of the closing that joins loose, faint tissue.
        open_um: radius of the opening that removes thin lines (coverslip edges, scratches, bubble rims).
        sensitivity: scales every threshold; > 1 keeps fainter tissue, < 1 is stricter.
        noise_sigmas: tissue differs from glass by at least this many standard deviations of the
            glass's noise (fluorescence).
        fluorescence_contrast: fluorescence tissue is brighter than glass (camera offset plus
            background) by at least this fraction of the glass level, in some channel; covers the
            illumination's shading of the glass.
        brightfield_texture: brightfield tissue has at least this RMS of structure at 4-10 µm scale
            beyond the image's white noise, in 8-bit gray levels (glass has none; a 4 µm/px
            thumbnail of unstained tissue about 0.5).
        brightfield_darkness: brightfield tissue darker than the glass white by this fraction is
            tissue even where it is smooth; covers the illumination's shading of the glass.
        brightfield_white: the glass white, as a fraction of the dtype's maximum, for a
            brightfield field with no flat area to measure it on (white-balanced scanners put
            glass at 0.9-1.0).
    """

    mask_mpp: float = 4.0
    min_area_um2: float = 20_000.0
    max_hole_um2: float = 50_000.0
    close_um: float = 16.0
    open_um: float = 16.0
    sensitivity: float = 1.0
    noise_sigmas: float = 5.0
    fluorescence_contrast: float = 0.3
    brightfield_texture: float = 0.25
    brightfield_darkness: float = 0.06
    brightfield_white: float = 0.94


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
    sensitivity = max(cfg.sensitivity, 1e-3)
    if modality == "he":
        feature, floor, exclude = _he_feature(img)
        mask = _he_threshold(feature, floor=floor, sensitivity=sensitivity) & ~exclude
    elif modality == "brightfield":
        mask = _brightfield_feature(img, mpp=mpp, cfg=cfg) > 1 / sensitivity
    elif modality == "fluorescence":
        mask = _fluorescence_feature(img, mpp=mpp, cfg=cfg) > 1 / sensitivity
    else:
        raise InputError(f"unknown tissue modality '{modality}'; use auto, he, brightfield or fluorescence")
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
# Features, each measured against its modality's glass
# ---------------------------------------------------------------------------------------------
def _he_feature(img: np.ndarray):
    """(feature, noise floor for the threshold, pixels to exclude): OD and saturation, ~1 on tissue."""
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


def _he_threshold(feature: np.ndarray, *, floor: float, sensitivity: float) -> np.ndarray:
    """Otsu's threshold, bounded below by ``floor``; the floor alone where Otsu's lower class is
    not glass (a field with no glass, which Otsu would split in two)."""
    finite = np.isfinite(feature)
    values = feature.ravel() if finite.all() else feature[finite]
    if values.size == 0 or float(values.max() - values.min()) < 1e-9:
        return feature > floor / sensitivity
    k = max(1, math.isqrt(values.size // 1_000_000))  # Otsu from about a million pixels
    sample = values[::k * k]
    t = float(filters.threshold_otsu(sample))
    below = sample[sample <= t]
    if below.size == 0 or float(np.median(below)) > floor:  # the lower class is tissue too
        t = floor
    return feature > max(t, floor) / sensitivity


def _brightfield_feature(img: np.ndarray, *, mpp: float, cfg: TissueConfig) -> np.ndarray:
    """Tissue evidence of an unstained brightfield image, 1 at the threshold: the larger of its
    cellular-scale texture over ``brightfield_texture`` and its darkness below the glass white
    over the glass's own spread (``noise_sigmas`` robust σ of the flat areas' level), or, with no
    flat area, below ``brightfield_white`` over ``brightfield_darkness`` of it."""
    gray = _unit(img).mean(axis=2, dtype=np.float32) * np.float32(255)  # 8-bit gray levels
    inner = _interior(gray)
    s1, s2 = (max(0.5, um / mpp) for um in _TEXTURE_UM)
    fine, coarse = _blur(gray, s1), _blur(gray, s2)
    band = fine - coarse
    energy = _blur(band * band, max(0.5, _TEXTURE_WINDOW_UM / mpp))
    # White noise (whatever its level: glass is flat however noisy) leaks into the band by the
    # norm of the band-pass kernel; subtract its expected energy.
    leak = _band_gain(s1, s2) * _white_noise(inner)
    energy -= np.float32(leak * leak)
    np.clip(energy, 0, None, out=energy)
    texture = np.sqrt(energy, out=energy) / np.float32(cfg.brightfield_texture)
    texture = _erode(texture, round(_ERODE_UM / mpp))
    # The glass white: the level of the flat areas, give or take their spread (shading, noise);
    # with none, the configured white give or take `brightfield_darkness`.
    flat = _interior(texture) < 0.5
    levels = _interior(coarse)[flat]
    if levels.size >= max(16, 0.01 * flat.size):
        white = float(np.median(levels))
        margin = cfg.noise_sigmas * 1.4826 * float(np.median(np.abs(levels - white)))
    else:
        white = 255.0 * cfg.brightfield_white
        margin = cfg.brightfield_darkness * white
    darkness = (np.float32(white) - coarse) / np.float32(max(margin, 0.5))
    return np.maximum(texture, darkness, out=texture)


def _fluorescence_feature(img: np.ndarray, *, mpp: float, cfg: TissueConfig) -> np.ndarray:
    """Tissue evidence of a fluorescence image, 1 at the threshold: the largest over channels of
    the signal above the glass level over the glass's margin (``fluorescence_contrast`` of its
    level, or ``noise_sigmas`` of its noise, whichever is larger)."""
    # float32 throughout, one channel at a time: a whole-slide mask is the largest array
    # staining holds, so its bytes per pixel set how memory grows with the slide.
    evidence = np.full(img.shape[:2], -np.inf, np.float32)
    k = max(1, math.isqrt(evidence.size // 1_000_000))  # percentiles from about a million pixels
    for c in range(img.shape[2]):
        raw = img[..., c]
        x = raw.astype(np.float32)  # not blurred: a blur would move the edge of a bright core outwards
        sample = _interior(x)[::k, ::k]
        lit = sample[sample > 0]  # exact zeros: unscanned, or outside the slide
        if lit.size == 0:
            continue
        glass = float(np.percentile(lit, 1))
        # Noise of the glass level, from its pixels' Haar detail; at most the shot noise of a camera
        # of up to 4 ADU per photo-electron plus 2 ADU of read noise: the darkest pixels of a field
        # with no glass are tissue, whose texture is no noise.
        noise = _white_noise(_interior(raw), below=glass * (1 + cfg.fluorescence_contrast), robust=True)
        noise = min(noise, 2 * math.sqrt(max(glass, 0.0)) + 2)
        margin = max(cfg.fluorescence_contrast * abs(glass), cfg.noise_sigmas * noise, 1e-6)
        x -= np.float32(glass)
        x *= np.float32(1 / margin)
        np.maximum(evidence, x, out=evidence)
        del x
    return _erode(evidence, round(_ERODE_UM / mpp))


# ---------------------------------------------------------------------------------------------
def _interior(x: np.ndarray) -> np.ndarray:
    """``x`` without its outermost pixels, where the image is large enough to spare them."""
    b = _BORDER_PX
    return x[b:-b, b:-b] if min(x.shape[:2]) > 8 * b else x


def _erode(evidence: np.ndarray, r: int) -> np.ndarray:
    """Grey erosion of a float32 evidence map by a disc of radius ``r`` px (none when 0)."""
    if r < 1:
        return evidence
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.erode(evidence, disc, borderType=cv2.BORDER_REPLICATE)


def _kernel(sigma: float) -> np.ndarray:
    return cv2.getGaussianKernel(2 * math.ceil(3 * sigma) + 1, sigma, cv2.CV_64F)[:, 0]


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (σ in px) of a float32 image, borders reflected."""
    n = len(_kernel(sigma))
    return cv2.GaussianBlur(np.ascontiguousarray(x, dtype=np.float32), (n, n), sigma, borderType=cv2.BORDER_REFLECT)


def _band_gain(s1: float, s2: float) -> float:
    """Standard deviation of white noise of σ = 1 after ``_blur(s1) - _blur(s2)``."""
    k1, k2 = _kernel(s1), _kernel(s2)
    pad = (len(k2) - len(k1)) // 2
    k1 = np.pad(k1, pad) if pad >= 0 else k1
    k2 = np.pad(k2, -pad) if pad < 0 else k2
    return float(np.sqrt(np.sum((np.outer(k1, k1) - np.outer(k2, k2)) ** 2)))


def _white_noise(x: np.ndarray, *, below: float | None = None, robust: bool = False) -> float:
    """Standard deviation of the white (pixel-to-pixel) noise of ``x``, from the diagonal Haar
    detail of its 2×2 cells (about a million of them): their RMS, or with ``robust`` their median
    absolute value / 0.6745 (Donoho & Johnstone 1994); with ``below``, of the cells whose mean is
    at most ``below`` (at least the darkest 1%)."""
    k = max(1, math.isqrt(x.shape[0] * x.shape[1] // 4_000_000))
    h, w = (x.shape[0] // 2 // k) * 2 * k, (x.shape[1] // 2 // k) * 2 * k
    if h == 0 or w == 0:
        return 0.0
    a, b = x[0:h:2 * k, 0:w:2 * k].astype(np.float32), x[0:h:2 * k, 1:w:2 * k].astype(np.float32)
    c, d = x[1:h:2 * k, 0:w:2 * k].astype(np.float32), x[1:h:2 * k, 1:w:2 * k].astype(np.float32)
    detail = np.abs(a - b - c + d).ravel() / 2
    if below is not None:
        mean = ((a + b + c + d) / 4).ravel()
        keep = mean <= max(below, float(np.percentile(mean, 1)))
        detail = detail[keep]
    if robust:
        return float(np.median(detail)) / 0.6745
    return float(np.sqrt(np.mean(detail * detail)))


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
