"""Realism metrics on small synthetic H&E-like images with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from stainldm.errors import InputError
from stainldm.eval.metrics import hed_densities
from stainldm.eval.realism import (
    BANDS_UM,
    MORPHOLOGY,
    morphology_distances,
    nuclei_morphology,
    radial_power,
    sharpness,
    sharpness_ratio,
    spectrum_ratios,
)

PINK = (235, 170, 205)
PURPLE = (70, 40, 130)
GRID = [(x, y) for y in range(16, 128, 24) for x in range(16, 160, 24)]  # 5 × 6 = 30 nuclei


def he_image(centres_xy=GRID, *, size=(128, 160), radius=5, seed=0, noise=6.0) -> np.ndarray:
    """Pink 'stroma' with purple discs ('nuclei') and fine random texture ('chromatin', fibres)."""
    h, w = size
    img = np.empty((h, w, 3), np.float32)
    img[:] = PINK
    yy, xx = np.mgrid[:h, :w]
    for x, y in centres_xy:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = PURPLE
    img += np.random.default_rng(seed).normal(0, noise, (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(ndi.gaussian_filter(img.astype(np.float32), (sigma, sigma, 0)), 0, 255).astype(np.uint8)


def noisier(img: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, (*img.shape[:2], 1))
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def real():
    return he_image()


@pytest.fixture
def tissue(real):
    m = np.zeros(real.shape[:2], bool)
    m[4:-4, 4:-4] = True
    return m


def test_identical_images_are_equally_sharp_with_flat_spectrum_ratios(real, tissue):
    assert sharpness(real, tissue) > 0
    assert sharpness_ratio(real, real, tissue) == pytest.approx(1.0)
    ratios = spectrum_ratios(real, real, tissue, mpp=0.5)
    assert list(ratios) == [b[0] for b in BANDS_UM]
    assert all(v == pytest.approx(1.0) for v in ratios.values())


def test_blur_lowers_and_noise_raises_the_sharpness_ratio(real, tissue):
    assert sharpness_ratio(blurred(real, 1.5), real, tissue) < 0.8
    assert sharpness_ratio(noisier(real, 20), real, tissue) > 1.25


def test_blur_lowers_the_fine_bands_most(real, tissue):
    r = spectrum_ratios(blurred(real, 1.5), real, tissue, mpp=0.5)
    assert r["chromatin"] < r["nuclei"] < 1.0 and r["chromatin"] < 0.2
    assert spectrum_ratios(noisier(real, 20), real, tissue, mpp=0.5)["chromatin"] > 1.25


def test_the_glass_edge_does_not_count(real, tissue):
    on_glass = real.copy()
    on_glass[~tissue] = 255  # white glass around the tissue: a hard step at the mask edge
    assert sharpness(on_glass, tissue) == pytest.approx(sharpness(real, tissue))
    assert sharpness_ratio(on_glass, real, tissue) == pytest.approx(1.0)


def test_no_tissue_gives_nan(real, tissue):
    none = np.zeros_like(tissue)
    assert math.isnan(sharpness(real, none))
    assert math.isnan(sharpness_ratio(real, real, none))
    assert all(math.isnan(v) for v in spectrum_ratios(real, real, none, mpp=0.5).values())
    assert radial_power(real, none)[0].size == 0
    sliver = np.zeros_like(tissue)
    sliver[10:13, 10:60] = True  # thinner than the erosion
    assert math.isnan(sharpness_ratio(real, real, sliver))
    d = morphology_distances(hed_densities(real), hed_densities(real), none, mpp=0.5)
    assert set(d) == set(MORPHOLOGY) and all(math.isnan(v) for v in d.values())


def test_a_flat_real_image_or_prediction(real, tissue):
    flat = np.full_like(real, 200)
    assert math.isnan(sharpness_ratio(real, flat, tissue))  # nothing to compare against
    assert sharpness_ratio(flat, real, tissue) == 0.0  # a flat prediction has no detail at all
    assert all(math.isnan(v) for v in spectrum_ratios(real, flat, tissue, mpp=0.5).values())
    assert all(v == 0.0 for v in spectrum_ratios(flat, real, tissue, mpp=0.5).values())


def test_bands_above_nyquist_or_too_long_for_the_tissue_are_nan(real, tissue):
    r = spectrum_ratios(real, real, tissue, mpp=2.0)  # Nyquist period 4 µm: chromatin (1–4 µm) unseen
    assert math.isnan(r["chromatin"]) and r["nuclei"] == pytest.approx(1.0)
    r = spectrum_ratios(real, real, tissue, mpp=0.5, bands=(("huge", 1000.0, 5000.0),))
    assert math.isnan(r["huge"])


def test_morphology_is_zero_for_identical_images_and_grows_with_larger_nuclei(real, tissue):
    hed = hed_densities(real)
    m = nuclei_morphology(hed, tissue, mpp=0.5)
    assert set(m) == set(MORPHOLOGY) and len(m["area"]) == len(GRID)
    assert np.median(m["area"]) == pytest.approx(math.pi * 5**2 * 0.25, rel=0.25)  # r = 5 px = 2.5 µm
    assert ((m["eccentricity"] >= 0) & (m["eccentricity"] < 0.5)).all()  # discs: round
    assert ((m["solidity"] > 0.85) & (m["solidity"] <= 1)).all()
    assert morphology_distances(hed, hed, tissue, mpp=0.5) == {k: 0.0 for k in MORPHOLOGY}
    d6 = morphology_distances(hed_densities(he_image(radius=6)), hed, tissue, mpp=0.5)
    d8 = morphology_distances(hed_densities(he_image(radius=8)), hed, tissue, mpp=0.5)
    assert 0 < d6["area"] < d8["area"]
    assert d8["area"] == pytest.approx(math.pi * (8**2 - 5**2) * 0.25, rel=0.3)


def test_too_few_nuclei_give_nan(real, tissue):
    few = hed_densities(he_image(GRID[:3]))
    d = morphology_distances(few, hed_densities(real), tissue, mpp=0.5)
    assert all(math.isnan(v) for v in d.values())


def test_bad_inputs_are_clear_errors(real, tissue):
    with pytest.raises(InputError, match="`mpp`"):
        spectrum_ratios(real, real, tissue, mpp=0)
    with pytest.raises(InputError, match="`mpp`"):
        morphology_distances(hed_densities(real), hed_densities(real), tissue, mpp=-1)
    with pytest.raises(InputError, match="`bands`"):
        spectrum_ratios(real, real, tissue, mpp=0.5, bands=(("x", 8.0, 4.0),))
    with pytest.raises(InputError, match="same size"):
        sharpness_ratio(real[:64], real, tissue)
    with pytest.raises(InputError, match="same size"):
        sharpness(real, tissue[:64])
    with pytest.raises(InputError, match="differ in size"):
        nuclei_morphology(hed_densities(real), tissue[:64], mpp=0.5)


def test_core_realism_names_every_csv_column_and_is_n_a_without_tissue(real, tissue):
    from stainldm.eval.realism import core_realism
    from stainldm.eval.table import metric

    hed = hed_densities(real)
    v = core_realism(blurred(real, 1.5), real, tissue, mpp=0.5, hed_pred=hed_densities(blurred(real, 1.5)),
                     hed_target=hed)
    assert all(metric(k).csv for k in v)  # every value has its metrics.csv column
    assert v["sharpness_ratio"] < 0.8 and v["sharpness_pred"] < v["sharpness_real"]
    assert v["spectrum_chromatin"] < 1 and math.isfinite(v["nuclei_area_w1"])
    shared = nuclei_morphology(hed, tissue, mpp=0.5)
    same = core_realism(real, real, tissue, mpp=0.5, hed_pred=hed, hed_target=hed, target_morphology=shared)
    assert same["sharpness_ratio"] == pytest.approx(1.0) and same["nuclei_area_w1"] == 0.0
    none = core_realism(real, real, np.zeros_like(tissue), mpp=0.5, hed_pred=hed, hed_target=hed)
    assert set(none) == set(v) and all(math.isnan(x) for x in none.values())
