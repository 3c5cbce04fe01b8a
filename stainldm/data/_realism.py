"""One-sided structures and per-slide optics: what makes a simulated pair look like a real one.

A make-sample pair computes the unstained image from the same H&E, so by default both slides
show exactly the same structures. In a real pair each modality shows things the other does not,
and the two scans differ in focus, noise and contrast. Registration that is accurate on the
identical-structure pairs can be biased on real ones; :class:`RealismConfig` (``realism`` in
the sample config, off by default) puts these differences into the simulation:

* **H&E only** (the stained slide): brown DAB-like chromogen or haemosiderin deposits, dark
  melanin-like pigment, the stained slide's own coverslip dust;
* **unstained only**: bright autofluorescent granules (lipofuscin-laden macrophages, eosinophil
  granules, red-cell clusters), debris (lint fibres and fragments, on tissue and on glass), the
  unstained slide's own dust; in brightfield the same things absorb instead of glowing;
* **one side lacks some nuclei**: a fraction of the nuclei found in the H&E (haematoxylin blobs
  after colour deconvolution) is filled with the surrounding stroma colour on one side only;
* **per-slide optics**: each slide its own extra blur (focus), the H&E its own stain strength
  and camera noise, the unstained slide its own exposure (shot noise).

**The truth stays exact.** Tissue-bound structures (deposits, pigment, granules, dropped nuclei)
are drawn in the unstained frame, the stained slide's ones into the H&E composite before the
misregistration warps it, so they move with the tissue; dust and debris, placed uniformly over
the slide, are drawn the same way. Nothing here changes the layout, the tissue mask, the
transform or the landmarks, and every draw comes from its own ``SeedSequence`` child of the
sample's realism stream (:data:`STREAMS`), so switching one structure off leaves the others and
every non-realism draw unchanged.

Coordinates are level-0 pixels of the unstained frame, ``(x, y)``; masks are ``(H, W)`` bool.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from stainldm.data._optics import AutofluorescenceConfig, BrightfieldConfig, CoreBox, OpticsExtras
from stainldm.errors import ConfigError

# One SeedSequence child per structure, by position: append new ones at the end.
STREAMS = ("dropped_nuclei", "brown_blobs", "pigment_blobs", "stained_dust", "stained_noise", "unstained_granules",
           "unstained_debris", "unstained_dust")
# Optical-density colour vectors (R, G, B absorbance, unit length). DAB: Ruifrok & Johnston 2001
# (skimage ``rgb_from_hed``); melanin absorbs broadly, a little more in the blue; dust is grey.
_DAB_OD = np.array([0.27, 0.57, 0.78]) / np.linalg.norm([0.27, 0.57, 0.78])
_PIGMENT_OD = np.array([0.52, 0.58, 0.63]) / np.linalg.norm([0.52, 0.58, 0.63])
_GREY_OD = np.ones(3) / math.sqrt(3)
_BAND = 512  # rows of noise drawn at a time (bounded memory)


@dataclass(frozen=True)
class RealismConfig:
    """One-sided structures and per-slide optics of a simulated pair (``realism`` in the config).

    Densities are per mm² of tissue for tissue-bound structures and per mm² of slide for dust and
    debris; sizes are ``(min, max)`` µm, drawn log-uniformly; OD is log10 absorbance.

    Attributes:
        enabled: off by default; off, the sample is exactly the plain simulation.
        brown_blobs_per_mm2, brown_blob_diameter_um, brown_blob_od: brown DAB-like deposits (an
            IHC chromogen, or haemosiderin from old bleeding) that the H&E shows and the unstained
            scan does not.
        pigment_blobs_per_mm2, pigment_blob_diameter_um, pigment_blob_od: dark brown-black
            melanin-like (or anthracotic, formalin) pigment, in the H&E only.
        dropped_nuclei_fraction: fraction of the H&E's nuclei missing from one side (nuclei
            outside the focal plane of one scan, lost or faded in staining).
        dropped_nuclei_side: the side that lacks them, ``"unstained"`` or ``"stained"``.
        stained_dust_per_mm2, unstained_dust_per_mm2: dust and coverslip dirt, out of focus, on
            each slide independently (glass and tissue); grey absorbance in the H&E and in
            brightfield, a shadow on tissue in autofluorescence.
        dust_diameter_um, dust_od: size and peak absorbance of a dust particle.
        unstained_granules_per_mm2, unstained_granule_diameter_um: bright autofluorescent
            granules beyond the sub-micron lipofuscin of the plain simulation (lipofuscin-laden
            macrophages, eosinophil granules, red-cell clusters); weakly absorbing in brightfield.
        unstained_debris_per_mm2, unstained_debris_length_um: lint fibres and tissue fragments
            on the unstained slide (removed or washed off by staining), on glass and tissue;
            fluorescent in autofluorescence, absorbing in brightfield.
        stained_psf_sigma_um, unstained_psf_sigma_um: extra Gaussian blur of each scan (focus,
            objective NA); each slide its own.
        stained_stain_strength: H&E optical densities scaled by this (a darker or paler staining
            run than the source slide).
        stained_noise_sd: camera noise of the H&E scan, 8-bit levels (SD).
        unstained_exposure: the unstained scan's photon counts scaled by this (a shorter
            exposure: more shot noise, and in autofluorescence a dimmer image).
    """

    enabled: bool = False
    brown_blobs_per_mm2: float = 150.0
    brown_blob_diameter_um: tuple[float, float] = (4.0, 14.0)
    brown_blob_od: float = 0.8
    pigment_blobs_per_mm2: float = 60.0
    pigment_blob_diameter_um: tuple[float, float] = (2.0, 8.0)
    pigment_blob_od: float = 1.2
    dropped_nuclei_fraction: float = 0.1
    dropped_nuclei_side: Literal["unstained", "stained"] = "unstained"
    stained_dust_per_mm2: float = 4.0
    unstained_dust_per_mm2: float = 4.0
    dust_diameter_um: tuple[float, float] = (5.0, 30.0)
    dust_od: float = 0.25
    unstained_granules_per_mm2: float = 400.0
    unstained_granule_diameter_um: tuple[float, float] = (1.5, 5.0)
    unstained_debris_per_mm2: float = 3.0
    unstained_debris_length_um: tuple[float, float] = (10.0, 60.0)
    stained_psf_sigma_um: float = 0.4
    unstained_psf_sigma_um: float = 0.25
    stained_stain_strength: float = 1.15
    stained_noise_sd: float = 2.0
    unstained_exposure: float = 0.7

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_per_mm2") or f.name.endswith("_od") or f.name.endswith("_sigma_um") \
                    or f.name == "stained_noise_sd":
                if value < 0:
                    raise ConfigError(f"realism.{f.name} ({value:g}) must not be negative")
            elif f.name.endswith("_um"):  # a (min, max) size range
                if not 0 < value[0] <= value[1]:
                    raise ConfigError(f"realism.{f.name} ({list(value)}) must be [min, max] with 0 < min <= max")
        if not 0 <= self.dropped_nuclei_fraction <= 1:
            raise ConfigError(f"realism.dropped_nuclei_fraction ({self.dropped_nuclei_fraction:g}) must be in [0, 1]")
        for name in ("stained_stain_strength", "unstained_exposure"):
            if not 0 < getattr(self, name) <= 10:
                raise ConfigError(f"realism.{name} ({getattr(self, name):g}) must be in (0, 10]")


@dataclass(eq=False)
class OneSided:
    """What :func:`draw_one_sided` made.

    Attributes:
        he_stained: ``(H, W, 3)`` uint8 H&E the stained slide is warped from (unstained frame).
        he_unstained: ``(H, W, 3)`` uint8 H&E the unstained slide is simulated from.
        extras: the unstained slide's own content and blur, for :mod:`stainldm.data._optics`.
        masks: per structure, ``(H, W)`` bool pixels it covers (unstained frame).
        record: per structure, the side showing it (``shown_on``; dropped nuclei: ``missing_on``) and
            its count (truth.json's ``realism``, with the fractions).
    """

    he_stained: np.ndarray
    he_unstained: np.ndarray
    extras: OpticsExtras
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    record: dict[str, dict[str, Any]] = field(default_factory=dict)


def stream(seed: np.random.SeedSequence, name: str) -> np.random.Generator:
    """The generator of one structure's draws (a fixed child of ``seed``, whatever else runs)."""
    return np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, STREAMS.index(name))))


