"""Registration that only improves: stage checks, one-sided structure, the deformable stage,
per-stage motion and flags (issues 15 and 16).

Pairs are small make-sample slides registered core by core on a few truth cores, so each test
stays within seconds; one-sided structure (DAB-like blobs in the H&E only) is painted in.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from stainldm.config import load_config
from stainldm.data.pair_reports import REG_COLUMNS, write_slide_reports
from stainldm.data.pairs import PairPlan, load_prepare_config
from stainldm.errors import ConfigError
from stainldm.wsi import _register_stages
from stainldm.wsi._register_signal import one_sided, robust_ncc, structure
from stainldm.wsi.reader import ArrayReader, open_slide
from stainldm.wsi.register import (
    CoreTransform,
    PairRegistration,
    RegisterConfig,
    StageMotion,
    register_pair,
    registration_errors,
    stage_errors,
)
from stainldm.wsi.tma import Grid

SMALL = ("grid.rows=2", "grid.cols=3", "grid.core_diameter_um=300", "grid.gap_um=100", "grid.test_cores=1")
NO_MISREGISTRATION = ("misregistration.max_rotation_deg=0", "misregistration.max_translation_um=0",
                      "misregistration.elastic_max_px=0")


def _sample(out, *overrides):
    from stainldm.data.sample_files import make_sample
    from stainldm.data.synthetic import SampleConfig

    make_sample(out, load_config(SampleConfig, overrides=[*SMALL, *overrides]))
    return out


@pytest.fixture(scope="module")
def aligned_pair(tmp_path_factory):
    """A small autofluorescence pair whose H&E lies exactly on the unstained scan."""
    return _sample(tmp_path_factory.mktemp("aligned"), *NO_MISREGISTRATION)


def _open(folder, *, blobs: int = 0):
    """The pair as in-memory slides, with ``blobs`` dark DAB-like blobs per core painted into the
    H&E only (structure the other modality does not show), and the truth."""
    truth = json.loads((folder / "truth.json").read_text())
    with open_slide(folder / "unstained.tiff") as u, open_slide(folder / "stained.tiff") as s:
        ua, sa, mpp = u.read_region((0, 0), u.dimensions), s.read_region((0, 0), s.dimensions).copy(), u.mpp[0]
    rng = np.random.default_rng(0)
    for core in truth["cores"]:
        cx, cy = core["center_stained_xy"]
        for _ in range(blobs):
            a, d = rng.uniform(0, 2 * np.pi), core["diameter_px"] / 2 * np.sqrt(rng.uniform(0, 0.7))
            cv2.circle(sa, (int(cx + d * np.cos(a)), int(cy + d * np.sin(a))), int(rng.uniform(8, 20)),
                       (100, 60, 25), -1)
    return ArrayReader(ua, mpp=mpp), ArrayReader(sa, mpp=mpp), truth


def _regions(truth, n: int) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for core in truth["cores"][:n]:
        r = core["diameter_px"] / 2
        x, y = core["center_unstained_xy"]
        out[core["id"]] = (round(x - r), round(y - r), round(2 * r), round(2 * r))
    return out


def _tre(reg, truth) -> np.ndarray:
    landmarks = {k: np.asarray(v, dtype=np.float64) for k, v in truth["landmarks"].items()}
    return np.concatenate(list(registration_errors(reg, landmarks).values()))


# ---------------------------------------------------------------------------------------------
# Robust similarity
# ---------------------------------------------------------------------------------------------
def test_one_sided_structure_is_found_and_left_out_of_the_similarity():
    rng = np.random.default_rng(0)
    signal = np.zeros((128, 128), np.float32)
    for x, y in rng.integers(4, 124, size=(60, 2)):  # nuclei both modalities show
        if abs(x - 64) > 18 or abs(y - 64) > 18:
            cv2.circle(signal, (int(x), int(y)), 3, 1.0, -1)
    a = structure(signal)
    blobbed = signal.copy()
    cv2.circle(blobbed, (64, 64), 12, 2.0, -1)  # a dark blob only one modality shows
    b = structure(blobbed)
    lone_a, lone_b = one_sided(a, b)
    assert lone_b[64, 52] and not lone_a[64, 52] and not lone_b[10, 10]
    shifted = np.roll(b, 3, axis=1)
    # the blob's strong edges dominate plain NCC; the robust one scores the shared texture
    from stainldm.wsi.register import ncc

    assert ncc(a, b) < 0.8 < robust_ncc(a, b)
    assert robust_ncc(a, b) > robust_ncc(a, shifted) + 0.3


# ---------------------------------------------------------------------------------------------
# Each stage may only improve
# ---------------------------------------------------------------------------------------------
def test_a_pair_at_the_truth_stays_there_even_with_one_sided_blobs(aligned_pair):
    u, s, truth = _open(aligned_pair, blobs=12)
    reg = register_pair(u, s, _regions(truth, 1), RegisterConfig())
    tre = _tre(reg, truth)
    assert np.median(tre) <= 0.5, np.median(tre)
    assert not any(reg.flagged(k) for k in reg.cores)


def test_a_core_stage_move_that_its_check_does_not_confirm_is_undone(aligned_pair, monkeypatch):
    """A biased per-core estimate (here: ECC replaced by one that proposes a 6 px shift at
    2 µm/px) is refused by the stage's own measure: the core keeps the slide-level transform, the
    proposal shows in the stage motion and the core is flagged."""
    u, s, truth = _open(aligned_pair)
    biased = np.array([[1.0, 0.0, 6.0], [0.0, 1.0, 0.0]])
    real_ecc = _register_stages.ecc

    def biased_ecc(template, moving, warp, **kw):  # the slide-level stage keeps the real one
        return biased if kw.get("motion") == cv2.MOTION_EUCLIDEAN else real_ecc(template, moving, warp, **kw)

    monkeypatch.setattr(_register_stages, "ecc", biased_ecc)
    cfg = RegisterConfig(deformable=False)
    (core_id, bbox), = _regions(truth, 1).items()
    matrix = np.eye(3)
    kept, proposed, before, after = _register_stages.refine_core(u, s, matrix, bbox, cfg)
    assert kept is matrix and after < before
    assert proposed[0, 2] == pytest.approx(6 * cfg.core_mpp / 0.5)
    reg = register_pair(u, s, {core_id: bbox}, cfg)
    motion = reg.cores[core_id].motion["core"]
    assert not motion.kept and motion.moved_px == 0 and motion.proposed_px == pytest.approx(24, abs=0.5)
    assert reg.flagged(core_id) and not reg.core_ok(core_id)
    assert np.median(_tre(reg, truth)) <= 0.5  # the refused move did no harm
    assert replace(reg, keep_flagged=True).core_ok(core_id)


@pytest.mark.slow
def test_a_20_px_elastic_warp_reaches_the_goal(tmp_path):
    """Issue 15's goal on a warped small pair: median TRE ≤ 0.5 px and p95 ≤ 1.5 px (~15 s)."""
    u, s, truth = _open(_sample(tmp_path, "misregistration.elastic_max_px=20"))
    reg = register_pair(u, s, _regions(truth, 3), RegisterConfig())
    landmarks = {k: np.asarray(v, dtype=np.float64) for k, v in truth["landmarks"].items()}
    per_stage = stage_errors(reg, landmarks)
    assert list(per_stage) == ["coarse", "core", "tiles", "deform", "final"]
    tre = per_stage["final"]
    assert np.median(tre) <= 0.5 and np.percentile(tre, 95) <= 1.5, (np.median(tre), np.percentile(tre, 95))
    assert np.percentile(tre, 95) < np.percentile(per_stage["tiles"], 95)  # the deformable stage did work


