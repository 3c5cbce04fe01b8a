"""``stainldm make-sample``: files written, truth against the written pixels, resume, errors."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest
import tifffile

from pipelines.cli import main
from stainldm.data.synthetic import stained_to_unstained
from stainldm.wsi.reader import open_slide

SOURCE = Path(__file__).resolve().parents[2] / "data" / "samples" / "CMU-1-Small-Region.svs"
SMALL = ["--set", "grid.rows=2", "grid.cols=2", "grid.core_diameter_um=150", "grid.gap_um=50", "grid.test_cores=1"]


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    assert main(["make-sample", "--out", str(out), "--seed", "3", *SMALL]) == 0
    return out


@pytest.fixture(scope="session")
def default_sample(tmp_path_factory) -> Path:
    """The default 3×4 run, once (about 10 s on 2 cores)."""
    out = tmp_path_factory.mktemp("default")
    assert main(["make-sample", "--out", str(out), "--quiet"]) == 0
    return out


def _truth(folder: Path) -> dict:
    return json.loads((folder / "truth.json").read_text())


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum() + 1e-9))


# ---------------------------------------------------------------------------------------------
# What is written
# ---------------------------------------------------------------------------------------------
def test_writes_slides_that_open_with_mpp_channels_and_provenance(sample_dir):
    truth = _truth(sample_dir)
    with open_slide(sample_dir / "unstained.tiff") as u:
        assert u.channels == 2 and u.dtype == np.uint16 and u.mpp == pytest.approx((0.5, 0.5))
        assert u.channel_names == ("AF405", "AF488")
        assert list(u.dimensions) == truth["unstained"]["size_wh"]
        desc = json.loads(u.description)
    with open_slide(sample_dir / "stained.tiff") as s:
        assert s.channels == 3 and s.dtype == np.uint8 and s.mpp == pytest.approx((0.5, 0.5))
        assert list(s.dimensions) == truth["stained"]["size_wh"]
    with openslide.OpenSlide(str(sample_dir / "stained.tiff")) as osr:
        assert list(osr.dimensions) == truth["stained"]["size_wh"]
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    assert desc["source"] == SOURCE.name
    assert desc["source_sha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    assert (desc["seed"], desc["modality"]) == (3, "autofluorescence")
    assert desc["config_hash"] == truth["config_hash"] == truth["provenance"]["config_hash"]
    assert truth["seed"] == 3 and truth["provenance"]["source_sha256"] == desc["source_sha256"]
    assert not [p.name for p in sample_dir.iterdir() if p.name not in ("unstained.tiff", "stained.tiff", "truth.json")]


def test_written_stained_slide_shows_the_source_at_every_core_landmark(sample_dir):
    """Stained pixels around each landmark re-rendered from the source H&E through truth.json only
    (transform -> unstained point -> core's unstained_to_source -> source pixel): NCC high."""
    truth = _truth(sample_dir)
    t = truth["transform"]
    with open_slide(sample_dir / "stained.tiff") as s, open_slide(SOURCE) as src:
        stained = cv2.cvtColor(s.read_region((0, 0), s.dimensions), cv2.COLOR_RGB2GRAY).astype(np.float32)
        source = cv2.cvtColor(src.read_region((0, 0), src.dimensions), cv2.COLOR_RGB2GRAY).astype(np.float32)
    r = 16
    for core in truth["cores"]:
        m = np.asarray(core["unstained_to_source"])
        scores = []
        for _, _, x_s, y_s in truth["landmarks"][core["id"]][::10]:
            cx, cy = int(x_s), int(y_s)
            gx, gy = np.meshgrid(np.arange(cx - r, cx + r + 1) + 0.5, np.arange(cy - r, cy + r + 1) + 0.5)
            p = stained_to_unstained(np.column_stack([gx.ravel(), gy.ravel()]), t)
            src_xy = (p @ m[:, :2].T + m[:, 2] - 0.5).astype(np.float32)
            expected = cv2.remap(source, src_xy[:, 0].reshape(gx.shape), src_xy[:, 1].reshape(gx.shape),
                                 cv2.INTER_LINEAR)
            scores.append(_ncc(stained[cy - r : cy + r + 1, cx - r : cx + r + 1], expected))
        assert np.median(scores) > 0.95, (core["id"], np.median(scores))


def test_default_run_is_a_pyramidal_3x4_tma_with_one_missing_core(default_sample):
    out = default_sample
    truth = _truth(out)
    assert truth["grid"] == {"rows": 3, "cols": 4} and len(truth["missing"]) == 1 and len(truth["cores"]) == 11
    assert sum(c["split"] == "test" for c in truth["cores"]) == 3
    assert all(len(v) >= 100 for v in truth["landmarks"].values())
    assert all(c["diameter_px"] == pytest.approx(700) for c in truth["cores"])
    with openslide.OpenSlide(str(out / "stained.tiff")) as osr:
        assert osr.level_count >= 3
        for level in range(osr.level_count):
            osr.read_region((0, 0), level, (64, 64))
    with open_slide(out / "unstained.tiff") as u:
        assert u.level_count >= 3
        thumb = u.thumbnail(256)
        assert thumb.dtype == np.uint16 and thumb.shape[2] == 2


# ---------------------------------------------------------------------------------------------
# Determinism, skip and resume
# ---------------------------------------------------------------------------------------------
def test_same_seed_is_identical_and_another_seed_differs(sample_dir, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    assert main(["make-sample", "--out", str(again), "--seed", "3", *SMALL, "--quiet"]) == 0
    assert main(["make-sample", "--out", str(other), "--seed", "4", *SMALL, "--quiet"]) == 0
    assert (again / "truth.json").read_bytes() == (sample_dir / "truth.json").read_bytes()
    for name in ("unstained.tiff", "stained.tiff"):
        np.testing.assert_array_equal(tifffile.imread(again / name), tifffile.imread(sample_dir / name))
    assert (other / "truth.json").read_bytes() != (sample_dir / "truth.json").read_bytes()
    assert _truth(other)["seed"] == 4


def test_rerun_skips_a_finished_sample_and_force_redoes_it(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "s"
    assert main(["make-sample", "--out", str(out), *SMALL]) == 0
    stamp = (out / "unstained.tiff").stat().st_mtime_ns
    caplog.clear()
    assert main(["make-sample", "--out", str(out), *SMALL]) == 0
    assert "skipping" in caplog.text
    assert (out / "unstained.tiff").stat().st_mtime_ns == stamp
    caplog.clear()
    assert main(["make-sample", "--out", str(out), "--modality", "brightfield", *SMALL]) == 0  # other config
    assert "skipping" not in caplog.text and _truth(out)["modality"] == "brightfield"
    with open_slide(out / "unstained.tiff") as u:
        assert u.channels == 1 and u.dtype == np.uint8
    stamp = (out / "unstained.tiff").stat().st_mtime_ns
    os.utime(out / "unstained.tiff", ns=(stamp - 10**9, stamp - 10**9))
    assert main(["make-sample", "--out", str(out), "--modality", "brightfield", "--force", *SMALL]) == 0
    assert (out / "unstained.tiff").stat().st_mtime_ns > stamp - 10**9


def test_interrupted_run_without_truth_is_redone(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "s"
    assert main(["make-sample", "--out", str(out), *SMALL, "--quiet"]) == 0
    (out / "truth.json").unlink()  # what a run killed while writing the slides leaves
    caplog.clear()
    assert main(["make-sample", "--out", str(out), *SMALL]) == 0
    assert "skipping" not in caplog.text and (out / "truth.json").is_file()


# ---------------------------------------------------------------------------------------------
# Errors: one line, exit code 2
# ---------------------------------------------------------------------------------------------
def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_source_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nope.svs"
    assert main(["make-sample", "--out", str(tmp_path / "o"), "--source", str(missing), *SMALL]) == 2
    assert str(missing) in _one_error_line(capsys)


def test_typo_in_set_key_is_a_one_line_error(tmp_path, capsys):
    assert main(["make-sample", "--out", str(tmp_path / "o"), "--set", "grid.rowz=2"]) == 2
    assert "did you mean 'grid.rows'" in _one_error_line(capsys)


def test_output_folder_that_cannot_be_created_is_named(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["make-sample", "--out", str(blocker / "out"), *SMALL]) == 2
    line = _one_error_line(capsys)
    assert str(blocker / "out") in line and "cannot create" in line


def test_source_without_mpp_then_with_too_little_tissue(tmp_path, capsys):
    png = tmp_path / "blank.png"
    canvas = np.full((1500, 1500, 3), 245, dtype=np.uint8)
    canvas[700:800, 700:800] = (150, 60, 140)  # a speck of tissue
    cv2.imwrite(str(png), canvas)
    assert main(["make-sample", "--out", str(tmp_path / "o"), "--source", str(png), *SMALL]) == 2
    assert "does not record its resolution (mpp); use a slide that does, or pass --source-mpp" in \
        _one_error_line(capsys)
    assert main(["make-sample", "--out", str(tmp_path / "o"), "--source", str(png), "--source-mpp", "0.5",
                 *SMALL]) == 2
    line = _one_error_line(capsys)
    assert "too little tissue" in line or "no place" in line
    assert "reduce" in line and not (tmp_path / "o" / "truth.json").exists()


def test_channels_write_only_those_simulated_channels(sample_dir, tmp_path, capsys):
    out = tmp_path / "af488"
    assert main(["make-sample", "--out", str(out), "--seed", "3", *SMALL, "--channels", "AF488"]) == 0
    with open_slide(out / "unstained.tiff") as one, open_slide(sample_dir / "unstained.tiff") as both:
        assert one.channel_names == ("AF488",) and both.channel_names == ("AF405", "AF488")
        assert np.array_equal(one.read_region((0, 0), one.dimensions)[..., 0],
                              both.read_region((0, 0), both.dimensions)[..., 1])
    assert _truth(out)["provenance"]["channels"] == "AF488"  # another sample than all channels'
    capsys.readouterr()
    assert main(["make-sample", "--out", str(tmp_path / "x"), *SMALL, "--channels", "AF405,DAPI"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the simulated autofluorescence: --channels asks for 'DAPI', which the slide lacks; it has "
                   "2 channels: 0=AF405, 1=AF488"]
    assert not (tmp_path / "x" / "truth.json").exists()