def draw_one_sided(he: np.ndarray, tissue: np.ndarray, alphas: list[CoreBox], *, realism: RealismConfig,
                   modality: str, mpp: float, glass_rgb: tuple[int, int, int],
                   seed: np.random.SeedSequence) -> OneSided:
    """The one-sided structures of a pair, drawn in the unstained frame.

    Args:
        he: ``(H, W, 3)`` uint8 H&E composite in the unstained frame (not changed).
        tissue: ``(H, W)`` bool tissue mask.
        alphas: per core, its box's top-left ``(x0, y0)`` and ``(h, w)`` disc coverage.
        realism: the settings.
        modality: ``"autofluorescence"`` or ``"brightfield"``: how unstained-side content shows.
        mpp: µm per pixel.
        glass_rgb: the H&E colour of empty glass.
        seed: the sample's realism stream; each structure draws from its own child.

    Returns:
        both sides' H&E, the unstained extras, masks and a record.
    """
    r = realism
    h, w = tissue.shape
    area = {"tissue": float(tissue.sum()) * (mpp * 1e-3) ** 2, "slide": h * w * (mpp * 1e-3) ** 2}
    where = _Where(tissue)
    one = OneSided(he_stained=he, he_unstained=he, extras=OpticsExtras())
    dropped = _drop_nuclei(he, tissue, alphas, fraction=r.dropped_nuclei_fraction, mpp=mpp, glass_rgb=glass_rgb,
                           rng=stream(seed, "dropped_nuclei"))
    if dropped is not None:
        filled, mask, found = dropped
        one.masks["dropped_nuclei"] = mask
        one.record["dropped_nuclei"] = {"missing_on": r.dropped_nuclei_side, "count": found[0],
                                        "of_detected": found[1]}
        if r.dropped_nuclei_side == "stained":
            one.he_stained = filled
        else:
            one.he_unstained = filled

    # H&E side: absorbance maps (OD), applied to the composite before the warp.
    od = {}
    for name, per_mm2, diam, peak, kind in (
            ("brown_blobs", r.brown_blobs_per_mm2, r.brown_blob_diameter_um, r.brown_blob_od, "tissue"),
            ("pigment_blobs", r.pigment_blobs_per_mm2, r.pigment_blob_diameter_um, r.pigment_blob_od, "tissue"),
            ("stained_dust", r.stained_dust_per_mm2, r.dust_diameter_um, r.dust_od, "slide")):
        rng = stream(seed, name)
        n = int(rng.poisson(per_mm2 * area[kind])) if per_mm2 > 0 and peak > 0 else 0
        if n:
            od[name] = _blob_map((h, w), where.draw(kind, n, rng), diam, mpp=mpp, peak=peak, rng=rng,
                                 out_of_focus=name == "stained_dust")
            _note(one, name, od[name], 0.25 * peak, n, "stained")
    if od or r.stained_stain_strength != 1:
        one.he_stained = _absorb(one.he_stained, od, strength=r.stained_stain_strength, glass_rgb=glass_rgb)

    # Unstained side: emission (autofluorescence) or absorbance (brightfield), and transmission (dust).
    fluorescent = modality == "autofluorescence"
    emission = np.zeros((2, h, w), dtype=np.float32) if fluorescent else None  # channel-first: contiguous planes
    absorb = np.zeros((h, w), dtype=np.float32)
    rng = stream(seed, "unstained_granules")
    n = int(rng.poisson(r.unstained_granules_per_mm2 * area["tissue"]))
    if n:
        # Brighter at 488 nm (lipofuscin, eosinophil granules); brightfield: weakly refractile.
        amp = _blob_map((h, w), where.draw("tissue", n, rng), r.unstained_granule_diameter_um, mpp=mpp, peak=1.0,
                        rng=rng)
        _add_unstained(emission, absorb, amp, weights=(0.8, 1.6), od=0.05)
        _note(one, "unstained_granules", amp, 0.25, n, "unstained")
    rng = stream(seed, "unstained_debris")
    n = int(rng.poisson(r.unstained_debris_per_mm2 * area["slide"]))
    if n:
        amp = _debris_map((h, w), where.draw("slide", n, rng), r.unstained_debris_length_um, mpp=mpp, rng=rng)
        _add_unstained(emission, absorb, amp, weights=(1.4, 0.9), od=0.3)  # lint fibres glow blue
        _note(one, "unstained_debris", amp, 0.25, n, "unstained")
    rng = stream(seed, "unstained_dust")
    n = int(rng.poisson(r.unstained_dust_per_mm2 * area["slide"])) if r.dust_od > 0 else 0
    if n:
        dust = _blob_map((h, w), where.draw("slide", n, rng), r.dust_diameter_um, mpp=mpp, peak=r.dust_od, rng=rng,
                         out_of_focus=True)
        absorb += dust
        _note(one, "unstained_dust", dust, 0.25 * r.dust_od, n, "unstained")
    has_emission = emission is not None and bool(emission.any())
    transmission = None
    if absorb.any():
        transmission, some = np.ones_like(absorb), absorb > 0  # the powers only where something absorbs
        transmission[some] = 10.0 ** -absorb[some]
    one.extras = OpticsExtras(emission=emission if has_emission else None, transmission=transmission,
                              blur_px=r.unstained_psf_sigma_um / mpp)
    return one


