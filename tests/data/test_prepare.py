"""stainldm.data.prepare and pair_reports: the library calls behind ``stainldm prepare``."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from stainldm.data.pair_reports import aggregate_reports
from stainldm.data.pairs import load_prepare_config
from stainldm.data.prepare import (
    SlidePair,
    StoreBuilder,
    default_slide_id,
    load_truth,
    prepare_pair,
    read_pairs_csv,
)
from stainldm.data.store import TileStore
from stainldm.errors import ConfigError, InputError

SMALL_TILES = ("tiles.size=64", "tiles.stride=64")  # as the small_store fixture


def test_one_library_call_makes_the_store_the_cli_makes(small_store, small_af_pair, tmp_path):
    out = tmp_path / "store"
    pair = SlidePair.from_paths(small_af_pair / "unstained.tiff", small_af_pair / "stained.tiff",
                                truth=small_af_pair / "truth.json", slide_id="af")
    calls = []
    lines = prepare_pair(out, pair, load_prepare_config(overrides=SMALL_TILES), progress=lambda *a: calls.append(a))
    n = len(TileStore.open(out))
    assert calls[0] == (0, n) and calls[-1] == (n, n) and len(calls) == 1 + -(-n // 64)  # planned, then per batch
    for name in ("tiles.csv", "prepare.yaml", "cores.geojson", "cores.csv", "registration.csv",
                 "slides/af/cores.geojson", "slides/af/cores.csv", "slides/af/registration.csv",
                 "slides/af/registration.json"):
        assert (out / name).read_bytes() == (small_store / name).read_bytes(), name
    assert lines[0].startswith(f"{out}: {n} tiles (train ") and lines[0].endswith("from 1 pairs")
    assert lines[1].startswith("  af: registration error median ")
    assert prepare_pair(out, pair, load_prepare_config(overrides=SMALL_TILES)) == lines  # done: skipped


def test_per_slide_csvs_end_lines_with_crlf_and_store_level_ones_with_lf(small_store):
    for name in ("cores.csv", "registration.csv"):
        assert b"\r\n" in (small_store / "slides" / "af" / name).read_bytes()
        data = (small_store / name).read_bytes()
        assert b"\r" not in data and data.endswith(b"\n")
    header = (small_store / "cores.csv").read_text().splitlines()[0]
    assert header.startswith("slide_id,id,row,col,")


def test_aggregate_gathers_slides_in_name_order(small_store, tmp_path):
    out = tmp_path / "store"
    (out / "slides").mkdir(parents=True)
    for name in ("b", "a"):
        shutil.copytree(small_store / "slides" / "af", out / "slides" / name)
    aggregate_reports(out)
    with open(out / "cores.csv", newline="") as fh:
        ids = [row["slide_id"] for row in csv.DictReader(fh)]
    per_slide = len((small_store / "slides" / "af" / "cores.csv").read_text().splitlines()) - 1
    assert ids == ["a"] * per_slide + ["b"] * per_slide


def test_builder_records_a_failed_pair_and_refuses_another_config(small_store, small_af_pair, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(small_store, out)
    cfg = load_prepare_config(overrides=SMALL_TILES)
    builder = StoreBuilder(out, cfg)
    assert builder.is_done("af") and builder.add(SlidePair("af", Path("x"), Path("y"))) is None
    with pytest.raises(InputError, match="missing.tiff"):
        builder.add(SlidePair("gone", tmp_path / "missing.tiff", small_af_pair / "stained.tiff"))
    assert builder.status["gone"]["status"] == "failed" and "missing.tiff" in builder.status["gone"]["error"]
    with open(out / "pairs.csv", newline="") as fh:
        assert {r["slide_id"]: r["status"] for r in csv.DictReader(fh)} == {"af": "done", "gone": "failed"}
    with pytest.raises(ConfigError, match=r"another prepare config .* use a new `out` folder"):
        StoreBuilder(out, load_prepare_config(overrides=("tiles.size=128", "tiles.stride=128")))


def test_pairs_csv_paths_are_relative_to_it_and_ids_default_to_the_stem(tmp_path):
    (tmp_path / "pairs.csv").write_text("unstained,stained,truth\nsub/a.ome.tiff,b.tiff,t.json\n"
                                        "/abs/s1/unstained.tiff,c.tiff,\n")
    first, second = read_pairs_csv(tmp_path / "pairs.csv")
    assert first == SlidePair("a", tmp_path / "sub" / "a.ome.tiff", tmp_path / "b.tiff", tmp_path / "t.json")
    assert second.slide_id == "s1" and second.unstained == Path("/abs/s1/unstained.tiff") and second.truth is None
    assert default_slide_id(Path("x/sample/unstained.tiff")) == "sample"


def test_a_truth_file_that_is_not_make_samples_is_named(tmp_path):
    with pytest.raises(InputError, match="truth file not found") as exc:
        load_truth(tmp_path / "none.json")
    assert exc.value.__cause__ is not None  # the cause is kept for --debug
    (tmp_path / "t.json").write_text('{"cores": []}')
    with pytest.raises(InputError, match="not a make-sample truth.json"):
        load_truth(tmp_path / "t.json")


def test_prepare_config_reads_a_workflow_files_prepare_section(tmp_path):
    (tmp_path / "w.yaml").write_text("prepare:\n  tiles:\n    size: 128\ntrain:\n  steps: 3\n")
    cfg = load_prepare_config(tmp_path / "w.yaml", ["tiles.stride=64"])
    assert (cfg.tiles.size, cfg.tiles.stride) == (128, 64)
    with pytest.raises(ConfigError, match=r"tiles.size \(60\) must be a multiple of 8"):
        load_prepare_config(overrides=["tiles.size=60"])
