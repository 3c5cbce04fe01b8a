"""Tissue masks on the real CMU H&E, with pen, dust and coverslip artefacts drawn on its glass."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import draw

from stainldm.errors import InputError
from stainldm.wsi.reader import open_slide
from stainldm.wsi.tissue import TissueConfig, guess_modality, tissue_fraction, tissue_mask

MPP = 4.0


@pytest.fixture(scope="module")
def he_thumb(cmu_path):
    with open_slide(cmu_path) as slide:
        w, h = slide.dimensions
        return slide.read_at_mpp((0, 0), (round(w * slide.mpp[0] / MPP), round(h * slide.mpp[1] / MPP)), MPP)


@pytest.fixture(scope="module")
def he_mask(he_thumb):
    return tissue_mask(he_thumb, mpp=MPP, modality="he")


def _glass_region(mask: np.ndarray) -> tuple[slice, slice]:
    """A 60×60 px window of the thumbnail with no tissue in it (upper-left glass)."""
    return slice(20, 80), slice(10, 70)


def test_cmu_tissue_fraction_and_glass(he_thumb, he_mask):
    assert guess_modality(he_thumb) == "he"
    assert 0.3 < tissue_fraction(he_mask) < 0.5
    ys, xs = _glass_region(he_mask)
    assert not he_mask[ys, xs].any()
    # The dense epidermis band in the lower middle is tissue.
    assert he_mask[300:340, 100:150].mean() > 0.95


@pytest.mark.parametrize("ink", [(30, 140, 60), (20, 40, 170), (25, 25, 25)])
def test_pen_marks_on_glass_are_not_tissue(he_thumb, he_mask, ink):
    img = he_thumb.copy()
    rr, cc = draw.ellipse(50, 40, 25, 28)  # a pen circle on the glass, 3 px wide ring
    rr2, cc2 = draw.ellipse(50, 40, 22, 25)
    ring = np.zeros(img.shape[:2], bool)
    ring[rr, cc] = True
    ring[rr2, cc2] = False
    img[ring] = ink
    img[45:55, 15:65] = ink  # and a thick stroke through it
    mask = tissue_mask(img, mpp=MPP, modality="he")
    assert not mask[15:90, 5:75].any()
    assert np.mean(mask == he_mask) > 0.99


def test_dust_coverslip_edge_and_bubble_rims_are_not_tissue(he_thumb, he_mask):
    img = he_thumb.copy()
    rng = np.random.default_rng(0)
    for _ in range(30):  # dust specks, a few µm to ~20 µm
        y, x = rng.integers(5, 100), rng.integers(5, 75)
        rr, cc = draw.disk((y, x), rng.integers(1, 3), shape=img.shape[:2])
        img[rr, cc] = (90, 70, 80)
    img[:, 3] = (120, 110, 115)  # coverslip edge: a thin gray line down the slide
    assert not he_mask[195:245, 5:55].any()
    rr, cc = draw.circle_perimeter(220, 30, 18, shape=img.shape[:2])  # air bubble rim on glass
    img[rr, cc] = (100, 90, 100)
    mask = tissue_mask(img, mpp=MPP, modality="he")
    assert not mask[:110, :80].any() and not mask[195:245, 5:55].any()
    assert not mask[:, 3].any()


def test_faint_tissue_is_kept(he_thumb, he_mask):
    faint = (255 - (255 - he_thumb.astype(np.float32)) * 0.35).astype(np.uint8)  # 35% of the stain
    mask = tissue_mask(faint, mpp=MPP, modality="he")
    overlap = np.count_nonzero(mask & he_mask) / np.count_nonzero(he_mask)
    assert overlap > 0.85


def test_empty_glass_has_no_tissue():
    rng = np.random.default_rng(1)
    glass = np.clip(rng.normal(242, 2, (200, 160, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass, mpp=MPP, modality="he").any()
    assert not tissue_mask(glass[..., :1], mpp=MPP, modality="brightfield").any()
    dark = rng.poisson(150, (200, 160, 2)).astype(np.uint16)
    assert not tissue_mask(dark, mpp=MPP, modality="fluorescence").any()


def test_unstained_brightfield_and_fluorescence_versions_of_the_sample(he_thumb, he_mask):
    density = 1 - he_thumb.astype(np.float32).mean(axis=2) / 255
    rng = np.random.default_rng(2)
    gray = np.clip(245 - 12 * density + rng.normal(0, 1.5, density.shape), 0, 255).astype(np.uint8)
    assert guess_modality(gray[..., None]) == "brightfield"
    m = tissue_mask(gray, mpp=MPP)
    assert np.count_nonzero(m & he_mask) / np.count_nonzero(he_mask | m) > 0.8
    fluo = rng.poisson(100 + 2000 * density[..., None] * np.array([1.0, 0.6])).astype(np.uint16)
    assert guess_modality(fluo) == "fluorescence"
    m = tissue_mask(fluo, mpp=MPP)
    assert np.count_nonzero(m & he_mask) / np.count_nonzero(he_mask | m) > 0.8


def test_min_area_is_physical(he_thumb):
    small = tissue_mask(he_thumb, mpp=MPP, cfg=TissueConfig(min_area_um2=1.0))
    big = tissue_mask(he_thumb, mpp=MPP, cfg=TissueConfig(min_area_um2=1e6))
    assert np.count_nonzero(small) >= np.count_nonzero(big)
    assert not tissue_mask(he_thumb, mpp=MPP, cfg=TissueConfig(min_area_um2=1e9)).any()


def test_bad_input():
    with pytest.raises(InputError, match="expected an H×W×C image"):
        tissue_mask(np.zeros(5), mpp=1.0)
    with pytest.raises(InputError, match="needs an RGB image"):
        tissue_mask(np.zeros((10, 10, 2), np.uint8), mpp=1.0, modality="he")
    with pytest.raises(InputError, match="unknown tissue modality 'dapi'"):
        tissue_mask(np.zeros((10, 10, 3), np.uint8), mpp=1.0, modality="dapi")