def finish_stained(stained: np.ndarray, *, realism: RealismConfig, mpp: float,
                   seed: np.random.SeedSequence) -> np.ndarray:
    """The stained scan's own optics, in its own frame: extra blur, then camera noise.

    Args:
        stained: ``(H', W', 3)`` uint8 stained slide (after the warp).
        realism: the settings.
        mpp: µm per pixel.
        seed: the sample's realism stream.

    Returns:
        ``(H', W', 3)`` uint8; ``stained`` itself when neither applies.
    """
    if realism.stained_psf_sigma_um > 0:
        stained = cv2.GaussianBlur(stained, (0, 0), realism.stained_psf_sigma_um / mpp)
    if realism.stained_noise_sd > 0:
        rng = stream(seed, "stained_noise")
        noisy = np.empty_like(stained)
        for y0 in range(0, stained.shape[0], _BAND):
            band = stained[y0 : y0 + _BAND].astype(np.float32)
            band += np.float32(realism.stained_noise_sd) * rng.standard_normal(band.shape, dtype=np.float32)
            noisy[y0 : y0 + _BAND] = np.clip(np.rint(band), 0, 255).astype(np.uint8)
        stained = noisy
    return stained


def unstained_camera(realism: RealismConfig, af: AutofluorescenceConfig,
                     bf: BrightfieldConfig) -> tuple[AutofluorescenceConfig, BrightfieldConfig]:
    """The camera models with the unstained scan's own exposure (photon counts scaled)."""
    e = realism.unstained_exposure
    if e == 1:
        return af, bf
    af = dataclasses.replace(af, peak_photons=tuple(p * e for p in af.peak_photons),
                             background_photons=tuple(p * e for p in af.background_photons))
    return af, dataclasses.replace(bf, photons_at_glass=bf.photons_at_glass * e)


