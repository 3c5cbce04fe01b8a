"""Optics of the unstained slide: autofluorescence and brightfield images of a simulated section.

:func:`simulate_autofluorescence` and :func:`simulate_brightfield` turn the H&E composite that
:mod:`stainldm.data.synthetic` builds (cores on glass, in the unstained frame) into what a scanner
would record from the same section before staining.

**Autofluorescence** (default; two uint16 channels, dark background).
Colour deconvolution (Ruifrok & Johnston 2001, ``skimage.color.rgb2hed``) gives haematoxylin
``h`` and eosin ``e`` densities, normalised by their 99th percentiles over all cores' tissue.
Eosin binds protein, so ``e`` stands in for protein / collagen; ``h`` for chromatin.

* ``AF405`` (≈405 nm excitation, ≈450 nm emission; collagen, elastin, NAD(P)H): sub-linear in
  ``e`` (even pale stroma fluoresces) — ``e^0.8``;
* ``AF488`` (≈488 nm excitation, ≈520 nm emission; flavins, keratin, haem): super-linear,
  brightest in the most eosinophilic structures (keratin, red cells, muscle) — ``e^1.8``;
* nuclei are dark in both: chromatin displaces cytoplasmic fluorophores and DNA fluoresces only
  weakly (a small positive ``h`` term, a larger ``(1 − occupancy(h))`` factor);
* lipofuscin-like granules: bright sub-micron spots at random tissue positions, absent from the
  H&E (strongest at 488 nm);
* each channel saturates, ``x / (1 + x / x_sat)`` (inner-filter effect / self-absorption);
* different Gaussian PSFs per channel (the longer wavelength is blurrier);
* per-core section thickness (``1 ± thickness_variation``) scales the fluorophore amount;
* illumination: a smooth random field per channel (excitation inhomogeneity) times per-field-
  of-view vignetting and exposure jitter, as a scanner stitches FOVs;
* noise: photon shot noise plus Gaussian read noise (the Poisson–Gaussian model of Foi et al.
  2008), then ``ADU = offset + gain · electrons``. Shot noise is drawn exactly (Poisson) for
  expected counts below 20 and from its normal approximation ``N(λ, λ)`` above, which is
  indistinguishable there and four times faster.

**Brightfield** (one uint8 channel; glass ≈ 245). Unstained tissue is nearly
transparent: a weak absorbance ``OD = tissue_od · mass`` (mass a saturating mix of ``h`` and
``e``) darkens it by a few percent, and slight defocus turns its refractive-index (phase) texture
into intensity following the transport-of-intensity equation (Teague 1983): ``ΔI ∝ −∇²φ``, with
the phase ``φ`` proportional to the smoothed mass. Then blur, the same illumination model, shot
and read noise, 8-bit quantisation.

**Not trivially invertible.** The unstained image has fewer channels than RGB (the deconvolution's
third, residual component is dropped), mixes ``h`` and ``e`` nonlinearly, adds content H&E does not
have (granules) and noise. An affine least-squares fit from the unstained channels to the H&E RGB
on tissue pixels leaves ≈ 92% (autofluorescence) and ≈ 94% (brightfield) of the RGB variance
unexplained on the default slide (a quadratic fit: 88% / 94%), while the autofluorescence still
correlates with the eosin density (r ≈ 0.7): informative, but not a colour lookup.

**Realism extras.** Both take optional content of the unstained slide that the H&E lacks
(:class:`OpticsExtras`: extra fluorophore emission, a transmission map for dust and absorbing
debris, an extra blur), drawn by :mod:`stainldm.data._realism`; without them the output is the
plain simulation, pixel for pixel.

**Limits.** Colour deconvolution with fixed stain vectors on a JPEG-compressed scan is
approximate. PSFs are Gaussian; no photobleaching, z-variation or spectral bleed-through beyond
the two mixtures.

Every random draw comes from the ``rng`` passed in, in a fixed order (band by band, ``_BAND`` rows
at a time), so a seed gives the same pixels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

AUTOFLUORESCENCE_CHANNELS = ("AF405", "AF488")
BRIGHTFIELD_CHANNELS = ("brightfield",)
# Rows processed at a time (bounded memory). It also orders the noise draws: changing it changes
# the pixels for a seed.
_BAND = 512

# A core box: its top-left (x0, y0) in the canvas and its (h, w) coverage alpha of the core disc.
CoreBox = tuple[int, int, np.ndarray]


@dataclass(frozen=True)
class AutofluorescenceConfig:
    """Two-channel autofluorescence camera model (AF405, AF488).

    Attributes:
        peak_photons: expected photo-electrons per pixel at unit fluorophore signal.
        background_photons: glass / mounting-medium autofluorescence, photo-electrons per pixel.
        saturation: ``x_sat`` of the saturating response ``x / (1 + x / x_sat)``.
        psf_sigma_px: Gaussian PSF σ per channel.
        gain_adu_per_e, offset_adu, read_noise_e: camera gain, dark offset and read noise.
        granules_per_mm2: density of lipofuscin-like granules in tissue.
        field_variation: amplitude of the smooth illumination field (± fraction).
        fov_um, fov_vignetting, fov_exposure_jitter: stitched field-of-view size, corner fall-off
            and per-FOV exposure spread (fractions).
    """

    peak_photons: tuple[float, float] = (1500.0, 900.0)
    background_photons: tuple[float, float] = (30.0, 20.0)
    saturation: tuple[float, float] = (1.5, 1.0)
    psf_sigma_px: tuple[float, float] = (0.9, 1.3)
    gain_adu_per_e: float = 4.0
    offset_adu: float = 100.0
    read_noise_e: float = 2.0
    granules_per_mm2: float = 600.0
    field_variation: float = 0.10
    fov_um: float = 500.0
    fov_vignetting: float = 0.06
    fov_exposure_jitter: float = 0.02


@dataclass(frozen=True)
class BrightfieldConfig:
    """One-channel transmitted-light camera model for an unstained section.

    Attributes:
        glass_level: 8-bit value of empty glass.
        tissue_od: absorbance (log10) of fully dense tissue.
        phase_contrast: intensity change per unit Laplacian of the smoothed mass (defocus).
        psf_sigma_px: Gaussian PSF σ.
        photons_at_glass, read_noise_e: photo-electrons at glass and read noise.
        field_variation, fov_um, fov_vignetting, fov_exposure_jitter: illumination, as above.
    """

    glass_level: float = 245.0
    tissue_od: float = 0.04
    phase_contrast: float = 0.5
    psf_sigma_px: float = 1.0
    photons_at_glass: float = 15000.0
    read_noise_e: float = 20.0
    field_variation: float = 0.03
    fov_um: float = 500.0
    fov_vignetting: float = 0.02
    fov_exposure_jitter: float = 0.005


@dataclass(frozen=True, eq=False)
class OpticsExtras:
    """Content of the unstained slide that the H&E does not show, and the scan's own extra blur.

    Attributes:
        emission: ``(2, H, W)`` extra fluorophore signal (autofluorescence only; granules, debris),
            in the units of the simulated signal, before the channel PSF; None for none.
        transmission: ``(H, W)`` fraction of the light that passes (dust, and in brightfield
            absorbing granules and debris), before the PSF; None for none.
        blur_px: σ of an extra Gaussian blur of the whole scan (focus), px; 0 for none.
    """

    emission: np.ndarray | None = None
    transmission: np.ndarray | None = None
    blur_px: float = 0.0


def _stain_densities(he: np.ndarray, tissue: np.ndarray, alphas: list[CoreBox],
                     glass_rgb: tuple[int, int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per core box: haematoxylin and eosin densities from colour deconvolution, relative to
    glass, normalised to their 99th percentile over all cores' tissue."""
    from skimage.color import rgb2hed

    glass = rgb2hed(np.asarray(glass_rgb, dtype=np.uint8).reshape(1, 1, 3))[0, 0].astype(np.float32)
    raw, samples_h, samples_e = [], [], []
    for x0, y0, alpha in alphas:
        h, w = alpha.shape
        hed = rgb2hed(he[y0 : y0 + h, x0 : x0 + w]).astype(np.float32) - glass
        hd, ed = np.maximum(hed[..., 0], 0), np.maximum(hed[..., 1], 0)
        t = tissue[y0 : y0 + h, x0 : x0 + w]
        samples_h.append(hd[t][::7])
        samples_e.append(ed[t][::7])
        raw.append((hd, ed))
    h_ref = max(float(np.percentile(np.concatenate(samples_h), 99)), 1e-6)
    e_ref = max(float(np.percentile(np.concatenate(samples_e), 99)), 1e-6)
    return [(np.minimum(hd / h_ref, 2.0), np.minimum(ed / e_ref, 2.0)) for hd, ed in raw]