# ---------------------------------------------------------------------------------------------
# Records: transforms, reports, config
# ---------------------------------------------------------------------------------------------
def test_motion_and_dense_grids_round_trip_and_old_json_loads():
    rng = np.random.default_rng(0)
    tf = CoreTransform(np.eye(3), np.arange(4.0) * 10, np.arange(3.0) * 10, rng.normal(size=(3, 4, 2)),
                       np.full((2, 2), 0.5), np.full((2, 2), 0.6), np.array([5.0, 25]), np.array([5.0, 25]),
                       {"core": StageMotion(1.5, 0.0, (1.2, -0.3), False, 0.4, 0.3)}, 1.24)
    again = CoreTransform.from_json(json.loads(json.dumps(tf.to_json())))
    pts = rng.uniform(0, 30, size=(20, 2))
    np.testing.assert_allclose(again.map_points(pts), tf.map_points(pts), atol=1e-3)
    assert again.sim_grid[0].tolist() == [5.0, 25.0] and again.disagree_px == pytest.approx(1.24)
    assert again.motion["core"].kept is False and again.motion["core"].offset_xy == pytest.approx((1.2, -0.3))
    # a registration.json written before stage checks: no tile_x, motion, flags
    old = {"matrix": np.eye(3).tolist(), "coarse_similarity": 0.8,
           "cores": {"A1": {"matrix": np.eye(3).tolist(), "grid_x": [0.0, 10.0], "grid_y": [0.0],
                            "shifts": [[[1.0, 0.0], [1.0, 0.0]]], "sim_before": 0.4, "sim_after": 0.6}}}
    reg = PairRegistration.from_json(old)
    assert reg.cores["A1"].motion == {} and not reg.flagged("A1") and reg.core_ok("A1")
    assert reg.cores["A1"].map_points(np.array([[5.0, 5.0]])).tolist() == [[6.0, 5.0]]
    assert PairRegistration.from_json(json.loads(json.dumps(reg.to_json()))).core_similarity == {"A1": (0.4, 0.6)}


