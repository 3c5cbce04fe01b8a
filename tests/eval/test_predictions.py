"""Prediction folders, method names, reading a prediction over a core, and window borders from provenance."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from stainldm.errors import InputError
from stainldm.eval.cores import CoreImages
from stainldm.eval.predictions import (
    Method,
    PredictionSlide,
    canvas_borders,
    check_sources,
    method_name,
    name_ldm_sweep,
    read_prediction_dir,
    stitch_borders,
)
from stainldm.wsi.writer import write_pyramid


def _slide(path: Path, *, size_wh=(64, 48), mpp=1.0, value=None) -> Path:
    w, h = size_wh
    img = np.zeros((h, w, 3), np.uint8) if value is None else np.full((h, w, 3), value, np.uint8)
    img[..., 0] = np.arange(w, dtype=np.uint8)[None, :] if value is None else value
    write_pyramid(path, img, mpp=mpp, tile=16, compression="none")
    return path


# ---------------------------------------------------------------------------------------------
# Folders and names
# ---------------------------------------------------------------------------------------------
def test_prediction_folder_matches_slides_by_provenance_input_then_by_name(tmp_path):
    folder = tmp_path / "pred"
    folder.mkdir()
    _slide(folder / "renamed.tiff")
    (folder / "renamed.json").write_text(json.dumps({"input": str(tmp_path / "in" / "s1.svs"), "steps": 3}))
    _slide(folder / "s2.tiff")
    (folder / "s2.json").write_text("{not json")  # unreadable: matched by name, no provenance
    _slide(folder / "s2.uncertainty.tiff")  # not a prediction
    unstained = {"s1": tmp_path / "in" / "s1.svs", "s2": tmp_path / "in" / "s2.svs", "s3": tmp_path / "in" / "s3.svs"}
    found = read_prediction_dir(folder, unstained)
    assert found.slides == {"s1": folder / "renamed.tiff", "s2": folder / "s2.tiff"}
    assert found.provenance["s1"]["steps"] == 3 and found.provenance["s2"] == {}
    assert found.folder_meta["steps"] == 3


def test_prediction_folder_errors_name_the_parameter(tmp_path):
    with pytest.raises(InputError, match=r"^`pred` .*nope: not a folder; give the `out` folder"):
        read_prediction_dir(tmp_path / "nope", {})
    with pytest.raises(InputError, match=r"^`baseline` .*: not a folder.* or a baseline run"):
        read_prediction_dir(tmp_path / "nope", {}, param="baseline")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text("{}")
    with pytest.raises(InputError, match=r"no stained slides \(\.tiff\) in it \(it is a run folder: pass it as "
                                         r"`baseline`.*`stainldm stain`"):
        read_prediction_dir(run, {})


def test_check_sources_leaves_baseline_runs_for_later(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text("{}")
    check_sources({}, preds=[], baselines=[run])  # a run is stained when the methods are loaded
    with pytest.raises(InputError, match="`baseline`"):
        check_sources({}, preds=[], baselines=[tmp_path / "missing"])


def test_method_names_are_unique_and_say_the_sampler():
    taken: set[str] = set()
    first = method_name("ldm", {"steps": 10, "sampler": "ddim"}, Path("a"), taken)
    taken.add(first)
    second = method_name("ldm", {"steps": 1, "sampler": "ddim"}, Path("b"), taken)
    taken.add(second)
    third = method_name("ldm", {"steps": 1, "sampler": "ddim"}, Path("c"), taken)
    taken.add(third)
    assert (first, second, third) == ("LDM", "LDM (ddim, 1 step)", "LDM [c]")
    assert method_name("ldm", {}, Path("c"), taken) == "LDM [c 2]"
    assert method_name("baseline", {}, Path("x"), set()) == "U-Net baseline"
    assert method_name("other", {}, Path("mine"), set()) == "mine"


def test_several_ldm_folders_are_named_by_their_sampler_settings():
    ms = [Method("LDM", "ldm", Path("f1"), provenance={"s": {"sampler": "ddim", "steps": 5}}),
          Method("U-Net baseline", "baseline", Path("b")),
          Method("LDM (x)", "ldm", Path("f2"), folder_meta={"sampler": "ddim", "steps": 10})]
    name_ldm_sweep(ms)
    assert [m.name for m in ms] == ["LDM (ddim, 5 steps)", "U-Net baseline", "LDM (ddim, 10 steps)"]
    same = [Method("a", "ldm", Path("f1")), Method("b", "ldm", Path("f2"))]
    name_ldm_sweep(same)
    assert [m.name for m in same] == ["LDM (?, ? steps) [f1]", "LDM (?, ? steps) [f2]"]


def test_method_settings_and_seconds_come_from_the_provenance():
    m = Method("LDM", "ldm", Path("f"), provenance={"a": {"seconds": 2, "steps": 3}, "b": {"seconds": 1.5}},
               folder_meta={"steps": 9})
    assert m.settings() == {"seconds": 2, "steps": 3} and m.seconds == 3.5
    assert Method("x", "ldm", folder_meta={"steps": 9}).settings() == {"steps": 9}
    assert Method("x", "ldm").seconds is None


# ---------------------------------------------------------------------------------------------
# Reading a prediction
# ---------------------------------------------------------------------------------------------
def _core(xy, shape) -> CoreImages:
    h, w = shape
    return CoreImages("s", "A1", xy, np.zeros((h, w, 1)), np.zeros((h, w, 3), np.uint8), np.ones((h, w), bool), [])


def test_prediction_slide_reads_the_core_in_the_unstained_frame(tmp_path):
    path = _slide(tmp_path / "s.tiff", size_wh=(64, 48), mpp=1.0)
    # Unstained at 0.5 µm/px (128×96 px), store at 2 µm/px: a core at unstained (32, 16) is prediction (16, 8).
    with PredictionSlide(path, {}, slide_mpp=0.5, slide_wh=(128, 96), tile_mpp=2.0) as pred:
        assert pred.resampled and pred.uncertainty is None
        rgb, unc = pred.read(_core((32.0, 16.0), (4, 8)))
        assert rgb.shape == (4, 8, 3) and rgb.dtype == np.uint8 and unc is None
        assert abs(float(rgb[0, 0, 0]) - 16.5) <= 1.5  # column 16–17 of the prediction's gradient
        assert pred.to_core_px([16, 24], _core((32.0, 16.0), (4, 8))) == [0, 4]
        assert pred.to_core_px([8, 12], _core((32.0, 16.0), (4, 8)), axis=1) == [0, 2]


def test_prediction_slide_opens_its_uncertainty_map(tmp_path):
    path = _slide(tmp_path / "s.tiff")
    _slide(tmp_path / "s.uncertainty.tiff", value=7)
    with PredictionSlide(path, {}, slide_mpp=1.0, slide_wh=(64, 48), tile_mpp=1.0) as pred:
        assert not pred.resampled
        _, unc = pred.read(_core((0.0, 0.0), (4, 4)))
        assert unc.dtype == np.float32 and (unc == 7).all()


def test_prediction_of_another_size_is_refused(tmp_path):
    path = _slide(tmp_path / "s.tiff", size_wh=(64, 48))
    with pytest.raises(InputError, match=r"s\.tiff: covers 64×48 µm but its unstained slide covers 64×96 µm"):
        PredictionSlide(path, {}, slide_mpp=1.0, slide_wh=(64, 96), tile_mpp=1.0)


# ---------------------------------------------------------------------------------------------
# Window borders from the provenance
# ---------------------------------------------------------------------------------------------
def test_canvas_borders_every_tile_from_each_origin_plus_the_edges():
    xs, ys = canvas_borders([(10, 20, 100, 40), (200, 20, 30, 40)], tile_px=32)
    assert xs == [10, 42, 74, 106, 110, 200, 230]
    assert ys == [20, 52, 60]


def test_stitch_borders_read_the_recorded_canvases_and_tile(tmp_path):
    pred = SimpleNamespace(meta={"canvases": [[0, 0, 70, 10]], "tile_px": 32})
    assert stitch_borders(pred, store_tile_px=16) == ([0, 32, 64, 70], [0, 10])
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"tile_px": 20}))
    pred = SimpleNamespace(meta={"canvases": [[0, 0, 50, 10]], "checkpoint": str(run)})  # older: no tile_px
    assert stitch_borders(pred, store_tile_px=16) == ([0, 20, 40, 50], [0, 10])
    pred = SimpleNamespace(meta={"canvases": [[0, 0, 50, 10]], "checkpoint": str(tmp_path / "gone")})
    assert stitch_borders(pred, store_tile_px=16) == ([0, 16, 32, 48, 50], [0, 10])


def test_stitch_borders_are_empty_without_recorded_canvases():
    assert stitch_borders(SimpleNamespace(meta={"stain_config": {}}), store_tile_px=64) == ([], [])