def _granules(shape_hw, tissue: np.ndarray, per_px: float, rng: np.random.Generator) -> np.ndarray:
    """Lipofuscin-like bright granules (σ ≈ 1-2 px) at random tissue pixels; not in the H&E."""
    out = np.zeros(shape_hw, dtype=np.float32)
    ys, xs = np.nonzero(tissue)
    n = rng.poisson(per_px * len(ys)) if len(ys) else 0
    if n == 0:
        return out
    idx = rng.choice(len(ys), size=n)
    size = rng.integers(0, 2, size=n)
    for s, sigma in ((0, 1.0), (1, 2.0)):
        imp = np.zeros(shape_hw, dtype=np.float32)
        sel = size == s
        # Peak amplitude 0.5-1.5 after the blur (a 2-D Gaussian's peak is 1 / (2πσ²)).
        np.add.at(imp, (ys[idx[sel]], xs[idx[sel]]), rng.uniform(0.5, 1.5, sel.sum()) * 2 * np.pi * sigma**2)
        out += cv2.GaussianBlur(imp, (0, 0), sigma)
    return out


def _with_extras(signal: np.ndarray, extras: OpticsExtras, *, k: int, psf_px: float) -> np.ndarray:
    """One channel's signal (or transmitted fraction) times the extra transmission, plus the extra
    emission of channel ``k``, both through the channel's PSF, then the scan's extra blur."""
    if extras.transmission is not None:
        signal = signal * cv2.GaussianBlur(extras.transmission.astype(np.float32), (0, 0), psf_px)
    if extras.emission is not None:
        signal = signal + cv2.GaussianBlur(extras.emission[k].astype(np.float32), (0, 0), psf_px)
    if extras.blur_px > 0:
        signal = cv2.GaussianBlur(signal.astype(np.float32), (0, 0), extras.blur_px)
    return signal


