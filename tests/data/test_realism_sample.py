"""make-sample's realism: structures one modality shows and the other does not, each slide its own
optics, the truth unchanged, and realism off exactly the plain simulation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.color import rgb2hed

from stainldm.config import from_dict, load_config
from stainldm.data.synthetic import SampleConfig, make_tma_pair
from stainldm.errors import ConfigError
from stainldm.wsi.reader import open_slide

SOURCE = Path(__file__).resolve().parents[2] / "data" / "samples" / "CMU-1-Small-Region.svs"
# 2×2 grid of 150 µm cores (300 px): about a second per pair.
SMALL = {"grid": {"rows": 2, "cols": 2, "core_diameter_um": 150.0, "gap_um": 50.0, "test_cores": 1}}
# Realism on with every structure and optical difference switched off: each test turns on its own.
NEUTRAL = {"enabled": True, "brown_blobs_per_mm2": 0, "pigment_blobs_per_mm2": 0, "dropped_nuclei_fraction": 0,
           "stained_dust_per_mm2": 0, "unstained_dust_per_mm2": 0, "unstained_granules_per_mm2": 0,
           "unstained_debris_per_mm2": 0, "stained_psf_sigma_um": 0, "unstained_psf_sigma_um": 0,
           "stained_stain_strength": 1, "stained_noise_sd": 0, "unstained_exposure": 1}
# sha256[:16] of the pixels of SMALL, seed 0, made before realism existed (2026-12, numpy 2.4,
# opencv 5.0). A change here means make-sample's plain output changed: only a deliberate change
# of the simulation (or of numpy's / OpenCV's numerics) may update these.
PLAIN_PIXELS = {
    "autofluorescence": {"unstained": "249f7474137490e6", "stained": "c963809ccbf1694c",
                         "he_aligned": "e84953a73a622431"},
    "brightfield": {"unstained": "6abfdae4754b820e", "stained": "c963809ccbf1694c",
                    "he_aligned": "e84953a73a622431"},
}


@pytest.fixture(scope="module")
def source():
    with open_slide(SOURCE) as slide:
        yield slide


def _pair(source, realism: dict | None = None, **top):
    return make_tma_pair(source, from_dict(SampleConfig, {**SMALL, **top, "realism": realism or {}}))


def _only(**params) -> dict:
    return {**NEUTRAL, **params}


@pytest.fixture(scope="module")
def plain(source):
    return _pair(source)


@pytest.fixture(scope="module")
def plain_bf(source):
    return _pair(source, modality="brightfield")


def _near(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


def _sharpness(image: np.ndarray, where: np.ndarray) -> float:
    """Mean squared Laplacian of a single channel over ``where``."""
    lap = cv2.Laplacian(image.astype(np.float32), cv2.CV_32F, ksize=3)
    return float((lap[where] ** 2).mean())


# ---------------------------------------------------------------------------------------------
# Realism off is today's simulation; the truth never changes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["autofluorescence", "brightfield"])
def test_realism_off_gives_the_pixels_made_before_realism_existed(source, plain, plain_bf, modality):
    pair = plain if modality == "autofluorescence" else plain_bf
    got = {k: hashlib.sha256(np.ascontiguousarray(getattr(pair, k)).tobytes()).hexdigest()[:16]
           for k in PLAIN_PIXELS[modality]}
    assert got == PLAIN_PIXELS[modality]
    assert "realism" not in pair.truth and pair.realism_masks == {}
    # Realism on with nothing switched on draws nothing visible either.
    neutral = _pair(source, NEUTRAL, modality=modality)
    for k in ("unstained", "stained", "he_aligned"):
        np.testing.assert_array_equal(getattr(neutral, k), getattr(pair, k))


def test_truth_is_the_same_with_realism_on(source, plain):
    real = _pair(source, {"enabled": True})
    for key in ("transform", "landmarks", "cores", "missing", "grid", "source_regions", "unstained", "stained"):
        assert json.dumps(real.truth[key]) == json.dumps(plain.truth[key]), key
    np.testing.assert_array_equal(real.tissue_mask, plain.tissue_mask)
    assert {k: v for k, v in real.truth["config"].items() if k != "realism"} == \
        {k: v for k, v in plain.truth["config"].items() if k != "realism"}
    record = real.truth["realism"]
    assert {"brown_blobs", "pigment_blobs", "stained_dust", "dropped_nuclei", "unstained_granules"} <= set(record)
    assert record["brown_blobs"]["shown_on"] == "stained" and record["unstained_granules"]["shown_on"] == "unstained"
    assert record["dropped_nuclei"]["missing_on"] == "unstained"
    for name, rec in record.items():
        assert 0 <= rec["tissue_fraction"] < 0.05, name
        assert real.realism_masks[name].shape == plain.tissue_mask.shape
    assert json.loads(json.dumps(real.truth)) == real.truth


# ---------------------------------------------------------------------------------------------
# One side only
# ---------------------------------------------------------------------------------------------
def test_brown_deposits_and_pigment_are_in_the_he_only(source, plain):
    real = _pair(source, _only(brown_blobs_per_mm2=2000.0, pigment_blobs_per_mm2=1000.0))
    np.testing.assert_array_equal(real.unstained, plain.unstained)  # the unstained slide does not see them
    brown, pigment = real.realism_masks["brown_blobs"], real.realism_masks["pigment_blobs"]
    assert brown.sum() > 500 and pigment.sum() > 100
    # The H&E changes only at the deposits (and their soft edges), and there it turns DAB-brown.
    changed = (real.he_aligned != plain.he_aligned).any(axis=2)
    assert not (changed & ~_near(brown | pigment, 3)).any()
    dab_on, dab_off = rgb2hed(real.he_aligned)[..., 2], rgb2hed(plain.he_aligned)[..., 2]
    tissue = plain.tissue_mask
    assert np.median(dab_on[brown & ~pigment]) > np.percentile(dab_off[tissue], 99)
    assert (real.he_aligned[pigment].sum(axis=1) < plain.he_aligned[pigment].sum(axis=1)).mean() > 0.95
    # The stained slide (after the warp) shows them too: many more DAB-brown pixels.
    brown_px = lambda img: int((rgb2hed(img)[..., 2] > np.percentile(dab_off[tissue], 99.5)).sum())  # noqa: E731
    assert brown_px(real.stained) > 3 * brown_px(plain.stained) + 200


@pytest.mark.parametrize("modality", ["autofluorescence", "brightfield"])
def test_granules_debris_and_dust_are_in_the_unstained_only(source, plain_bf, modality):
    # A brighter mounting medium keeps every expected count above the exact-Poisson cut (20), so both
    # runs draw the same noise numbers and the pixels can be compared one by one away from the structures.
    top = {"modality": modality, "autofluorescence": {"background_photons": [300.0, 300.0]}}
    base = _pair(source, **top) if modality == "autofluorescence" else plain_bf
    real = _pair(source, _only(unstained_granules_per_mm2=3000.0, unstained_debris_per_mm2=200.0,
                               unstained_dust_per_mm2=100.0, dust_od=0.5), **top)
    np.testing.assert_array_equal(real.stained, base.stained)  # the H&E does not see them
    np.testing.assert_array_equal(real.he_aligned, base.he_aligned)
    masks = real.realism_masks
    granules, debris, dust = masks["unstained_granules"], masks["unstained_debris"], masks["unstained_dust"]
    assert granules.sum() > 200 and debris.sum() > 200 and dust.sum() > 200
    tissue = base.tissue_mask
    assert (debris & ~tissue).sum() > 100 and (dust & ~tissue).sum() > 100  # on glass as well as on tissue
    on, off = real.unstained.astype(np.float64), base.unstained.astype(np.float64)
    # Elsewhere the unstained slide is the plain one (the same noise draws).
    far = ~_near(granules | debris | dust, 12)
    assert np.abs(on - off)[far].max() <= 1
    if modality == "autofluorescence":
        assert np.median(on[granules & tissue & ~dust, 1] / off[granules & tissue & ~dust, 1]) > 1.3
        assert np.median(on[debris & ~tissue & ~dust, 0] - off[debris & ~tissue & ~dust, 0]) > 500
        assert np.median(on[dust & tissue & ~granules & ~debris, 0] / off[dust & tissue & ~granules & ~debris, 0]) < 0.9
    else:  # they absorb: darker than the plain brightfield image
        assert np.median(on[debris & ~tissue, 0] - off[debris & ~tissue, 0]) < -20
        assert np.median(on[dust, 0] - off[dust, 0]) < -20


@pytest.mark.parametrize("side", ["unstained", "stained"])
def test_dropped_nuclei_are_missing_from_one_side_only(source, plain, side):
    real = _pair(source, _only(dropped_nuclei_fraction=0.5, dropped_nuclei_side=side))
    hole = real.realism_masks["dropped_nuclei"]
    record = real.truth["realism"]["dropped_nuclei"]
    assert record["missing_on"] == side and 0.3 < record["count"] / record["of_detected"] < 0.7
    assert hole.sum() > 1000
    nuclei = hole & plain.tissue_mask
    h_plain = rgb2hed(plain.he_aligned)[..., 0]
    assert np.median(h_plain[nuclei]) > np.percentile(h_plain[plain.tissue_mask], 75)  # they were nuclei
    if side == "unstained":
        np.testing.assert_array_equal(real.stained, plain.stained)
        np.testing.assert_array_equal(real.he_aligned, plain.he_aligned)
        # Nuclei are dark in autofluorescence: filled with stroma, they light up (inside the 2 px halo).
        inner = cv2.erode(nuclei.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        ratio = real.unstained[inner, 0].astype(np.float64) / plain.unstained[inner, 0]
        assert np.median(ratio) > 1.2
    else:
        np.testing.assert_array_equal(real.unstained, plain.unstained)
        h_real = rgb2hed(real.he_aligned)[..., 0]
        assert np.median(h_real[nuclei]) < np.percentile(h_plain[plain.tissue_mask], 60)
        assert not (real.he_aligned != plain.he_aligned).any(axis=2)[~hole].any()


# ---------------------------------------------------------------------------------------------
# Each slide its own optics
# ---------------------------------------------------------------------------------------------
def test_each_slide_has_its_own_blur(source, plain):
    real = _pair(source, _only(stained_psf_sigma_um=1.0, unstained_psf_sigma_um=0.3))
    tissue = plain.tissue_mask
    inner = cv2.erode(tissue.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    gray = lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # noqa: E731
    st_mask = gray(plain.stained) < 200  # stained tissue, in the stained frame
    stained_ratio = _sharpness(gray(real.stained), st_mask) / _sharpness(gray(plain.stained), st_mask)
    # Smooth first: the shot noise (the same draws on both) would hide the blur of the signal.
    smooth = lambda u: cv2.GaussianBlur(u[..., 1].astype(np.float32), (0, 0), 0.7)  # noqa: E731
    unstained_ratio = _sharpness(smooth(real.unstained), inner) / _sharpness(smooth(plain.unstained), inner)
    assert stained_ratio < 0.5 and 0.6 < unstained_ratio < 0.97 and stained_ratio < unstained_ratio - 0.2
    np.testing.assert_array_equal(real.he_aligned, plain.he_aligned)  # blur is the scan's, after the warp


def test_each_slide_has_its_own_noise_and_contrast(source, plain):
    real = _pair(source, _only(stained_noise_sd=4.0, stained_stain_strength=1.3, unstained_exposure=0.5))
    # Glass of the stained slide, in its own frame, well away from tissue.
    glass = ~_near(cv2.cvtColor(plain.stained, cv2.COLOR_RGB2GRAY) < 225, 30)
    diff = real.stained.astype(np.float64) - plain.stained
    assert glass.mean() > 0.3 and 3.5 < diff[glass].std() < 4.5 and abs(diff[glass].mean()) < 0.2  # camera noise
    tissue = plain.tissue_mask
    assert real.he_aligned[tissue].mean() < plain.he_aligned[tissue].mean() - 5  # stronger staining: darker
    offset = 100.0
    ratio = (real.unstained[tissue].astype(np.float64) - offset).mean() / (plain.unstained[tissue] - offset).mean()
    assert 0.45 < ratio < 0.55  # half the exposure, the same gain: half the ADU above the offset


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
def test_realism_is_reachable_by_set_and_bad_values_name_the_key():
    cfg = load_config(SampleConfig, overrides=["realism.enabled=true", "realism.stained_psf_sigma_um=1.2"])
    assert cfg.realism.enabled and cfg.realism.stained_psf_sigma_um == 1.2
    assert not SampleConfig().realism.enabled
    bad = {
        "realism.brown_blobs_per_mm2=-1": r"^realism\.brown_blobs_per_mm2 \(-1\) must not be negative$",
        "realism.dropped_nuclei_fraction=1.5": r"^realism\.dropped_nuclei_fraction \(1\.5\) must be in \[0, 1\]$",
        "realism.dust_diameter_um=[30, 5]": r"^realism\.dust_diameter_um \(\[30\.0, 5\.0\]\) must be \[min, max\]",
        "realism.unstained_exposure=0": r"^realism\.unstained_exposure \(0\) must be in \(0, 10\]$",
        "realism.dropped_nuclei_side=both": r"realism\.dropped_nuclei_side",
        "realism.dust_od=-0.1": r"^realism\.dust_od \(-0\.1\) must not be negative$",
    }
    for override, pattern in bad.items():
        with pytest.raises(ConfigError, match=pattern) as exc:
            load_config(SampleConfig, overrides=[override])
        assert "\n" not in str(exc.value)
