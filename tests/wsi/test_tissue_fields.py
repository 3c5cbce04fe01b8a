"""Tissue masks on fields that are all tissue, all glass and half of each, per modality.

The H&E is the real CMU sample's dermis and epidermis (mirror-tiled to fill the field); the
unstained brightfield and autofluorescence are rendered from it by make-sample's own optics
(camera offset, background photons, shading, field-of-view seams, shot and read noise), at
0.5 µm/px, and masked through :func:`slide_mask` at its default 4 µm/px, as staining does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from stainldm.data._optics import (
    AutofluorescenceConfig,
    BrightfieldConfig,
    simulate_autofluorescence,
    simulate_brightfield,
)
from stainldm.wsi.reader import open_slide
from stainldm.wsi.slide import ArrayReader
from stainldm.wsi.tissue import TissueConfig, he_fixed_threshold_mask, slide_mask, tissue_fraction

MPP = 0.5
GLASS_RGB = (242, 242, 242)
# A 0.8 × 1.6 mm canvas, tissue on its left half, glass on its right; fields are 1600 × 1200 px cuts.
FIELDS = {"tissue": (0, 1200), "glass": (2000, 3200), "half": (1000, 2200)}


@pytest.fixture(scope="module", params=["he", "brightfield", "fluorescence"])
def canvas(request, cmu_path) -> tuple[str, np.ndarray]:
    with open_slide(cmu_path) as slide:
        crop = slide.read_region((880, 1720), (480, 1000))  # dermis and epidermis, no glass
    tiles = [np.concatenate([crop[:: 1 - 2 * (i % 2), :: 1 - 2 * (j % 2)] for j in range(5)], axis=1)
             for i in range(3)]
    he = np.empty((1600, 3200, 3), np.uint8)
    he[:] = GLASS_RGB
    he[:, :1600] = np.concatenate(tiles, axis=0)[:1600, :1600]
    if request.param == "he":
        return "he", he
    args = (he, he_fixed_threshold_mask(he), [(0, 0, np.ones(he.shape[:2], np.float32))], [1.0], GLASS_RGB)
    rng = np.random.default_rng(0)
    if request.param == "brightfield":
        return "brightfield", simulate_brightfield(*args, bf=BrightfieldConfig(), mpp=MPP, rng=rng)
    return "fluorescence", simulate_autofluorescence(*args, af=AutofluorescenceConfig(), mpp=MPP, rng=rng)


def _fraction(canvas, field: str) -> float:
    modality, image = canvas
    x0, x1 = FIELDS[field]
    return tissue_fraction(slide_mask(ArrayReader(image[:, x0:x1], mpp=MPP), modality=modality))


def test_a_field_filled_with_tissue_is_all_tissue(canvas):
    assert _fraction(canvas, "tissue") >= 0.95


def test_a_field_of_glass_has_no_tissue(canvas):
    assert _fraction(canvas, "glass") == 0.0


def test_a_field_half_tissue_is_half_tissue(canvas):
    assert _fraction(canvas, "half") == pytest.approx(0.5, abs=0.1)


@pytest.mark.parametrize("pair, modality", [("small_af_pair", "fluorescence"), ("small_bf_pair", "brightfield")])
def test_the_inside_of_a_make_sample_core_cut_out_as_its_own_slide_is_tissue(request, pair, modality):
    sample = request.getfixturevalue(pair)
    with open_slide(sample / "unstained.tiff") as slide:
        unstained = slide.read_region((0, 0), slide.dimensions)
    corner = ArrayReader(unstained[:200, :200], mpp=MPP).read_at_mpp((0, 0), (25, 25), 4.0)  # the slide's glass
    # As dark as glass, give or take its shading (30%), in every channel.
    dark_glass = 1.3 * np.median(corner.reshape(-1, corner.shape[2]), axis=0) if modality == "fluorescence" else None
    checked = []
    for core in json.loads((sample / "truth.json").read_text())["cores"]:  # 300 µm cores
        x, y = (round(v) for v in core["center_unstained_xy"])
        inside = ArrayReader(unstained[y - 200 : y + 200, x - 200 : x + 200], mpp=MPP)  # 200 µm inside the disc
        # A 200 µm cut is 40 000 µm²: keep pieces of it down to 2000 µm² (as for small pieces in staining).
        fraction = tissue_fraction(slide_mask(inside, TissueConfig(min_area_um2=2000), modality=modality))
        # Some cores hold real gaps of the source's dermis, as dark as the slide's glass in the
        # autofluorescence and open to the cut's edge; a cut without them is all tissue.
        gaps = 0.0 if dark_glass is None else \
            float(np.mean((inside.read_at_mpp((0, 0), (50, 50), 4.0) <= dark_glass).all(axis=2)))
        assert fraction >= (0.95 if gaps < 0.02 else 0.5), (core["id"], fraction, gaps)
        checked.append(gaps < 0.02)
    assert sum(checked) >= 2  # at least two cores without gaps
