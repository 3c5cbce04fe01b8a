"""``stainldm evaluate`` on a real (tiny) pipeline: make-sample -> prepare -> train (ci.yaml) -> stain -> evaluate.

The command's report (``eval_report`` here: the library's is in conftest) compares the LDM, the U-Net baseline (stained on
the fly from its run) and the colour map; the bad-input tests share one run over doctored copies
of the LDM prediction.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.cli import main
from stainldm.wsi.reader import open_slide
from stainldm.wsi.writer import write_pyramid


@pytest.fixture(scope="module")
def eval_report(eval_runs, tmp_path_factory) -> dict:
    """``stainldm evaluate`` of the ldm prediction, the baseline run (stained on the fly) and the
    colour map on the test split: ``{"out": folder, "code": exit code, "stdout": printed text}``."""
    out = tmp_path_factory.mktemp("eval_report_cli") / "report"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["evaluate", "--pred", str(eval_runs["pred_ldm"]), "--baseline", str(eval_runs["baseline"]),
                     "--store", str(eval_runs["store"]), "--out", str(out), "--quiet", "--device", "cpu"])
    return {"out": out, "code": code, "stdout": buf.getvalue()}


def _evaluate(eval_runs, out: Path, *preds: Path, extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """Runs the command on the shared store; returns (exit code, stdout, stderr)."""
    so, se = io.StringIO(), io.StringIO()
    argv = ["evaluate", *[a for p in preds for a in ("--pred", str(p))], "--store", str(eval_runs["store"]),
            "--out", str(out), "--quiet", "--device", "cpu", "--bootstrap", "200", *extra]
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        code = main(argv)
    return code, so.getvalue(), se.getvalue()


def _rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _copy_pred(src: Path, dst: Path) -> tuple[Path, dict]:
    """A copy of a one-slide prediction folder; returns (its tiff, its provenance)."""
    shutil.copytree(src, dst)
    tiff = next(p for p in dst.glob("*.tiff") if ".uncertainty." not in p.name)
    return tiff, json.loads(tiff.with_suffix(".json").read_text())


def _read_all(path: Path) -> np.ndarray:
    with open_slide(path) as s:
        return s.read_region((0, 0), s.dimensions)


# ---------------------------------------------------------------------------------------------
# The shared report
# ---------------------------------------------------------------------------------------------
def test_report_files_rows_and_summary(eval_report, eval_runs):
    from stainldm.data.store import TileStore

    assert eval_report["code"] == 0
    out = eval_report["out"]
    for name in ("report.html", "metrics.csv", "metrics.json", "figures/distributions.png", "figures/per_core.png"):
        assert (out / name).is_file(), name
    store = TileStore.open(eval_runs["store"])
    test_cores = {(r.slide_id, r.core) for r in store.rows if r.split == "test"}
    rows = _rows(out)
    methods = {r["method"] for r in rows}
    assert methods == {"LDM", "U-Net baseline", "colour map"}
    assert len(rows) == len(test_cores) * len(methods)  # one row per core and method
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert 0 < float(r["psnr"]) < 60 and -1 <= float(r["ssim"]) <= 1
        assert float(r["lab_w"]) >= 0 and float(r["nuclei_real"]) > 0
        assert (r["seam_score"] == "") == (r["method"] == "colour map")  # no stitching in a per-pixel map
        assert 0 < float(r["sharpness_ratio"]) < 10 and float(r["sharpness_real"]) > 0
        assert all(float(r[f"spectrum_{b}"]) > 0 for b in ("tissue", "nuclei", "chromatin"))
    with open(out / "metrics.csv", newline="") as fh:  # the realism columns come after today's: old readers work
        header = next(csv.reader(fh))
    assert header[5:19] == ["psnr", "ssim", "lab_w_L", "lab_w_a", "lab_w_b", "lab_w", "h_corr", "e_corr",
                            "nuclei_real", "nuclei_pred", "nuclei_count_ratio", "nuclei_count_error", "nuclei_f1",
                            "seam_score"]
    assert header[19] == "sharpness_ratio"
    # The baseline run was stained on the fly into the report folder.
    assert (out / "stained-baseline" / "unstained.tiff").is_file()
    # The printed table names every method, and the verdicts compare the first --pred with the others.
    assert all(m in eval_report["stdout"] for m in methods)
    assert "LDM vs colour map:" in eval_report["stdout"] and "LDM vs U-Net baseline:" in eval_report["stdout"]
    assert "Realism: " in eval_report["stdout"] and "sharpness ratio" in eval_report["stdout"]


def test_metrics_json_has_cis_provenance_and_skipped_fid(eval_report):
    data = json.loads((eval_report["out"] / "metrics.json").read_text())
    ldm = data["summary"]["LDM"]
    for key in ("psnr", "ssim", "lab_w", "h_corr", "e_corr", "nuclei_f1", "seam_score", "sharpness_ratio",
                "spectrum_nuclei"):
        s = ldm[key]
        assert s["n"] >= 1 and s["lo"] <= s["mean"] <= s["hi"], key
    assert data["bootstrap"] == {"resamples": 2000, "seed": 0, "level": 0.95, "unit": "core"}
    methods = {m["name"]: m for m in data["methods"]}
    prov = methods["LDM"]
    assert prov["steps"] == 1 and prov["samples"] == 2 and len(prov["checkpoint_sha256"]) == 64
    assert prov["model"]["kind"] == "ldm" and prov["seconds_total"] > 0
    assert methods["colour map"]["kind"] == "colour map"
    assert data["fid_kid"] is None and "skipped" in data["fid_note"]
    assert {r["method"] for r in data["ranking"]} == set(methods)
    assert data["versions"]["stainldm"]


def test_report_html_is_offline_and_complete(eval_report):
    out = eval_report["out"]
    text = (out / "report.html").read_text()
    assert "id='summary'" in text and "Where LDM wins and loses" in text
    assert "uncertainty (0–" in text  # the 2-sample LDM prediction has an uncertainty map
    assert "id='summary-realism'" in text and "Detail side by side, 1:1" in text
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    srcs = re.findall(r"src='([^']+)'", text)
    assert srcs and all((out / s).is_file() for s in srcs)


# ---------------------------------------------------------------------------------------------
# Bad input: doctored copies of one prediction, evaluated together in one run
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def doctored(eval_runs, tmp_path_factory) -> dict:
    """Copies of ``pred_ldm``: ``coarse`` (written at twice the mpp), ``cropped`` (half the slide),
    ``partial`` (glass over the test cores), ``other`` (another slide's output), ``broken``
    (truncated TIFF); evaluated with the original and FID/KID from a tiny TorchScript extractor."""
    from stainldm.data.store import TileStore

    base = tmp_path_factory.mktemp("eval_doctored")
    rgb = _read_all(next(eval_runs["pred_ldm"].glob("unstained.tiff")))

    tiff, meta = _copy_pred(eval_runs["pred_ldm"], base / "coarse")
    half = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2].reshape(rgb.shape[0] // 2, 2, rgb.shape[1] // 2, 2, 3)
    write_pyramid(tiff, half.mean(axis=(1, 3)).round().astype(np.uint8), mpp=meta["mpp"] * 2, tile=256)
    tiff.with_suffix(".json").write_text(json.dumps({**meta, "mpp": meta["mpp"] * 2}))

    tiff, meta = _copy_pred(eval_runs["pred_ldm"], base / "cropped")
    write_pyramid(tiff, np.ascontiguousarray(rgb[: rgb.shape[0] // 2]), mpp=meta["mpp"], tile=256)

    tiff, meta = _copy_pred(eval_runs["pred_ldm"], base / "partial")
    store = TileStore.open(eval_runs["store"])
    test_rows = [r for r in store.rows if r.split == "test"]
    with open_slide(eval_runs["slide"]) as s:
        scale = s.mpp[0] / meta["mpp"]  # unstained level-0 px -> prediction px
    blank = rgb.copy()
    x0, y0 = min(r.x for r in test_rows) * scale, min(r.y for r in test_rows) * scale
    x1, y1 = max(r.x for r in test_rows) * scale + store.tile_px, max(r.y for r in test_rows) * scale + store.tile_px
    blank[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = 255
    write_pyramid(tiff, blank, mpp=meta["mpp"], tile=256)

    tiff, meta = _copy_pred(eval_runs["pred_ldm"], base / "other")
    tiff.with_suffix(".json").write_text(json.dumps({**meta, "input": "/elsewhere/another.tiff"}))
    for p in list(tiff.parent.iterdir()):
        p.rename(p.with_name(p.name.replace("unstained", "another")))

    tiff, _ = _copy_pred(eval_runs["pred_ldm"], base / "broken")
    tiff.write_bytes(tiff.read_bytes()[: tiff.stat().st_size // 3])  # truncated mid-file

    class Features(torch.nn.Module):  # stands in for Inception: (N, 3, 299, 299) -> (N, 8)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 2).flatten(1)[:, :8]

    weights = base / "features.pt"
    torch.jit.script(Features()).save(str(weights))
    folders = [base / n for n in ("coarse", "cropped", "partial", "other", "broken")]
    code, stdout, stderr = _evaluate(eval_runs, base / "out", eval_runs["pred_ldm"], *folders,
                                     extra=("--fid-weights", str(weights)))
    rows = _rows(base / "out")
    data = json.loads((base / "out" / "metrics.json").read_text())
    names = {m["name"].split("[")[-1].rstrip("]"): m["name"] for m in data["methods"] if "[" in m["name"]}
    by = {k: [r for r in rows if r["method"] == name] for k, name in names.items()}
    return {"code": code, "stdout": stdout, "stderr": stderr, "rows": by, "data": data, "names": names,
            "out": base / "out"}


def test_bad_predictions_are_reported_and_the_report_is_written(doctored):
    assert doctored["code"] == 1  # errors (cropped, broken) make the run fail after writing everything
    assert (doctored["out"] / "report.html").is_file()
    lines = doctored["stderr"].strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert all(r["status"] == "ok" for r in doctored["rows"]["pred_ldm"])
    text = (doctored["out"] / "report.html").read_text()
    assert "Errors" in text and "missing" in text


def test_prediction_at_another_mpp_is_resampled_and_said(doctored):
    coarse = doctored["names"]["coarse"]
    notes = next(m["notes"] for m in doctored["data"]["methods"] if m["name"] == coarse)
    assert any("resampled to the store's 1 µm/px" in n for n in notes)
    assert all(r["status"] == "ok" for r in doctored["rows"]["coarse"])
    s = doctored["data"]["summary"]
    assert abs(s[coarse]["psnr"]["mean"] - s[doctored["names"]["pred_ldm"]]["psnr"]["mean"]) < 3  # alike


def test_prediction_of_another_size_is_an_error_for_its_cores(doctored):
    rows = doctored["rows"]["cropped"]
    assert rows and all(r["status"].startswith("error: ") and "covers" in r["status"] for r in rows)
    assert any("cropped/unstained.tiff: covers" in line for line in doctored["stderr"].splitlines())


def test_core_missing_from_the_prediction_is_reported(doctored):
    rows = doctored["rows"]["partial"]
    assert rows and all(r["status"] == "missing: core not stained in the prediction" for r in rows)
    assert doctored["data"]["status"][doctored["names"]["partial"]]["missing"] == len(rows)
    assert f"0/{len(rows)}" in doctored["stdout"]  # the table shows 0 of n cores evaluated
    # No tissue in the prediction: the realism metrics are n/a (empty, null), not a crash.
    assert all(r["sharpness_ratio"] == "" and r["nuclei_area_w1"] == "" for r in rows)
    realism = doctored["data"]["summary"][doctored["names"]["partial"]]
    assert realism["sharpness_ratio"]["n"] == 0 and realism["sharpness_ratio"]["mean"] is None


def test_prediction_without_the_slide_reports_its_cores_missing(doctored):
    rows = doctored["rows"]["other"]
    assert rows and all(r["status"].startswith("missing: no prediction for slide sample") for r in rows)


def test_unreadable_prediction_slide_is_recorded(doctored):
    rows = doctored["rows"]["broken"]
    assert rows and all(r["status"].startswith("error: ") and "broken/unstained.tiff" in r["status"] for r in rows)
    assert any("broken/unstained.tiff" in line for line in doctored["stderr"].splitlines())


def test_fid_and_kid_with_a_local_torchscript_file(doctored):
    fk = doctored["data"]["fid_kid"]
    ok = doctored["names"]["pred_ldm"]
    assert math.isfinite(fk[ok]["fid"]) and math.isfinite(fk[ok]["kid"]) and fk[ok]["patches"] > 0
    if fk[ok]["cores"] >= 2:  # KID's CI resamples cores
        assert fk[ok]["kid_lo"] <= fk[ok]["kid_hi"]
    assert fk[doctored["names"]["broken"]]["patches"] == 0 and fk[doctored["names"]["broken"]]["fid"] is None


def test_empty_prediction_folder_is_a_one_line_error(eval_runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["evaluate", "--pred", str(tmp_path / "empty"), "--store", str(eval_runs["store"]), "--out",
                 str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --pred") and "no stained slides" in err[0] and "stainldm stain" in err[0]
    assert not (tmp_path / "out" / "report.html").exists()


@pytest.mark.parametrize("bad", ["--bootstrap=10", "--match-radius=0", "--fid-weights=missing.pt", "--pred=nope",
                                 "--baseline=nope"])
def test_bad_arguments_are_one_line_errors(eval_runs, tmp_path, capsys, bad):
    code = main(["evaluate", "--pred", str(eval_runs["pred_ldm"]), "--store", str(eval_runs["store"]), "--out",
                 str(tmp_path / "out"), bad, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {bad.split('=')[0]}")
