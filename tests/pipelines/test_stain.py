"""``stainldm stain``: inputs, manifest, resume, failures, shards, argument errors and SIGKILL.

Runs the CLI in this process (``main([...])``) except where a real process is needed (SIGKILL),
on the ``stain_runs`` models and ``stain_slides`` slides (tests/conftest.py). The baseline stains
in about a second, so it serves the batch logic; the ldm is used where it matters.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openslide
import pytest
import torch

from pipelines.cli import main
from stainldm.inference.batch import shard

ROOT = Path(__file__).resolve().parents[2]
RANK_VARS = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture(autouse=True)
def _no_rank_variables(monkeypatch):
    """Tests run outside torchrun/SLURM, whatever launched pytest."""
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)


def _stain(inputs, run: Path, out: Path, *extra: str) -> int:
    return main(["stain", *map(str, inputs), "--checkpoint", str(run), "--out", str(out), "--quiet", "--device", "cpu",
                 *extra])


def _manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [] or list(rows[0]) == ["slide", "status", "output", "seconds", "error"]
    return {Path(r["slide"]).name: r for r in rows}


def _link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
    return dst


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------------------------
# Inputs and the manifest
# ---------------------------------------------------------------------------------------------
def test_folder_and_csv_inputs_are_stained_and_recorded(stain_runs, stain_slides, tmp_path, capsys):
    folder = tmp_path / "in"
    _link(stain_slides["a"], folder / "a.tiff")
    _link(stain_slides["b"], folder / "b.tiff")
    (folder / "notes.txt").write_text("not a slide")
    _link(stain_slides["a"], folder / ".hidden.tiff")
    lists = tmp_path / "lists"
    _link(stain_slides["c"], tmp_path / "other" / "c.tiff")
    lists.mkdir()
    (lists / "batch.csv").write_text(f"slide,note\n../other/c.tiff,relative to the csv\n{folder / 'b.tiff'},again\n")
    out = tmp_path / "out"
    assert _stain([folder, lists / "batch.csv"], stain_runs["baseline"], out) == 0
    assert "3 done, 0 no-tissue, 0 failed" in capsys.readouterr().out
    rows = _manifest(out)
    assert sorted(rows) == ["a.tiff", "b.tiff", "c.tiff"]  # b listed twice is one slide; no notes, no hidden file
    for name, row in rows.items():
        assert row["status"] == "done" and row["output"] == name and row["error"] == ""
        assert float(row["seconds"]) > 0
        assert (out / name).is_file() and (out / f"{Path(name).stem}.thumb.png").is_file()
    meta = json.loads((out / "c.json").read_text())
    want = hashlib.sha256((stain_runs["baseline"] / "model.safetensors").read_bytes()).hexdigest()
    assert meta["checkpoint_sha256"] == want
    assert (meta["sampler"], meta["steps"], meta["seed"], meta["samples"]) == ("dpmpp_2m", 10, 0, 1)
    assert Path(meta["input"]).resolve() == stain_slides["c"].resolve()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".manifest.csv.lock") == []


def test_failed_and_empty_slides_are_recorded_the_batch_goes_on_and_a_rerun_skips_done(
        stain_runs, stain_slides, tmp_path, capsys):
    folder = tmp_path / "in"
    _link(stain_slides["a"], folder / "good.tiff")
    (folder / "broken.svs").write_text("this is a text file, not a slide")
    _link(stain_slides["empty"], folder / "empty.tiff")
    out = tmp_path / "out"
    assert _stain([folder], stain_runs["baseline"], out) == 1
    captured = capsys.readouterr()
    errors = _error_lines(captured.err)
    assert len(errors) == 1 and "broken.svs" in errors[0]
    assert "1 done, 1 no-tissue, 1 failed" in captured.out
    rows = _manifest(out)
    assert rows["good.tiff"]["status"] == "done"
    assert rows["broken.svs"]["status"] == "failed" and "broken.svs" in rows["broken.svs"]["error"]
    assert rows["empty.tiff"]["status"] == "no-tissue" and "no tissue" in rows["empty.tiff"]["error"]
    assert not (out / "broken.tiff").exists() and not (out / "empty.tiff").exists()
    # Rerun without the broken slide: the done slide is not redone, the empty one is no-tissue again: exit 0.
    good = out / "good.tiff"
    before = (good.stat().st_mtime_ns, (out / "good.json").stat().st_mtime_ns, rows["good.tiff"])
    (folder / "broken.svs").unlink()
    assert _stain([folder], stain_runs["baseline"], out) == 0
    assert _error_lines(capsys.readouterr().err) == []
    rows = _manifest(out)
    assert (good.stat().st_mtime_ns, (out / "good.json").stat().st_mtime_ns, rows["good.tiff"]) == before
    assert rows["empty.tiff"]["status"] == "no-tissue"


def test_a_glass_only_slide_ends_no_tissue_and_nothing_is_written_for_it(stain_runs, tmp_path, capsys):
    from stainldm.wsi.reader import open_slide
    from stainldm.wsi.writer import write_pyramid

    # The make-sample slide's own glass (camera offset, background photons, shading, noise), tiled.
    with open_slide(stain_runs["sample"] / "unstained.tiff") as slide:
        corner = slide.read_region((0, 0), (240, 240))
    (tmp_path / "in").mkdir()
    write_pyramid(tmp_path / "in" / "glass.tiff", np.tile(corner, (3, 3, 1)), mpp=0.5)
    out = tmp_path / "out"
    assert _stain([tmp_path / "in"], stain_runs["baseline"], out) == 0
    captured = capsys.readouterr()
    assert "0 done, 1 no-tissue, 0 failed" in captured.out and _error_lines(captured.err) == []
    row = _manifest(out)["glass.tiff"]
    assert (row["status"], row["output"]) == ("no-tissue", "") and "glass.tiff: no tissue found" in row["error"]
    assert sorted(p.name for p in out.iterdir()) == [".manifest.csv.lock", "manifest.csv"]


def test_a_done_slide_whose_output_was_deleted_is_stained_again(stain_runs, stain_slides, tmp_path):
    slide = _link(stain_slides["a"], tmp_path / "in" / "a.tiff")
    out = tmp_path / "out"
    assert _stain([slide], stain_runs["baseline"], out) == 0
    (out / "a.tiff").unlink()
    assert _stain([slide], stain_runs["baseline"], out) == 0
    assert (out / "a.tiff").is_file() and _manifest(out)["a.tiff"]["status"] == "done"


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------
def test_two_shards_stain_disjoint_halves_of_a_batch(stain_runs, stain_slides, tmp_path, capsys):
    folder = tmp_path / "in"
    names = ["a.tiff", "b.tiff", "c.tiff"]
    for name in names:
        _link(stain_slides[name[0]], folder / name)
    outs = []
    for i in (1, 2):
        out = tmp_path / f"out{i}"
        assert _stain([folder], stain_runs["baseline"], out, "--shard", f"{i}/2") == 0
        assert f"(shard {i}/2: {2 if i == 1 else 1} slides)" in capsys.readouterr().out
        outs.append({p.name for p in out.glob("*.tiff")})
        assert set(_manifest(out)) == outs[-1]
    assert outs[0].isdisjoint(outs[1]) and outs[0] | outs[1] == set(names)
    assert outs == [{p.name for p in shard([folder / n for n in names], i, 2)} for i in (0, 1)]


def test_slurm_rank_variables_pick_the_shard(stain_runs, stain_slides, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    for name in ("a.tiff", "b.tiff", "c.tiff"):
        _link(stain_slides[name[0]], folder / name)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    out = tmp_path / "out"
    assert _stain([folder], stain_runs["baseline"], out) == 0
    assert sorted(p.name for p in out.glob("*.tiff")) == ["b.tiff"]


# ---------------------------------------------------------------------------------------------
# Bad arguments: exit 2, one error line, nothing stained
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "message"), [
    (["--shard", "3/2"], "--shard 3/2"),
    (["--shard", "one/two"], "--shard one/two"),
    (["--steps", "0"], "--steps"),
    (["--steps", "5000"], "steps"),
    (["--samples", "0"], "--samples"),
    (["--batch-size", "0"], "--batch-size"),
    (["--overlap", "-1"], "--overlap"),
    (["--sampler", "euler"], "--sampler"),
    pytest.param(["--device", "cuda"], "device cuda: no CUDA GPU", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a GPU is here")),
    (["--device", "cuda:7"], "device cuda:7: "),  # no GPU here, or fewer than eight
    (["--device", "tpu"], "device 'tpu': use cpu, cuda, cuda:N or auto"),
    pytest.param(["--precision", "fp16"], "precision fp16 needs a CUDA GPU", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a GPU is here")),
])
def test_bad_arguments_exit_2_with_one_error_line(stain_runs, stain_slides, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert _stain([stain_slides["a"]], stain_runs["ldm"], out, *extra) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0], errors
    assert not (out / "manifest.csv").exists() and not (out / "a.tiff").exists()


def test_device_and_precision_are_recorded_in_the_provenance(stain_runs, stain_slides, tmp_path):
    out = tmp_path / "out"
    assert _stain([stain_slides["a"]], stain_runs["baseline"], out, "--precision", "bf16") == 0
    meta = json.loads((out / "a.json").read_text())
    assert (meta["device"], meta["precision"], meta["attention"]) == ("cpu", "bf16", "sdpa")
    assert _stain([stain_slides["b"]], stain_runs["baseline"], out) == 0  # auto on a CPU: fp32
    assert json.loads((out / "b.json").read_text())["precision"] == "fp32"


def test_bad_checkpoints_and_output_folder_exit_2(stain_runs, stain_slides, tmp_path, capsys):
    slide = stain_slides["a"]
    assert _stain([slide], tmp_path / "no-such-run", tmp_path / "o1") == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "no-such-run" in errors[0] and "not found" in errors[0]
    assert _stain([slide], stain_runs["ae"], tmp_path / "o2") == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "is a autoencoder checkpoint" in errors[0]
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    assert _stain([slide], stain_runs["baseline"], blocker / "out") == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "not writable" in errors[0] and "a-file" in errors[0]
    assert not (tmp_path / "o1" / "manifest.csv").exists() and not (tmp_path / "o2" / "manifest.csv").exists()


# ---------------------------------------------------------------------------------------------
# SIGKILL mid-slide, then resume
# ---------------------------------------------------------------------------------------------
def test_sigkill_mid_slide_leaves_no_final_file_and_the_rerun_completes(stain_runs, stain_slides, tmp_path):
    slide = _link(stain_slides["core"], tmp_path / "in" / "core.tiff")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines.cli", "stain", str(slide), "--checkpoint", str(stain_runs["ldm"]),
           "--out", str(out), "--quiet", "--device", "cpu", "--steps", "500"]  # minutes: killed long before
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    work = out / ".core.work"
    deadline = time.monotonic() + 180
    try:
        while not work.is_dir() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert work.is_dir(), f"no work folder (exit {proc.poll()}): {proc.stderr.read() if proc.poll() is not None else ''}"
        time.sleep(0.3)  # into the sampling
        assert proc.poll() is None, "staining ended before it could be killed"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "core.tiff").exists()  # no file under the final name
    assert not any((out / n).exists() for n in ("core.json", "core.thumb.png", "core.uncertainty.tiff"))
    rows = _manifest(out) if (out / "manifest.csv").exists() else {}
    assert rows.get("core.tiff", {}).get("status") != "done"
    # The same command (fewer steps, to be quick) finishes the slide and cleans up after the killed run.
    assert _stain([slide], stain_runs["ldm"], out, "--steps", "2") == 0
    assert _manifest(out)["core.tiff"]["status"] == "done"
    with openslide.OpenSlide(str(out / "core.tiff")) as osl:
        assert osl.dimensions == (1101, 301)
    assert not work.exists()
    assert [p.name for p in out.iterdir() if "partial" in p.name or p.name.endswith(".work")] == []


def test_the_models_stain_defaults_apply_where_the_flags_do_not_say(stain_runs, stain_slides, tmp_path):
    """model.json's stain_defaults (what benchmarks/steps.py --write-defaults records) set the sampling
    the flags leave open; a flag still wins."""
    run = tmp_path / "ldm"
    shutil.copytree(stain_runs["ldm"], run)
    meta = json.loads((run / "model.json").read_text())
    meta["stain_defaults"] = {"sampler": "ddim", "steps": 2, "guidance": 1.5, "eta": 0.5, "chosen_by": "a test"}
    (run / "model.json").write_text(json.dumps(meta))

    def used(folder) -> tuple:
        cfg = json.loads((folder / "a.json").read_text())["stain_config"]
        return cfg["sampler"], cfg["steps"], cfg["guidance"], cfg["eta"]

    assert _stain([stain_slides["a"]], run, tmp_path / "model") == 0
    assert used(tmp_path / "model") == ("ddim", 2, 1.5, 0.5)
    assert _stain([stain_slides["a"]], run, tmp_path / "flags", "--guidance", "1", "--steps", "1") == 0
    assert used(tmp_path / "flags") == ("ddim", 1, 1.0, 0.5)
    assert _stain([stain_slides["a"]], stain_runs["ldm"], tmp_path / "none", "--steps", "1") == 0
    assert used(tmp_path / "none") == ("dpmpp_2m", 1, 1.0, 0.0)  # a model without them: StainConfig's