def _illumination(size_wh, *, variation: float, fov_px: float, vignetting: float, jitter: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A smooth field (full size) and the per-FOV pieces (x shading, y shading, FOV gains)."""
    w, h = size_wh
    coarse = (1 + variation * rng.uniform(-1, 1, size=(6, 6))).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    off = rng.uniform(0, fov_px, size=2)
    ux = ((np.arange(w) + 0.5 + off[0]) % fov_px) / fov_px * 2 - 1
    uy = ((np.arange(h) + 0.5 + off[1]) % fov_px) / fov_px * 2 - 1
    ix = ((np.arange(w) + 0.5 + off[0]) // fov_px).astype(int)
    iy = ((np.arange(h) + 0.5 + off[1]) // fov_px).astype(int)
    gains = 1 + jitter * rng.standard_normal((iy.max() + 1, ix.max() + 1))
    # Corner fall-off ``vignetting``, mean 1 over a FOV (ux², uy² average 1/3).
    shade_x = (vignetting / 2 * (ux**2 - 1 / 3)).astype(np.float32)
    shade_y = (vignetting / 2 * (uy**2 - 1 / 3)).astype(np.float32)
    return smooth, (shade_x, ix), (shade_y, iy), gains


def _fov_band(y0: int, y1: int, sx, sy, gains) -> np.ndarray:
    (shade_x, ix), (shade_y, iy) = sx, sy
    return (1 - shade_y[y0:y1, None] - shade_x[None, :]) * gains[iy[y0:y1, None], ix[None, :]]


def _shot_noise(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photon counts: exact Poisson below 20 expected counts, its normal approximation above."""
    expected = np.maximum(expected, 0)
    out = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, dtype=np.float32)
    low = expected < 20
    out[low] = rng.poisson(expected[low])
    return out