def summarize(one: OneSided, tissue: np.ndarray) -> dict[str, dict[str, Any]]:
    """truth.json's ``realism``: per structure its side, count, and the fraction of tissue pixels
    and of slide pixels it covers (unstained frame)."""
    n_tissue = max(int(tissue.sum()), 1)
    out = {}
    for name, rec in one.record.items():
        mask = one.masks[name]
        out[name] = {**rec, "tissue_fraction": round(float((mask & tissue).sum()) / n_tissue, 6),
                     "slide_fraction": round(float(mask.mean()), 6)}
    return out


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------
class _Where:
    """Random positions ``(x, y)`` (pixel centres, integers) on tissue or anywhere on the slide."""

    def __init__(self, tissue: np.ndarray) -> None:
        self.shape = tissue.shape
        self._tissue = tissue
        self._flat: np.ndarray | None = None  # flat indices of tissue pixels, found once

    def draw(self, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
        if kind == "slide":
            return np.column_stack([rng.integers(0, self.shape[1], n), rng.integers(0, self.shape[0], n)])
        if self._flat is None:
            self._flat = np.flatnonzero(self._tissue)
        if len(self._flat) == 0:
            return np.zeros((0, 2), dtype=int)
        ys, xs = np.unravel_index(self._flat[rng.integers(0, len(self._flat), n)], self.shape)
        return np.column_stack([xs, ys])


def _log_uniform(lo_hi: tuple[float, float], n: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi = lo_hi
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def _blob(diam_px: float, rng: np.random.Generator, *, softness_px: float) -> np.ndarray:
    """An irregular disc: radius ``d/2 · (1 + Σ a_k cos(kθ + φ_k))`` (k = 2..4), soft edge; ``(n, n)``
    coverage in [0, 1], centred."""
    r0 = diam_px / 2
    a = rng.uniform(-0.25, 0.25, 3) / np.arange(2, 5) * 2
    phase = rng.uniform(0, 2 * np.pi, 3)
    half = math.ceil(r0 * 1.3 + 2 * softness_px + 1)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    theta = np.arctan2(yy, xx)
    radius = r0 * (1 + sum(a[i] * np.cos((i + 2) * theta + phase[i]) for i in range(3)))
    return np.clip((radius - np.hypot(xx, yy)) / (2 * softness_px) + 0.5, 0, 1).astype(np.float32)


def _stamp(canvas: np.ndarray, patch: np.ndarray, xy: np.ndarray, value: float) -> None:
    """Adds ``value · patch`` centred on pixel ``xy``, clipped to the canvas."""
    ph, pw = patch.shape
    x0, y0 = int(xy[0]) - pw // 2, int(xy[1]) - ph // 2
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + pw, canvas.shape[1]), min(y0 + ph, canvas.shape[0])
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] += value * patch[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def _blob_map(shape_hw, xy: np.ndarray, diam_um: tuple[float, float], *, mpp: float, peak: float,
              rng: np.random.Generator, out_of_focus: bool = False) -> np.ndarray:
    """Irregular blobs at ``xy``: peak ``peak · U(0.6, 1)`` each; out of focus: a soft edge a
    fifth of the diameter (dust on the coverslip), else 0.7 px."""
    out = np.zeros(shape_hw, dtype=np.float32)
    diam = _log_uniform(diam_um, len(xy), rng) / mpp
    for p, d, v in zip(xy, diam, rng.uniform(0.6, 1.0, len(xy)) * peak, strict=True):
        _stamp(out, _blob(d, rng, softness_px=0.2 * d if out_of_focus else 0.7), p, float(v))
    return out


def _debris_map(shape_hw, xy: np.ndarray, length_um: tuple[float, float], *, mpp: float,
                rng: np.random.Generator) -> np.ndarray:
    """Debris at ``xy``, amplitude ``U(0.6, 1.5)``: half lint fibres (a bending polyline of the given
    length, 1.5-3 µm wide), half compact fragments (a third of the length across)."""
    out = np.zeros(shape_hw, dtype=np.float32)
    length = _log_uniform(length_um, len(xy), rng) / mpp
    for p, ln, v, fibre in zip(xy, length, rng.uniform(0.6, 1.5, len(xy)), rng.uniform(size=len(xy)) < 0.5,
                               strict=True):
        if fibre:
            steps = 8
            heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.3, steps))
            pts = np.vstack([[0, 0], np.cumsum(np.column_stack([np.cos(heading), np.sin(heading)]) * ln / steps,
                                                 axis=0)])
            width = max(1, round(rng.uniform(1.5, 3.0) / mpp))
            pad = width + 3
            pts = pts - pts.min(axis=0) + pad
            size = np.ceil(pts.max(axis=0) + pad).astype(int)
            img = np.zeros((size[1], size[0]), dtype=np.uint8)
            cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], False, 255, thickness=width,
                          lineType=cv2.LINE_AA, shift=4)
            patch = cv2.GaussianBlur(img.astype(np.float32) / 255, (0, 0), 0.6)
        else:
            patch = _blob(ln / 3, rng, softness_px=0.7)
        _stamp(out, patch, p, float(v))
    return np.minimum(out, 2.0)


