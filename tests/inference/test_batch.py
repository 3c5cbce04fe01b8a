"""Staining a batch of slides in the library: inputs, shards, output names, the manifest, and
:func:`~stainldm.inference.batch.stain_slides` (outcomes, resume, progress bars, errors). The command's own behaviour (exit
codes, summary, SIGKILL) is tested in tests/pipelines/test_stain.py."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from stainldm.errors import InputError
from stainldm.inference import batch
from stainldm.inference.batch import (
    MANIFEST_COLUMNS,
    Manifest,
    SlideOutcome,
    default_batch_size,
    expand_inputs,
    output_name,
    shard,
    stain_provenance,
)
from stainldm.inference.config import StainConfig
from stainldm.inference.model import StainModel

RANK_VARS = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture(autouse=True)
def _no_rank_variables(monkeypatch):
    """Tests run outside torchrun/SLURM, whatever launched pytest."""
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def baseline(stain_runs) -> StainModel:
    return StainModel.load(stain_runs["baseline"])


def _link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
    return dst


class _Bar:
    """A tqdm-like bar that remembers what it was told."""

    def __init__(self, slide: Path, log: list):
        self.slide, self.total, self.n, self.closed = slide, None, 0, False
        log.append(self)

    def reset(self, total=None):
        self.total = total

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


# ---------------------------------------------------------------------------------------------
# Inputs, output names and shards
# ---------------------------------------------------------------------------------------------
def test_expand_inputs_and_output_names(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("x.svs", "y.ome.tiff", "z.PNG", "readme.md", ".x.tiff"):
        (folder / name).write_text("")
    (tmp_path / "paths.csv").write_text("path\nin/x.svs\n/abs/w.ndpi\n\n")
    got = expand_inputs([folder, tmp_path / "paths.csv", tmp_path / "single.mrxs"])
    assert got == [folder / "x.svs", folder / "y.ome.tiff", folder / "z.PNG", Path("/abs/w.ndpi"),
                   tmp_path / "single.mrxs"]  # the csv's x.svs is the folder's: listed once
    assert [output_name(p) for p in got] == ["x", "y", "z", "w", "single"]
    (tmp_path / "bad.csv").write_text("file\nx.svs\n")
    with pytest.raises(InputError, match="bad.csv: needs a 'slide'"):
        expand_inputs([tmp_path / "bad.csv"])

def test_output_names_of_ome_tiffs_and_dicom_folders(tmp_path):
    (tmp_path / "dicom").mkdir()
    assert output_name(Path("s/B.OME.TIF")) == "B"
    assert output_name(tmp_path / "dicom") == "dicom"  # a folder keeps its whole name
    assert output_name(Path("s/c.svs")) == "c"


def test_default_batch_size_is_larger_on_a_gpu():
    import torch

    assert (default_batch_size(torch.device("cpu")), default_batch_size(torch.device("cuda", 1))) == (8, 64)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 13])
def test_shards_are_disjoint_and_cover_the_list_once(count):
    items = [Path(f"slides/s{i:02d}.svs") for i in (7, 3, 11, 0, 5, 1, 2, 9, 4, 10, 6, 8)]
    parts = [shard(items, i, count) for i in range(count)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    assert parts == [shard(list(reversed(items)), i, count) for i in range(count)]  # order of listing does not matter


# ---------------------------------------------------------------------------------------------
# The manifest
# ---------------------------------------------------------------------------------------------
def test_the_manifest_keeps_one_row_per_slide_and_counts_statuses(tmp_path):
    manifest = Manifest(tmp_path / "manifest.csv")
    assert manifest.read() == {} and manifest.counts() == {"done": 0, "no-tissue": 0, "failed": 0}
    manifest.record({"slide": "a.svs", "status": "failed", "output": "", "seconds": "1.00", "error": "a.svs: bad"})
    manifest.record({"slide": "b.svs", "status": "no-tissue", "output": "", "seconds": "0.50", "error": "no tissue"})
    manifest.record({"slide": "a.svs", "status": "done", "output": "a.tiff", "seconds": "2.00", "error": ""})
    with open(manifest.path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [list(MANIFEST_COLUMNS), ["a.svs", "done", "a.tiff", "2.00", ""],
                    ["b.svs", "no-tissue", "", "0.50", "no tissue"]]  # a's row replaced in place
    assert manifest.path.read_bytes().startswith(b"slide,status,output,seconds,error\r\n")  # as csv.DictWriter
    assert manifest.counts() == {"done": 1, "no-tissue": 1, "failed": 0}
    # A manifest an older version wrote calls a slide with no tissue `skipped`: counted as no-tissue.
    manifest.record({"slide": "c.svs", "status": "skipped", "output": "", "seconds": "0.40", "error": "no tissue"})
    assert manifest.counts() == {"done": 1, "no-tissue": 2, "failed": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".manifest.csv.lock", "manifest.csv"]  # no partial file


# ---------------------------------------------------------------------------------------------
# stain_slides
# ---------------------------------------------------------------------------------------------
def test_stain_slides_yields_every_slide_records_it_and_resumes(baseline, stain_runs, stain_slides, tmp_path):
    folder = tmp_path / "in"
    good = _link(stain_slides["a"], folder / "good.tiff")
    empty = _link(stain_slides["empty"], folder / "empty.tiff")
    broken = folder / "broken.svs"
    broken.write_text("this is a text file, not a slide")
    out = tmp_path / "out"
    bars: list[_Bar] = []
    outcomes = list(batch.stain_slides([good, empty, broken], baseline, out, StainConfig(),
                                 progress=lambda slide: _Bar(slide, bars)))
    assert [(o.slide, o.status, o.resumed) for o in outcomes] == [(good, "done", False), (empty, "no-tissue", False),
                                                                  (broken, "failed", False)]
    assert outcomes[0].output == out / "good.tiff" and outcomes[0].output.is_file() and outcomes[0].error == ""
    assert outcomes[0].seconds > 0
    assert outcomes[1].output is None and "no tissue" in outcomes[1].error
    assert outcomes[2].output is None and "broken.svs" in outcomes[2].error and "\n" not in outcomes[2].error
    assert [b.slide for b in bars] == [good, empty, broken] and all(b.closed for b in bars)
    assert bars[0].total == bars[0].n > 0  # the canvases of the good slide, counted
    manifest = Manifest(out / "manifest.csv")
    rows = manifest.read()
    assert rows[str(good)]["output"] == "good.tiff" and rows[str(broken)]["error"] == outcomes[2].error
    assert manifest.counts() == {"done": 1, "no-tissue": 1, "failed": 1}
    meta = json.loads((out / "good.json").read_text())
    assert meta["checkpoint_sha256"] == hashlib.sha256((stain_runs["baseline"] / "model.safetensors").read_bytes()
                                                       ).hexdigest()
    assert (meta["sampler"], meta["steps"], meta["guidance"], meta["seed"], meta["samples"]) == ("dpmpp_2m", 10, 1.0,
                                                                                                  0, 1)
    # Rerun: the done slide comes back done (resumed, with the recorded time) and is not stained again.
    mtime = (out / "good.tiff").stat().st_mtime_ns
    bars.clear()
    again = list(batch.stain_slides([good, empty], baseline, out, StainConfig(), progress=lambda slide: _Bar(slide, bars)))
    assert again[0] == SlideOutcome(good, "done", out / "good.tiff", float(rows[str(good)]["seconds"]), "",
                                    resumed=True)
    assert again[1].status == "no-tissue" and [b.slide for b in bars] == [empty]
    assert (out / "good.tiff").stat().st_mtime_ns == mtime
    # Other sampling arguments, or no provenance JSON: the output is stale, and it is stained again.
    for cfg, drop in ((StainConfig(seed=1), False), (StainConfig(seed=1), True)):
        if drop:
            (out / "good.json").unlink()
        redo = next(batch.stain_slides([good], baseline, out, cfg))
        assert (redo.status, redo.resumed) == ("done", False)
        assert (out / "good.tiff").stat().st_mtime_ns != mtime and json.loads((out / "good.json").read_text())["seed"] == 1
        mtime = (out / "good.tiff").stat().st_mtime_ns
    assert next(batch.stain_slides([good], baseline, out, StainConfig(seed=1))).resumed


def test_stain_slides_raises_a_slide_error_when_asked(baseline, tmp_path):
    broken = tmp_path / "broken.svs"
    broken.write_text("not a slide")
    with pytest.raises(InputError, match="broken.svs"):
        list(batch.stain_slides([broken], baseline, tmp_path / "out", StainConfig(), raise_errors=True))
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_stain_slides_checks_its_arguments_when_called(baseline, stain_runs, stain_slides, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    with pytest.raises(InputError, match=r"a-file/out: output folder is not writable .*choose another `out`"):
        batch.stain_slides([stain_slides["a"]], baseline, blocker / "out", StainConfig())  # not iterated: already raised
    with pytest.raises(InputError, match="`batch_size` must be positive"):
        batch.stain_slides([stain_slides["a"]], baseline, tmp_path / "o1", StainConfig(batch_size=0))
    ldm = StainModel.load(stain_runs["ldm"])
    with pytest.raises(InputError, match="steps"):
        batch.stain_slides([stain_slides["a"]], ldm, tmp_path / "o2", StainConfig(steps=5000))
    assert not (tmp_path / "o2" / "manifest.csv").exists()


def test_stain_provenance_is_the_checkpoint_hash_and_the_sampling_arguments(baseline, stain_runs):
    cfg = StainConfig(steps=4, sampler="ddim", guidance=2.0, seed=7, samples=3)
    digest = hashlib.sha256((stain_runs["baseline"] / "model.safetensors").read_bytes()).hexdigest()
    assert stain_provenance(baseline, cfg) == {"checkpoint_sha256": digest, "sampler": "ddim", "steps": 4,
                                               "guidance": 2.0, "eta": 0.0, "seed": 7, "samples": 3}
    # an ldm's output depends on its autoencoder too: a fine-tuned decoder changes it alone
    ldm = StainModel.load(stain_runs["ldm"])
    prov = stain_provenance(ldm, cfg)
    assert prov["autoencoder_sha256"] == hashlib.sha256((stain_runs["ldm"] / "autoencoder.safetensors").read_bytes()
                                                        ).hexdigest() != prov["checkpoint_sha256"]