def simulate_autofluorescence(he: np.ndarray, tissue: np.ndarray, alphas: list[CoreBox],
                              thickness: list[float], glass_rgb: tuple[int, int, int], *,
                              af: AutofluorescenceConfig, mpp: float, rng: np.random.Generator,
                              extras: OpticsExtras | None = None) -> np.ndarray:
    """The two-channel autofluorescence image of the section shown by an H&E composite.

    Args:
        he: ``(H, W, 3)`` uint8 H&E cores on glass.
        tissue: ``(H, W)`` bool tissue mask.
        alphas: per core, its box's top-left ``(x0, y0)`` and ``(h, w)`` disc coverage.
        thickness: per core, the section thickness factor (same order as ``alphas``).
        glass_rgb: the H&E colour of empty glass.
        af: the camera model.
        mpp: µm per pixel.
        rng: the source of every random draw.
        extras: content only the unstained slide shows, and its extra blur (no random draws).

    Returns:
        ``(H, W, 2)`` uint16 ADU, channels :data:`AUTOFLUORESCENCE_CHANNELS`.
    """
    h, w = tissue.shape
    signal = np.zeros((h, w, 2), dtype=np.float32)
    granule_rate = af.granules_per_mm2 * (mpp * 1e-3) ** 2
    densities = _stain_densities(he, tissue, alphas, glass_rgb)
    for core_thickness, (x0, y0, alpha), (hd, ed) in zip(thickness, alphas, densities, strict=True):
        bh, bw = alpha.shape
        t = tissue[y0 : y0 + bh, x0 : x0 + bw]
        u = np.clip((hd - 0.1) / 0.4, 0, 1)
        occupancy = u * u * (3 - 2 * u)  # smoothstep: how much of the pixel is nucleus
        mass = np.minimum(0.5 * (hd + ed), 1.0)
        granules = _granules((bh, bw), t, granule_rate, rng)
        x405 = core_thickness * (ed**0.8 * (1 - 0.75 * occupancy) + 0.12 * hd + 0.10 * mass) + 0.5 * granules
        x488 = core_thickness * (1.2 * ed**1.8 * (1 - 0.85 * occupancy) + 0.04 * hd + 0.05 * mass) + 1.0 * granules
        for k, x in enumerate((x405, x488)):
            s = x / (1 + x / af.saturation[k])
            s = cv2.GaussianBlur(s.astype(np.float32), (0, 0), af.psf_sigma_px[k])
            signal[y0 : y0 + bh, x0 : x0 + bw, k] += s  # ~0 outside the disc, so overlapping boxes add nothing
    if extras is not None:
        for k in range(2):
            signal[..., k] = _with_extras(signal[..., k], extras, k=k, psf_px=af.psf_sigma_px[k])
    fov = af.fov_um / mpp
    # One FOV tiling (same objective and camera); each excitation source its own smooth field.
    illum = [_illumination((w, h), variation=af.field_variation, fov_px=fov, vignetting=af.fov_vignetting,
                           jitter=af.fov_exposure_jitter, rng=rng) for _ in range(2)]
    _, sx, sy, gains = illum[0]
    out = np.empty((h, w, 2), dtype=np.uint16)
    for y0 in range(0, h, _BAND):
        y1 = min(h, y0 + _BAND)
        fov_light = _fov_band(y0, y1, sx, sy, gains)
        for k in range(2):
            light = illum[k][0][y0:y1] * fov_light
            expected = (af.peak_photons[k] * signal[y0:y1, :, k] + af.background_photons[k]) * light
            electrons = _shot_noise(expected, rng)
            adu = af.offset_adu + af.gain_adu_per_e * (
                electrons + af.read_noise_e * rng.standard_normal(electrons.shape, dtype=np.float32))
            out[y0:y1, :, k] = np.clip(np.rint(adu), 0, 65535).astype(np.uint16)
    return out


def simulate_brightfield(he: np.ndarray, tissue: np.ndarray, alphas: list[CoreBox], thickness: list[float],
                         glass_rgb: tuple[int, int, int], *, bf: BrightfieldConfig, mpp: float,
                         rng: np.random.Generator, extras: OpticsExtras | None = None) -> np.ndarray:
    """The transmitted-light image of the unstained section shown by an H&E composite.

    Args:
        he, tissue, alphas, thickness, glass_rgb, mpp, rng, extras: as for
            :func:`simulate_autofluorescence` (``extras.emission`` is not used: nothing glows).
        bf: the camera model.

    Returns:
        ``(H, W, 1)`` uint8, channel :data:`BRIGHTFIELD_CHANNELS`.
    """
    h, w = tissue.shape
    rel = np.ones((h, w), dtype=np.float32)  # transmitted fraction, 1 on glass
    densities = _stain_densities(he, tissue, alphas, glass_rgb)
    for core_thickness, (x0, y0, alpha), (hd, ed) in zip(thickness, alphas, densities, strict=True):
        bh, bw = alpha.shape
        mass = core_thickness * (1 - np.exp(-1.6 * (0.55 * ed + 0.45 * hd)))
        absorbed = 10.0 ** (-bf.tissue_od * mass)
        phase = cv2.GaussianBlur(mass.astype(np.float32), (0, 0), 1.5)
        laplacian = cv2.Laplacian(phase, cv2.CV_32F, ksize=3)
        t = absorbed * (1 - bf.phase_contrast * laplacian)  # TIE, weak defocus (Teague 1983)
        t = cv2.GaussianBlur(t.astype(np.float32), (0, 0), bf.psf_sigma_px)
        rel[y0 : y0 + bh, x0 : x0 + bw] *= t  # 1 outside the disc
    if extras is not None:
        rel = _with_extras(rel, dataclasses.replace(extras, emission=None), k=0, psf_px=bf.psf_sigma_px)
    smooth, sx, sy, gains = _illumination((w, h), variation=bf.field_variation, fov_px=bf.fov_um / mpp,
                                          vignetting=bf.fov_vignetting, jitter=bf.fov_exposure_jitter, rng=rng)
    out = np.empty((h, w, 1), dtype=np.uint8)
    scale = bf.glass_level / bf.photons_at_glass
    for y0 in range(0, h, _BAND):
        y1 = min(h, y0 + _BAND)
        expected = bf.photons_at_glass * rel[y0:y1] * smooth[y0:y1] * _fov_band(y0, y1, sx, sy, gains)
        electrons = _shot_noise(expected, rng) + bf.read_noise_e * rng.standard_normal(expected.shape,
                                                                                       dtype=np.float32)
        out[y0:y1, :, 0] = np.clip(np.rint(electrons * scale), 0, 255).astype(np.uint8)
    return out
