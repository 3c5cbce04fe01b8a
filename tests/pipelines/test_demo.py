"""``stainldm demo``: the whole chain with the shipped models (what ``make demo`` runs), and with
``--train`` (configs/ci.yaml; marked slow: each of its stages is trained and tested by faster tests,
the demo adds export and the resume of training)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest

from pipelines.cli import main
from pipelines.demo import SHIPPED
from stainldm.wsi.reader import open_slide

ROOT = Path(__file__).resolve().parents[2]
CI_CONFIG = ROOT / "configs" / "ci.yaml"


def _run(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def demo_shipped(tmp_path_factory) -> dict:
    """``stainldm demo``: make-sample, prepare, stain with data/checkpoints, evaluate (as ``make demo``)."""
    out = tmp_path_factory.mktemp("demo_shipped") / "out"
    code, stdout = _run(["demo", "--out", str(out), "--device", "cpu", "--quiet"])
    return {"out": out, "code": code, "stdout": stdout}


@pytest.fixture(scope="module")
def demo_train(tmp_path_factory) -> dict:
    """``stainldm demo --train --config configs/ci.yaml --export``: every stage, CI-sized."""
    out = tmp_path_factory.mktemp("demo") / "out"
    export = out.parent / "export"
    code, stdout = _run(["demo", "--train", "--config", str(CI_CONFIG), "--out", str(out), "--export", str(export),
                         "--device", "cpu", "--quiet"])
    return {"out": out, "export": export, "code": code, "stdout": stdout}


def _check_artefacts(out: Path) -> None:
    for slide in ("sample/unstained.tiff", "sample/stained.tiff", "stained/ldm/unstained.tiff",
                  "stained/baseline/unstained.tiff"):
        with open_slide(out / slide) as s:  # opens, and has pixels
            assert min(s.dimensions) > 500, slide
    with openslide.OpenSlide(str(out / "stained/ldm/unstained.tiff")) as s:  # as QuPath's reader sees it
        assert s.level_count >= 2 and float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(1.0)
    geo = json.loads((out / "store" / "cores.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) >= 10
    report = out / "report"
    html = (report / "report.html").read_text()
    assert "id='summary'" in html or 'id="summary"' in html
    images = re.findall(r"src=['\"]([^'\"]+)['\"]", html)
    assert len(images) > 10 and all((report / src).is_file() for src in images)  # every image beside it
    rows = list(csv.DictReader(open(report / "metrics.csv", newline="")))
    assert {r["method"] for r in rows} == {"LDM", "U-Net baseline", "colour map"}
    assert all(r["status"] == "ok" for r in rows)
    assert json.loads((report / "metrics.json").read_text())["split"] == "test"


def test_demo_with_the_shipped_models_makes_every_artefact_and_each_opens(demo_shipped):
    assert demo_shipped["code"] == 0, demo_shipped["stdout"][-2000:]
    _check_artefacts(demo_shipped["out"])
    assert not (demo_shipped["out"] / "runs").exists()  # nothing trained


@pytest.mark.slow
def test_demo_train_makes_every_artefact_and_each_opens(demo_train):
    assert demo_train["code"] == 0, demo_train["stdout"][-2000:]
    _check_artefacts(demo_train["out"])
    for kind in ("autoencoder", "ldm", "baseline"):
        meta = json.loads((demo_train["out"] / "runs" / kind / "model.json").read_text())
        assert meta["kind"] == kind and meta["step"] == 6  # configs/ci.yaml demo: 6 steps each


def test_demo_prints_the_report_and_a_five_line_summary(demo_shipped):
    tail = demo_shipped["stdout"].split("stainldm demo: done")[1].strip().splitlines()
    assert len(tail) == 1 + 5, tail  # the headline, then five lines
    assert tail[1].startswith("report: ") and tail[1].split()[1].endswith("report.html")
    for line, method in zip(tail[2:5], ("LDM", "U-Net baseline", "colour map"), strict=True):
        assert line.strip().startswith(method) and "PSNR" in line and "SSIM" in line and "[" in line
    assert tail[5].strip().startswith("seconds: make-sample") and "evaluate" in tail[5]


def test_rerun_skips_the_finished_sample_store_and_stained_slides(demo_shipped):
    out = demo_shipped["out"]
    files = [out / "sample/unstained.tiff", out / "store/tiles.csv", out / "stained/ldm/unstained.tiff",
             out / "stained/baseline/unstained.tiff"]
    stamp = {p: p.stat().st_mtime_ns for p in files}
    code, stdout = _run(["demo", "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 0, stdout[-2000:]
    assert {p: p.stat().st_mtime_ns for p in files} == stamp


@pytest.mark.slow
def test_rerun_skips_finished_training_and_staining(demo_train):
    out = demo_train["out"]
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs/ldm/model.safetensors", out / "stained/ldm/unstained.tiff",
                                               out / "runs/ldm-decoder/model.json")}  # keeps steps.py's defaults
    code, stdout = _run(["demo", "--train", "--config", str(CI_CONFIG), "--out", str(out), "--device", "cpu",
                         "--quiet"])
    assert code == 0
    assert "train ldm: done (6 steps)" in stdout
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


@pytest.mark.slow
def test_export_is_half_precision_and_stains_like_the_run(demo_train, tmp_path):
    """The exported (shipped-form) models load, and stain within fp16 rounding of the trained run."""
    from safetensors.torch import load_file

    from stainldm.inference.stain import StainConfig, StainModel, stain_slide

    export = demo_train["export"]
    for kind in ("ldm", "baseline"):
        for name in ("model.json", "model.safetensors", "config.yaml", "metrics.csv"):
            assert (export / kind / name).is_file(), (kind, name)
        assert str(next(iter(load_file(export / kind / "model.safetensors").values())).dtype) == "torch.float16"
    assert (export / "ldm" / "autoencoder.safetensors").is_file() and (export / "evaluation.csv").is_file()
    slide = demo_train["out"] / "sample" / "unstained.tiff"
    cfg = StainConfig(steps=2)
    outs = {}
    for name, run in (("run", demo_train["out"] / "runs" / "baseline"), ("export", export / "baseline")):
        with open_slide(slide) as s:
            res = stain_slide(s, StainModel.load(run), tmp_path / name / "x.tiff", cfg)
        with open_slide(res.output) as o:
            outs[name] = o.read_region((0, 0), o.dimensions).astype(int)
    assert np.abs(outs["run"] - outs["export"]).mean() < 0.5


def test_export_needs_train_and_shipped_models_are_checked(tmp_path, capsys):
    assert main(["demo", "--export", str(tmp_path / "x"), "--out", str(tmp_path / "o")]) == 2
    assert "--export writes trained models: use it with --train" in capsys.readouterr().err
    broken = tmp_path / "checkpoints"
    shutil.copytree(SHIPPED, broken)
    (broken / "ldm" / "autoencoder.safetensors").unlink()
    assert main(["demo", "--checkpoints", str(broken), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "autoencoder.safetensors: missing from the shipped demo models" in err[0]
    (broken / "baseline" / "model.json").write_text(json.dumps(
        {**json.loads((broken / "ldm" / "model.json").read_text())}))
    shutil.copyfile(SHIPPED / "ldm" / "autoencoder.safetensors", broken / "ldm" / "autoencoder.safetensors")
    assert main(["demo", "--checkpoints", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "is a ldm checkpoint, but a baseline checkpoint is needed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # checked before any work


def test_shipped_models_stain_h_and_e_colours(stain_slides, tmp_path):
    """The shipped demo weights (fp16 on disk) load and turn real unstained cores into H&E-like colour:
    pink-purple tissue (red and blue above green), not noise, on white glass."""
    from stainldm.inference.stain import StainConfig, StainModel, stain_slide

    for kind in ("ldm", "baseline"):
        model = StainModel.load(SHIPPED / kind)
        for name in ("a", "b"):
            with open_slide(stain_slides[name]) as s:
                res = stain_slide(s, model, tmp_path / kind / f"{name}.tiff", StainConfig(steps=4))
            with open_slide(res.output) as o:
                rgb = o.read_region((0, 0), o.dimensions).astype(float)
            tissue = rgb.mean(-1) < 215
            assert 0.1 < tissue.mean() < 0.9, (kind, name)
            r, g, b = (rgb[..., c][tissue].mean() for c in range(3))
            assert r > g + 15 and b > g + 5, (kind, name, r, g, b)  # eosin pink / haematoxylin purple
            assert rgb[~tissue].mean() > 225, (kind, name)  # glass stays white
