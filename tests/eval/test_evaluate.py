"""The evaluation as a library call (as from a notebook), and its parts: options, colour map, notes."""

from __future__ import annotations

import csv
import json
import math
import shutil
from types import SimpleNamespace

import pytest

from stainldm.errors import InputError
from stainldm.eval.evaluate import (
    EvalData,
    Evaluation,
    check_options,
    colour_map_method,
    evaluate,
    fit_colour_map,
    write_evaluation,
)
from stainldm.eval.predictions import Method, load_methods
from stainldm.eval.table import CoreRow, csv_metrics


def test_options_are_checked_with_their_parameter_names(tmp_path):
    with pytest.raises(InputError, match=r"^`match_radius` 0: must be positive"):
        check_options(match_radius=0)
    with pytest.raises(InputError, match=r"^`fid_weights` .*missing\.pt: file not found"):
        check_options(match_radius=4, fid_weights=tmp_path / "missing.pt")
    check_options(match_radius=4, fid_weights=None)


def test_colour_map_needs_train_tiles():
    rows = [SimpleNamespace(split="test")]
    assert fit_colour_map(SimpleNamespace(rows=rows), seed=0) is None
    assert colour_map_method(SimpleNamespace(rows=rows), seed=0) is None


def test_notes_of_a_method_add_what_the_evaluation_found():
    m = Method("LDM", "ldm", notes=["given"])
    ev = Evaluation([m], [], [], [], {"LDM": ["given", "resampled"]}, None, 1.0, 0)
    assert ev.names == ["LDM"] and ev.notes_of(m) == ["given", "resampled"]


def test_a_split_without_tiles_is_refused(train_bf_store):
    with pytest.raises(InputError, match="no tiles in split 'test'"):
        EvalData.open(train_bf_store, split="test")


# ---------------------------------------------------------------------------------------------
# The whole evaluation from Python, on the shared trained runs
# ---------------------------------------------------------------------------------------------
def test_evaluate_from_python_returns_typed_rows(eval_runs, tmp_path):
    data = EvalData.open(str(eval_runs["store"]), split="test")  # plain strings, as typed in a notebook
    assert data.slide_ids == ["sample"] and data.unstained["sample"].name == "unstained.tiff"
    assert data.tile_mpp == 1.0 and set(data.slide_cores("sample")) == {c for _, c in data.cores}
    # The same prediction twice (the second a copy that lost its slide): one evaluates, one is missing.
    other = tmp_path / "other"
    shutil.copytree(eval_runs["pred_ldm"], other)
    for p in list(other.iterdir()):
        p.rename(p.with_name(p.name.replace("unstained", "another")))
    (other / "another.json").write_text('{"input": "/elsewhere/another.tiff", "model_kind": "ldm", "steps": 1}')
    methods = load_methods(data.unstained, preds=[str(eval_runs["pred_ldm"]), other], out=str(tmp_path / "out"))
    methods.append(colour_map_method(data.store, seed=0))
    ticks = []
    result = evaluate(data, methods, progress=ticks.append)
    assert result.names == [m.name for m in methods] and result.names[-1] == "colour map"
    assert len(ticks) == len(data.cores) == result.n_cores and result.gallery == [] and result.fid_kid is None
    assert len(result.rows) == len(data.cores) * len(methods)
    assert all(isinstance(r, CoreRow) and set(r.values) == set(csv_metrics()) for r in result.rows)
    by = {name: [r for r in result.rows if r.method == name] for name in result.names}
    ldm, missing, cmap = (by[n] for n in result.names)
    assert all(r.ok and r.tissue_px > 0 and math.isfinite(r.value("psnr")) for r in ldm)
    assert all(math.isfinite(r.value("seam_score")) for r in ldm)  # borders from the recorded canvases
    assert all(r.status.startswith("missing: no prediction for slide sample") for r in missing)
    assert all(math.isnan(r.value("psnr")) for r in missing)
    assert all(r.ok and math.isnan(r.value("seam_score")) for r in cmap)  # a per-pixel map has no windows
    assert result.errors == []
    # The outputs the command writes, from the same result.
    out = tmp_path / "out"
    summary, html = write_evaluation(out, result, store=eval_runs["store"], split="test", n_boot=200)
    assert html == out / "report.html" and html.is_file() and summary["reference"] == result.names[0]
    with open(out / "metrics.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(result.rows)
    data_json = json.loads((out / "metrics.json").read_text())
    assert data_json["fid_kid"] is None and "skipped" in data_json["fid_note"]
    assert [m["name"] for m in data_json["methods"]] == result.names
