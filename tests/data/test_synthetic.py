"""Synthetic TMA pairs: determinism, truth, geometry, disjoint source parts, and the optics."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.color import rgb2hed

from stainldm.config import from_dict, load_config
from stainldm.data._optics import AUTOFLUORESCENCE_CHANNELS
from stainldm.data.synthetic import SampleConfig, make_tma_pair
from stainldm.data.warp import stained_to_unstained, unstained_to_stained
from stainldm.errors import ConfigError, InputError
from stainldm.wsi.reader import ArrayReader, open_slide

SOURCE = Path(__file__).resolve().parents[2] / "data" / "samples" / "CMU-1-Small-Region.svs"
# 2×2 grid of 150 µm cores (300 px): about a second per pair.
SMALL = {"grid": {"rows": 2, "cols": 2, "core_diameter_um": 150.0, "gap_um": 50.0, "test_cores": 1}}


def small_cfg(**top) -> SampleConfig:
    return from_dict(SampleConfig, {**SMALL, **top})


@pytest.fixture(scope="module")
def source():
    with open_slide(SOURCE) as slide:
        yield slide


@pytest.fixture(scope="module")
def af_pair(source):
    return make_tma_pair(source, small_cfg(seed=0))


@pytest.fixture(scope="module")
def bf_pair(source):
    return make_tma_pair(source, small_cfg(seed=0, modality="brightfield"))


@pytest.fixture(scope="module")
def other_pairs(source):
    return [make_tma_pair(source, small_cfg(seed=s)) for s in (1, 2)]


def _roundtrip(truth: dict) -> dict:
    """The truth as a reader of truth.json sees it."""
    return json.loads(json.dumps(truth))


# ---------------------------------------------------------------------------------------------
# Determinism and the truth record
# ---------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_pair_and_another_seed_differs(source, af_pair, other_pairs):
    again = make_tma_pair(source, small_cfg(seed=0))
    assert json.dumps(again.truth) == json.dumps(af_pair.truth)
    np.testing.assert_array_equal(again.unstained, af_pair.unstained)
    np.testing.assert_array_equal(again.stained, af_pair.stained)
    other = other_pairs[0]
    assert other.truth["transform"]["matrix"] != af_pair.truth["transform"]["matrix"]
    assert other.truth["landmarks"] != af_pair.truth["landmarks"]
    if other.unstained.shape == af_pair.unstained.shape:
        assert not np.array_equal(other.unstained, af_pair.unstained)


def test_truth_has_the_documented_schema(af_pair):
    truth = _roundtrip(af_pair.truth)
    assert truth == af_pair.truth  # JSON-serialisable, nothing lost
    assert truth["mpp"] == 0.5 and truth["modality"] == "autofluorescence" and truth["seed"] == 0
    assert truth["grid"] == {"rows": 2, "cols": 2}
    assert len(truth["cores"]) == 3 and len(truth["missing"]) == 1
    ids = [c["id"] for c in truth["cores"]] + truth["missing"]
    assert sorted(ids) == ["A1", "A2", "B1", "B2"]
    assert sum(c["split"] == "test" for c in truth["cores"]) == 1
    for core in truth["cores"]:
        assert re.fullmatch(r"[A-Z][1-9][0-9]*", core["id"])
        assert core["id"] == f"{chr(ord('A') + core['row'])}{core['col'] + 1}"
        assert core["split"] in ("train", "test")
        for key in ("center_unstained_xy", "center_stained_xy", "source_center_xy"):
            assert len(core[key]) == 2 and all(isinstance(v, float) for v in core[key])
        assert core["diameter_px"] == pytest.approx(300.0)
        assert core["source_radius_px"] > core["diameter_px"] / 2
        assert isinstance(core["flip"], bool) and 0 <= core["rotation_deg"] < 360
        assert np.asarray(core["unstained_to_source"]).shape == (2, 3)
        marks = np.asarray(truth["landmarks"][core["id"]])
        assert marks.shape[0] >= 100 and marks.shape[1] == 4
    assert set(truth["landmarks"]) == {c["id"] for c in truth["cores"]}
    t = truth["transform"]
    assert np.asarray(t["matrix"]).shape == (2, 3) and len(t["translation_px"]) == 2
    assert {"rotation_deg", "elastic_max_px", "elastic_field"} <= set(t)
    regions = truth["source_regions"]
    assert regions["axis"] in ("x", "y") and regions["test_side"] in ("low", "high")
    assert truth["unstained"]["channel_names"] == list(AUTOFLUORESCENCE_CHANNELS)
    assert truth["stained"]["size_wh"] == [af_pair.stained.shape[1], af_pair.stained.shape[0]]


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def test_landmarks_follow_the_recorded_transform(af_pair):
    truth = _roundtrip(af_pair.truth)
    t = truth["transform"]
    m = np.asarray(t["matrix"])
    for marks in truth["landmarks"].values():
        marks = np.asarray(marks)
        p, q = marks[:, :2], marks[:, 2:]
        assert np.abs(stained_to_unstained(q, t) - p).max() < 1e-3
        assert np.abs(unstained_to_stained(p, t) - q).max() < 1e-3
        # The non-rigid part is the elastic warp, nothing else.
        affine = p @ m[:, :2].T + m[:, 2]
        assert np.hypot(*(q - affine).T).max() <= t["elastic_max_px"] + 1e-3


def test_landmarks_lie_on_core_tissue(af_pair):
    truth = af_pair.truth
    for core in truth["cores"]:
        marks = np.asarray(truth["landmarks"][core["id"]])
        ij = np.floor(marks[:, :2]).astype(int)
        assert af_pair.tissue_mask[ij[:, 1], ij[:, 0]].all()
        dist = np.hypot(*(marks[:, :2] - core["center_unstained_xy"]).T)
        assert dist.max() < core["diameter_px"] / 2
        # Glass is about (246, 243, 243); tissue at the landmarks is clearly darker or coloured.
        he = af_pair.he_aligned[ij[:, 1], ij[:, 0]].astype(int)
        assert np.median(he.sum(axis=1)) < 600


def test_stained_slide_shows_the_aligned_he_where_the_transform_says(af_pair):
    """NCC of stained patches around q with he_aligned resampled through the recorded mapping."""
    t = _roundtrip(af_pair.truth)["transform"]
    gray_he = cv2.cvtColor(af_pair.he_aligned, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gray_st = cv2.cvtColor(af_pair.stained, cv2.COLOR_RGB2GRAY).astype(np.float32)
    r = 16
    scores, shifted = [], []
    for marks in af_pair.truth["landmarks"].values():
        for _, _, x_s, y_s in marks[::12]:
            cx, cy = int(x_s), int(y_s)
            gx, gy = np.meshgrid(np.arange(cx - r, cx + r + 1) + 0.5, np.arange(cy - r, cy + r + 1) + 0.5)
            p = stained_to_unstained(np.column_stack([gx.ravel(), gy.ravel()]), t) - 0.5
            expected = cv2.remap(gray_he, p[:, 0].reshape(gx.shape).astype(np.float32),
                                 p[:, 1].reshape(gx.shape).astype(np.float32), cv2.INTER_LINEAR)
            actual = gray_st[cy - r : cy + r + 1, cx - r : cx + r + 1]
            scores.append(_ncc(actual, expected))
            # Control: the same patch 6 px off no longer matches as well.
            shifted.append(_ncc(gray_st[cy - r + 6 : cy + r + 7, cx - r : cx + r + 1], expected))
    assert np.median(scores) > 0.98
    assert np.median(shifted) < np.median(scores) - 0.1


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum() + 1e-9))


def test_misregistration_stays_within_bounds(af_pair, other_pairs):
    for pair in (af_pair, *other_pairs):
        t = pair.truth["transform"]
        assert abs(t["rotation_deg"]) <= 3.0
        assert math.hypot(*t["translation_px"]) * pair.mpp <= 200.0
        field = t["elastic_field"]
        nodes_max = np.hypot(np.asarray(field["dx"]), np.asarray(field["dy"])).max()
        assert 0 < nodes_max <= 3.0 and t["elastic_max_px"] == pytest.approx(nodes_max)
        # matrix = rotation about center_xy, then translation_px.
        m = np.asarray(t["matrix"])
        a = math.radians(t["rotation_deg"])
        np.testing.assert_allclose(m[:, :2], [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], atol=1e-12)
        c = np.asarray(t["center_xy"])
        np.testing.assert_allclose(m[:, :2] @ c + m[:, 2] - c, t["translation_px"], atol=1e-9)
        # No tissue cut off: every mapped core lies inside the stained canvas.
        w, h = pair.truth["stained"]["size_wh"]
        for core in pair.truth["cores"]:
            x, y = core["center_stained_xy"]
            rad = core["diameter_px"] / 2 * 1.05 + 3
            assert rad <= x <= w - rad and rad <= y <= h - rad


def test_train_and_test_source_discs_do_not_intersect(af_pair, other_pairs):
    for pair in (af_pair, *other_pairs):
        truth = pair.truth
        regions = truth["source_regions"]
        axis = "xy".index(regions["axis"])
        cores = truth["cores"]
        for core in cores:
            c, r = np.asarray(core["source_center_xy"]), core["source_radius_px"]
            low_side = c[axis] + r <= regions["split_px"]
            high_side = c[axis] - r >= regions["split_px"]
            on_test_side = low_side if regions["test_side"] == "low" else high_side
            on_train_side = high_side if regions["test_side"] == "low" else low_side
            assert on_test_side if core["split"] == "test" else on_train_side, core["id"]
        for a in (c for c in cores if c["split"] == "train"):
            for b in (c for c in cores if c["split"] == "test"):
                gap = math.dist(a["source_center_xy"], b["source_center_xy"])
                assert gap >= a["source_radius_px"] + b["source_radius_px"], (a["id"], b["id"])


def test_unstained_to_source_matrix_reproduces_the_core(source, af_pair):
    """he_aligned inside a core is the source H&E at unstained_to_source(p)."""
    core = af_pair.truth["cores"][0]
    m = np.asarray(core["unstained_to_source"])
    marks = np.asarray(af_pair.truth["landmarks"][core["id"]])[:, :2]
    src_xy = marks @ m[:, :2].T + m[:, 2]
    x0, y0 = np.floor(src_xy.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(src_xy.max(axis=0)).astype(int) + 2
    region = source.read_region((x0, y0), (x1 - x0, y1 - y0)).astype(np.float32)
    s = (src_xy - [x0, y0] - 0.5).astype(np.float32)
    expected = cv2.remap(region, s[:, :1], s[:, 1:], cv2.INTER_LINEAR)[:, 0]
    ij = np.floor(marks).astype(int)
    actual = af_pair.he_aligned[ij[:, 1], ij[:, 0]].astype(np.float32)
    assert np.median(np.abs(actual - expected)) < 6


# ---------------------------------------------------------------------------------------------
# The unstained modalities
# ---------------------------------------------------------------------------------------------
def test_autofluorescence_is_two_uint16_channels_dark_glass_dark_nuclei(af_pair):
    u = af_pair.unstained
    assert u.dtype == np.uint16 and u.shape[2] == 2 and af_pair.channel_names == AUTOFLUORESCENCE_CHANNELS
    tissue = af_pair.tissue_mask
    glass = ~cv2.dilate(tissue.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    hed = rgb2hed(af_pair.he_aligned)
    nuclei = tissue & (hed[..., 0] > np.percentile(hed[..., 0][tissue], 90))
    stroma = tissue & (hed[..., 0] < np.percentile(hed[..., 0][tissue], 40)) & \
        (hed[..., 1] > np.percentile(hed[..., 1][tissue], 60))
    for k in range(2):
        ch = u[..., k].astype(np.float64)
        assert np.median(ch[glass]) < 300  # offset 100 ADU + weak medium fluorescence
        assert np.median(ch[tissue]) > 2 * np.median(ch[glass])
        assert np.median(ch[nuclei]) < 0.8 * np.median(ch[stroma])


def test_brightfield_is_one_uint8_channel_nearly_transparent(bf_pair):
    u = bf_pair.unstained
    assert u.dtype == np.uint8 and u.shape[2] == 1 and bf_pair.channel_names == ("brightfield",)
    tissue = bf_pair.tissue_mask
    far = ~cv2.dilate(tissue.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    glass = float(np.median(u[..., 0][far]))
    assert 238 <= glass <= 252
    ratio = np.median(u[..., 0][tissue]) / glass
    assert 0.9 <= ratio <= 0.99  # a few percent darker


@pytest.mark.parametrize("pair_name", ["af_pair", "bf_pair"])
def test_unstained_is_not_a_linear_map_of_the_he_colours(pair_name, request):
    """An affine least-squares fit unstained -> H&E RGB on tissue leaves most of the variance
    (≈0.87 autofluorescence, ≈0.93 brightfield on this small grid), yet the unstained image is
    informative: autofluorescence correlates with the eosin density."""
    pair = request.getfixturevalue(pair_name)
    tissue = pair.tissue_mask
    x = pair.unstained[tissue].astype(np.float64)
    y = pair.he_aligned[tissue].astype(np.float64)
    feats = np.column_stack([x, np.ones(len(x))])
    beta, *_ = np.linalg.lstsq(feats, y, rcond=None)
    unexplained = ((y - feats @ beta) ** 2).sum(axis=0) / ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    assert unexplained.mean() > 0.5, unexplained
    if pair_name == "af_pair":
        eosin = rgb2hed(pair.he_aligned)[..., 1][tissue]
        assert np.corrcoef(x[:, 0], eosin)[0, 1] > 0.5


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_source_with_too_little_tissue_says_what_to_reduce(source):
    canvas = np.full((3000, 3000, 3), 245, dtype=np.uint8)
    canvas[1300:1700, 1300:1700] = source.read_region((1000, 2000), (400, 400))
    sparse = ArrayReader(canvas, mpp=0.5)
    with pytest.raises(InputError, match=r"reduce grid\.rows/grid\.cols"):
        make_tma_pair(sparse, SampleConfig())


def test_source_without_mpp_is_refused(source):
    with pytest.raises(InputError, match=r"does not record its resolution \(mpp\).*pass `mpp` when opening it"):
        make_tma_pair(ArrayReader(source.read_region((0, 0), (500, 500))), small_cfg())


def test_source_that_is_not_rgb_is_refused(source):
    gray = ArrayReader(source.read_region((0, 0), (500, 500))[..., :1], mpp=0.5)
    with pytest.raises(InputError, match=r"must be an RGB uint8 H&E slide, got 1 channel\(s\) of uint8"):
        make_tma_pair(gray, small_cfg())


def test_config_rejects_unknown_keys_and_impossible_grids(tmp_path):
    with pytest.raises(ConfigError, match=r"grid\.rowz'; did you mean 'grid\.rows'"):
        load_config(SampleConfig, overrides=["grid.rowz=2"])
    with pytest.raises(ConfigError, match="grid.test_cores"):
        load_config(SampleConfig, overrides=["grid.test_cores=11"])  # 11 present cores, none left to train
    with pytest.raises(ConfigError, match="modality"):
        load_config(SampleConfig, overrides=["modality=darkfield"])
    with pytest.raises(ConfigError, match="max_rotation_deg"):
        load_config(SampleConfig, overrides=["misregistration.max_rotation_deg=90"])
    shipped = Path(__file__).resolve().parents[2] / "configs" / "sample.yaml"
    assert load_config(SampleConfig, shipped) == SampleConfig()  # the documented defaults
    yaml = tmp_path / "sample.yaml"
    yaml.write_text("grid:\n  rows: 2\n  cols: 5\nseed: 7\n")
    cfg = load_config(SampleConfig, yaml, overrides=["grid.cols=3"])
    assert (cfg.grid.rows, cfg.grid.cols, cfg.seed) == (2, 3, 7)

