"""Whole-slide staining and the batch CLI on a real (tiny) pipeline: make-sample -> prepare -> train -> stain."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openslide
import pytest

from pipelines.cli import main
from pipelines.stain import parse_shard, shard
from stainldm.errors import InputError
from stainldm.inference.stain import StainConfig, StainModel, stain_slide
from stainldm.wsi.reader import open_slide
from stainldm.wsi.writer import write_pyramid

SCRIPT = Path(sys.executable).with_name("stainldm")


@pytest.fixture(scope="module")
def runs(train_store, train_ae_run, train_config, tmp_path_factory):
    """An ldm and a baseline trained 6 steps on the shared training store."""
    from stainldm.train.loop import Trainer

    base = tmp_path_factory.mktemp("stain_runs")
    Trainer(kind="ldm", cfg=train_config(), run_dir=base / "ldm", store=train_store, device="cpu",
            autoencoder_run=train_ae_run).train()
    Trainer(kind="baseline", cfg=train_config(), run_dir=base / "baseline", store=train_store, device="cpu").train()
    return {"ldm": base / "ldm", "baseline": base / "baseline", "ae": train_ae_run,
            "slide": train_store.parent / "sample" / "unstained.tiff"}


def _read(path: Path) -> np.ndarray:
    with open_slide(path) as s:
        return s.read_region((0, 0), s.dimensions)


def test_same_seed_is_bit_identical_other_seed_differs(runs, tmp_path):
    model = StainModel.load(runs["ldm"])
    cfg = StainConfig(steps=2)
    with open_slide(runs["slide"]) as slide:
        a = stain_slide(slide, model, tmp_path / "a" / "s.tiff", cfg)
        b = stain_slide(slide, model, tmp_path / "b" / "s.tiff", cfg)
        c = stain_slide(slide, model, tmp_path / "c" / "s.tiff", StainConfig(steps=2, seed=1))
    assert np.array_equal(_read(a.output), _read(b.output))
    assert not np.array_equal(_read(a.output), _read(c.output))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["s.json", "s.thumb.png", "s.tiff"]


def test_output_geometry_glass_uncertainty_and_provenance(runs, tmp_path):
    model = StainModel.load(runs["ldm"])
    with open_slide(runs["slide"]) as slide:
        res = stain_slide(slide, model, tmp_path / "s.tiff", StainConfig(steps=2, samples=2), provenance={"seed": 0})
        w0, h0 = slide.dimensions
        scale = slide.mpp[0] / model.mpp
    osl = openslide.OpenSlide(str(res.output))
    assert osl.dimensions == (round(w0 * scale + 0.49), round(h0 * scale + 0.49))
    assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(model.mpp, rel=1e-3)
    for level in range(osl.level_count):
        osl.read_region((0, 0), level, osl.level_dimensions[level])
    rgb = _read(res.output)
    assert (rgb[:20, :20] == 255).all()  # glass far from tissue is white
    std = _read(res.uncertainty)[..., 0]
    assert std[:20, :20].max() == 0 and std.max() > 0
    meta = json.loads(res.provenance.read_text())
    for key in ("input", "checkpoint", "version", "seconds", "stain_config", "mpp"):
        assert key in meta
    assert meta["stain_config"]["samples"] == 2
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_sub_canvases_match_one_canvas_for_the_baseline(runs, tmp_path):
    model = StainModel.load(runs["baseline"])
    with open_slide(runs["slide"]) as slide:
        one = stain_slide(slide, model, tmp_path / "one.tiff", StainConfig())
        many = stain_slide(slide, model, tmp_path / "many.tiff", StainConfig(max_canvas_px=128))
    a, b = _read(one.output).astype(float), _read(many.output).astype(float)
    assert np.abs(a - b).mean() < 3  # JPEG + window layouts differ; no seams or holes


def test_channel_mismatch_and_no_tissue_are_input_errors(runs, tmp_path):
    model = StainModel.load(runs["ldm"])
    gray = np.full((300, 300), 200, np.uint8)
    write_pyramid(tmp_path / "gray.tiff", gray, mpp=0.5)
    with open_slide(tmp_path / "gray.tiff") as slide, pytest.raises(InputError, match="has 1 channels but the model"):
        stain_slide(slide, model, tmp_path / "o.tiff", StainConfig(steps=2))
    dark = np.random.default_rng(0).poisson(150, (400, 400, 2)).astype(np.uint16)
    write_pyramid(tmp_path / "empty.tiff", dark, mpp=0.5)
    with open_slide(tmp_path / "empty.tiff") as slide, pytest.raises(InputError, match="no tissue"):
        stain_slide(slide, model, tmp_path / "o.tiff", StainConfig(steps=2))


def _manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        return {Path(r["slide"]).name: r for r in csv.DictReader(fh)}


def test_batch_records_failures_goes_on_and_skips_done_slides(runs, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "good.tiff").symlink_to(runs["slide"])
    (inp / "broken.svs").write_text("not a slide")
    dark = np.random.default_rng(0).poisson(150, (400, 400, 2)).astype(np.uint16)
    write_pyramid(inp / "empty.tiff", dark, mpp=0.5)
    out = tmp_path / "out"
    args = ["stain", str(inp), "--checkpoint", str(runs["baseline"]), "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "broken.svs" in err[0]
    rows = _manifest(out)
    assert rows["good.tiff"]["status"] == "done" and rows["broken.svs"]["status"] == "failed"
    assert rows["empty.tiff"]["status"] == "skipped" and "no tissue" in rows["empty.tiff"]["error"]
    before = (out / "good.tiff").stat().st_mtime_ns
    (inp / "broken.svs").unlink()
    assert main(args) == 0
    assert (out / "good.tiff").stat().st_mtime_ns == before  # skipped, not redone


def test_shards_split_the_list_exactly_once():
    items = [Path(f"s{i:02d}.tiff") for i in range(11)]
    parts = [shard(items, i, 3) for i in range(3)]
    assert sorted(p for part in parts for p in part) == sorted(items)
    assert all(not set(a) & set(b) for a in parts for b in parts if a is not b)
    assert parse_shard("2/3") == (1, 3)
    assert parse_shard(None, {"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4)
    assert parse_shard(None, {"SLURM_PROCID": "2", "SLURM_NTASKS": "3"}) == (2, 3)
    assert parse_shard(None, {}) == (0, 1)
    with pytest.raises(InputError, match="--shard 3/2"):
        parse_shard("3/2")


def test_two_shards_stain_disjoint_halves(runs, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("a.tiff", "b.tiff", "c.tiff"):
        (inp / name).symlink_to(runs["slide"])
    out = tmp_path / "out"
    for i in (1, 2):
        assert main(["stain", str(inp), "--checkpoint", str(runs["baseline"]), "--out", str(out), "--shard",
                     f"{i}/2", "--quiet"]) == 0
    assert sorted(_manifest(out)) == ["a.tiff", "b.tiff", "c.tiff"]
    assert all(r["status"] == "done" for r in _manifest(out).values())


@pytest.mark.parametrize(("extra", "message"), [
    (["--shard", "3/2"], "--shard 3/2"),
    (["--steps", "0"], "--steps"),
    (["--sampler", "euler"], "--sampler"),
])
def test_bad_arguments_exit_2(runs, tmp_path, capsys, extra, message):
    assert main(["stain", str(runs["slide"]), "--checkpoint", str(runs["ldm"]), "--out", str(tmp_path / "o"),
                 *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_bad_checkpoints_and_output_folder_exit_2(runs, tmp_path, capsys):
    slide = str(runs["slide"])
    assert main(["stain", slide, "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["stain", slide, "--checkpoint", str(runs["ae"]), "--out", str(tmp_path / "o")]) == 2
    assert "is a autoencoder checkpoint" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["stain", slide, "--checkpoint", str(runs["baseline"]), "--out", str(blocker / "o")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_sigkill_mid_slide_leaves_no_final_file_and_the_rerun_completes(runs, tmp_path):
    out = tmp_path / "out"
    args = [str(SCRIPT), "stain", str(runs["slide"]), "--checkpoint", str(runs["ldm"]), "--out", str(out),
            "--steps", "40", "--quiet", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    work = out / ".unstained.work"
    deadline = time.time() + 120
    while not work.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "staining finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "unstained.tiff").exists()
    rows = _manifest(out) if (out / "manifest.csv").exists() else {}
    assert rows.get("unstained.tiff", {}).get("status") != "done"
    done = subprocess.run([*args[:-5], "--steps", "2", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "unstained.tiff").is_file() and _manifest(out)["unstained.tiff"]["status"] == "done"