def test_registration_csv_reports_stage_moves_and_leaves_flagged_cores_out(tmp_path):
    def tf(disagree: float) -> CoreTransform:
        motion = {"core": StageMotion(3.0, 3.0, (3.0, 0.0)), "tiles": StageMotion(0.4, 0.4, (0.3, 0.1)),
                  "deform": StageMotion(0.2, 0.0, (0.0, 0.0), kept=False)}
        return CoreTransform(np.eye(3), motion=motion, disagree_px=disagree)

    reg = PairRegistration(np.eye(3), 0.8, {"A1": tf(0.5), "A2": tf(2.5)}, {"A1": (0.3, 0.5), "A2": (0.3, 0.5)},
                           0.25, 2.0)
    assert reg.core_ok("A1") and not reg.core_ok("A2")
    plan = PairPlan(np.zeros((4, 4), bool), 8.0, [], Grid(0.0, 1.0, 1, 1, False), reg)
    landmarks = {"A1": [[0, 0, 0.5, 0]], "A2": [[0, 0, 0, 0]]}
    write_slide_reports(tmp_path, "af", plan, {}, {"landmarks": landmarks})
    with open(tmp_path / "registration.csv", newline="") as fh:
        rows = {r["core"]: r for r in csv.DictReader(fh)}
    assert tuple(rows["A1"]) == REG_COLUMNS
    assert rows["A1"]["use"] == "used" and rows["A1"]["flagged"] == "no"
    assert rows["A2"]["use"] == "excluded: stages disagree" and rows["A2"]["flagged"] == "yes"
    assert [rows["A2"][f"move_{s}_px"] for s in ("core", "tiles", "deform")] == ["3.000", "0.400", "0.000"]
    assert rows["A2"]["disagree_px"] == "2.500" and rows["ALL"]["flagged"] == "1"
    saved = PairRegistration.from_json(json.loads((tmp_path / "registration.json").read_text()))
    assert saved.flagged("A2") and not saved.core_ok("A2") and saved.cores["A2"].motion["core"].moved_px == 3.0


def test_keep_flagged_and_the_new_register_keys_load_from_overrides():
    cfg = load_prepare_config(None, ["register.keep_flagged=true", "register.deform_method=ilk"])
    assert cfg.register.keep_flagged and cfg.register.deform_method == "ilk"
    assert not RegisterConfig().keep_flagged and RegisterConfig().stage_checks and RegisterConfig().deformable
    with pytest.raises(ConfigError, match="`register.deform_method`"):
        load_prepare_config(None, ["register.deform_method=bspline"])
    with pytest.raises(ConfigError, match="`register.deform_grid_um`"):
        RegisterConfig(deform_grid_um=0)
