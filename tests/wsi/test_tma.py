"""Dearraying drawn TMA masks: labels, rotation, missing/fragmented/merged cores, non-TMA slides."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage import draw

from stainldm.errors import InputError
from stainldm.wsi.tma import dearray, row_label, write_cores_csv, write_cores_geojson

MASK_MPP, LEVEL0_MPP = 4.0, 0.5
SCALE = MASK_MPP / LEVEL0_MPP


def _tma_mask(rows=3, cols=4, *, angle_deg=2.0, diameter=87.5, spacing=112.5, missing=(), jitter=0.0, seed=0):
    """A drawn TMA mask and the true level-0 centres by label."""
    rng = np.random.default_rng(seed)
    h = int(rows * spacing + 2 * diameter + 40)
    w = int(cols * spacing + 2 * diameter + 40)
    mask = np.zeros((h, w), bool)
    t = math.radians(angle_deg)
    centres = {}
    for r in range(rows):
        for c in range(cols):
            label = f"{row_label(r)}{c + 1}"
            u, v = c * spacing, r * spacing
            x = diameter + 20 + u * math.cos(t) - v * math.sin(t) + rng.normal(0, jitter)
            y = diameter + 20 + u * math.sin(t) + v * math.cos(t) + rng.normal(0, jitter)
            if label in missing:
                continue
            rr, cc = draw.disk((y, x), diameter / 2, shape=mask.shape)
            mask[rr, cc] = True
            centres[label] = ((x + 0.5) * SCALE, (y + 0.5) * SCALE)
    return mask, centres


def test_row_labels_follow_qupath():
    assert [row_label(i) for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]


@pytest.mark.parametrize("angle", [-3.0, 0.0, 2.5, 8.0])
def test_full_grid_labels_and_centres(angle):
    mask, truth = _tma_mask(angle_deg=angle, jitter=2.0)
    cores, grid = dearray(mask, mask_mpp=MASK_MPP, level0_mpp=LEVEL0_MPP)
    assert grid.is_tma and (grid.rows, grid.cols) == (3, 4)
    assert grid.rotation_deg == pytest.approx(angle, abs=0.5)
    assert grid.spacing_px == pytest.approx(112.5 * SCALE, rel=0.03)
    assert [c.id for c in cores] == ["A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4", "C1", "C2", "C3", "C4"]
    for core in cores:
        assert core.status == "ok"
        err = math.dist(core.center_xy, truth[core.id])
        assert err < 0.05 * 700, (core.id, err)
        assert core.diameter_px == pytest.approx(700, rel=0.05)


def test_missing_cores_including_a_corner():
    mask, truth = _tma_mask(missing=("A1", "B3"))
    cores, grid = dearray(mask, mask_mpp=MASK_MPP, level0_mpp=LEVEL0_MPP)
    by_id = {c.id: c for c in cores}
    assert (grid.rows, grid.cols) == (3, 4)
    assert {c.id for c in cores if c.status == "missing"} == {"A1", "B3"}
    assert by_id["B4"].status == "ok"
    assert math.dist(by_id["C4"].center_xy, truth["C4"]) < 35
    # The missing position is predicted where the lattice puts it.
    _, full = _tma_mask()
    assert math.dist(by_id["B3"].center_xy, full["B3"]) < 35


def test_fragmented_and_merged_cores():
    mask, _ = _tma_mask()
    # B2 split in two by a cut; C3 bridged to C4 by a thick strip of tissue.
    core_b2 = dearray(mask, mask_mpp=MASK_MPP)[0][5]
    cx = int(core_b2.center_xy[0])
    mask[:, cx - 3 : cx + 3] &= ~_region(mask, core_b2)[:, cx - 3 : cx + 3]
    c3 = dearray(mask, mask_mpp=MASK_MPP)[0][10]
    y = int(c3.center_xy[1])
    mask[y - 15 : y + 15, int(c3.center_xy[0]) : int(c3.center_xy[0] + 112)] = True
    cores, _ = dearray(mask, mask_mpp=MASK_MPP)
    status = {c.id: c.status for c in cores}
    assert status["B2"] == "fragmented"
    assert "merged" in (status["C3"], status["C4"])
    assert sum(s == "ok" for s in status.values()) >= 9


def _region(mask, core):
    x, y, w, h = core.bbox_xywh
    out = np.zeros_like(mask)
    out[y : y + h, x : x + w] = True
    return out


def test_single_tissue_piece_is_one_region():
    mask = np.zeros((300, 200), bool)
    rr, cc = draw.ellipse(150, 100, 120, 60)
    mask[rr, cc] = True
    cores, grid = dearray(mask, mask_mpp=MASK_MPP, level0_mpp=LEVEL0_MPP)
    assert not grid.is_tma and len(cores) == 1
    assert cores[0].id == "tissue" and cores[0].bbox_xywh[2] == pytest.approx(119 * SCALE, abs=2 * SCALE)


def test_empty_mask_is_a_clear_error():
    with pytest.raises(InputError, match="no tissue found"):
        dearray(np.zeros((50, 50), bool), mask_mpp=4.0)


def test_geojson_and_csv_for_qupath(tmp_path):
    mask, _ = _tma_mask(missing=("C2",))
    cores, _ = dearray(mask, mask_mpp=MASK_MPP, level0_mpp=LEVEL0_MPP)
    write_cores_geojson(cores, tmp_path / "cores.geojson")
    write_cores_csv(cores, tmp_path / "cores.csv")
    gj = json.loads((tmp_path / "cores.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 12
    f = gj["features"][0]
    assert f["properties"]["name"] == "A1" and f["properties"]["classification"]["name"] == "TMA core"
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 65
    missing = next(g for g in gj["features"] if g["properties"]["name"] == "C2")
    assert missing["properties"]["classification"]["name"] == "TMA core (missing)"
    lines = (tmp_path / "cores.csv").read_text().splitlines()
    assert lines[0].startswith("id,row,col,center_x") and len(lines) == 13