def _note(one: OneSided, name: str, value_map: np.ndarray, threshold: float, count: int, side: str) -> None:
    one.masks[name] = value_map >= threshold
    one.record[name] = {"shown_on": side, "count": count}


def _add_unstained(emission: np.ndarray | None, absorb: np.ndarray, amp: np.ndarray, *,
                   weights: tuple[float, float], od: float) -> None:
    """Unstained-side content: fluorescence ``weights`` per channel, or in brightfield absorbance ``od``."""
    if emission is None:
        absorb += od * amp
        return
    for k in range(2):
        emission[k] += weights[k] * amp


def _absorb(he: np.ndarray, od: dict[str, np.ndarray], *, strength: float,
            glass_rgb: tuple[int, int, int]) -> np.ndarray:
    """The H&E with its stain densities scaled by ``strength`` (relative to glass: a lookup table per
    channel) and the absorbance maps multiplied in (Beer-Lambert): deposits and pigment in their
    colours, dust grey."""
    colours = {"brown_blobs": _DAB_OD, "pigment_blobs": _PIGMENT_OD, "stained_dust": _GREY_OD}
    out = he.copy()
    if strength != 1:
        for c, g in enumerate(glass_rgb):
            lut = np.clip(np.rint(g * (np.maximum(np.arange(256), 1) / g) ** strength), 0, 255).astype(np.uint8)
            out[..., c] = lut[he[..., c]]
    if not od:
        return out
    total = sum(od.values())
    ys, xs = np.nonzero(total > 0)  # the maps are sparse: a few percent of the slide
    absorb = sum(od[name][ys, xs, None] * colours[name].astype(np.float32) for name in od)  # (N, 3)
    out[ys, xs] = np.clip(np.rint(out[ys, xs] * 10.0 ** -absorb), 0, 255).astype(np.uint8)
    return out


def _drop_nuclei(he: np.ndarray, tissue: np.ndarray, alphas: list[CoreBox], *, fraction: float, mpp: float,
                 glass_rgb: tuple[int, int, int],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
    """Nuclei (haematoxylin blobs of 12-200 µm² after colour deconvolution) of the H&E, a ``fraction``
    of them filled from the stroma around them. Returns ``(filled he, mask, (dropped, found))``, or
    None when ``fraction`` is 0."""
    if fraction <= 0:
        return None
    from skimage.color import rgb2hed

    glass_h = float(rgb2hed(np.asarray(glass_rgb, dtype=np.uint8).reshape(1, 1, 3))[0, 0, 0])
    smooth = []
    for x0, y0, alpha in alphas:
        bh, bw = alpha.shape
        hd = np.maximum(rgb2hed(he[y0 : y0 + bh, x0 : x0 + bw])[..., 0] - glass_h, 0).astype(np.float32)
        smooth.append(cv2.GaussianBlur(hd, (0, 0), 0.5 / mpp))
    samples = np.concatenate([s[tissue[y0 : y0 + s.shape[0], x0 : x0 + s.shape[1]]]
                              for s, (x0, y0, _) in zip(smooth, alphas, strict=True)])
    # The top 15% of haematoxylin on tissue, never below a faint tint: nuclei, not stroma.
    threshold = max(float(np.percentile(samples, 85)) if len(samples) else 0.0, 0.05)
    lo, hi = 12.0 / mpp**2, 200.0 / mpp**2
    filled, mask = he.copy(), np.zeros(tissue.shape, dtype=bool)
    found = dropped = 0
    for s, (x0, y0, _) in zip(smooth, alphas, strict=True):
        bh, bw = s.shape
        nuc = ((s > threshold) & tissue[y0 : y0 + bh, x0 : x0 + bw]).astype(np.uint8)
        nuc = cv2.morphologyEx(nuc, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(nuc, connectivity=8)
        ok = (stats[:, cv2.CC_STAT_AREA] >= lo) & (stats[:, cv2.CC_STAT_AREA] <= hi)
        ok[0] = False
        found += int(ok.sum())
        pick = np.flatnonzero(ok & (rng.uniform(size=n) < fraction))
        dropped += len(pick)
        box = filled[y0 : y0 + bh, x0 : x0 + bw]  # a view: fills land in ``filled``
        for i in pick:
            x, y, w, h = stats[i, :4]
            win = (slice(max(y - 10, 0), y + h + 10), slice(max(x - 10, 0), x + w + 10))
            stroma = tissue[y0 : y0 + bh, x0 : x0 + bw][win] & (s[win] < threshold / 2)
            hole = _fill_from_stroma(box[win], labels[win] == i, stroma, glass_rgb)
            mask[y0 : y0 + bh, x0 : x0 + bw][win] |= hole
    return filled, mask, (dropped, found)


def _fill_from_stroma(rgb: np.ndarray, nucleus: np.ndarray, stroma: np.ndarray,
                      glass_rgb: tuple[int, int, int]) -> np.ndarray:
    """Fills ``nucleus`` and its 2 px haematoxylin halo in ``rgb`` (in place) from the stroma around it
    (``stroma``: tissue with little haematoxylin, and tinted pink); white gaps and other nuclei around it
    first take the stroma's median colour, so they do not bleed in (Telea inpainting). Returns the
    filled pixels."""
    disc = lambda d: cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))  # noqa: E731
    hole = cv2.dilate(nucleus.astype(np.uint8), disc(5))
    near = cv2.dilate(nucleus.astype(np.uint8), disc(15)).astype(bool) & ~hole.astype(bool)
    od = -np.log10(np.maximum(rgb, 1) / np.asarray(glass_rgb, dtype=np.float32)).sum(axis=2)
    tissue = stroma
    pink = rgb[..., 0].astype(np.int16) > rgb[..., 2].astype(np.int16) + 10  # eosin, not a haematoxylin halo
    stroma = near & stroma & (od > 0.15) & pink
    if stroma.sum() < 5:
        stroma = near & tissue
    work = rgb.copy()  # only the hole changes in ``rgb``
    if stroma.any():
        work[near & ~stroma] = np.median(rgb[stroma], axis=0).astype(np.uint8)
    hole_px = hole.astype(bool)
    rgb[hole_px] = cv2.inpaint(work, hole, 3, cv2.INPAINT_TELEA)[hole_px]
    return hole_px
