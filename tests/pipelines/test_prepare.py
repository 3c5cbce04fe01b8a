"""``stainldm prepare``: the store it writes, resume, a batch with failures, other mpp, config errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr

from pipelines.cli import main
from stainldm.data.pairs import slide_mask
from stainldm.data.store import TILE_COLUMNS, TileStore
from stainldm.wsi.reader import open_slide
from stainldm.wsi.tissue import TissueConfig
from stainldm.wsi.tma import dearray
from stainldm.wsi.writer import write_pyramid

TILES = ["--set", "tiles.size=64", "--set", "tiles.stride=64"]  # as the small_store fixture


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _prepare_args(pair: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--unstained", str(pair / "unstained.tiff"), "--stained", str(pair / "stained.tiff"),
            "--out", str(out), "--quiet", *extra]


# ---------------------------------------------------------------------------------------------
# The store of one pair (the session's small_store: make-sample pair with --truth)
# ---------------------------------------------------------------------------------------------
def test_prepare_writes_every_output(small_store):
    for name in ("tiles.zarr", "tiles.csv", "pairs.csv", "cores.geojson", "cores.csv", "registration.csv",
                 "prepare.yaml", "slides/af/cores.geojson", "slides/af/cores.csv", "slides/af/registration.csv",
                 "slides/af/registration.json"):
        assert (small_store / name).exists(), name
    assert not list(small_store.rglob(".*.partial*"))
    pairs = _csv(small_store / "pairs.csv")
    assert [(p["slide_id"], p["status"], p["error"]) for p in pairs] == [("af", "done", "")]
    assert int(pairs[0]["tiles"]) == len(TileStore.open(small_store)) > 100


def test_tiles_csv_columns_and_zarr_arrays_agree(small_store, small_af_pair):
    with open(small_store / "tiles.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert ",".join(header) == "slide_id,core,split,x,y,mpp,tissue_fraction,sim_before,sim_after"
    assert tuple(header) == TILE_COLUMNS
    rows = _csv(small_store / "tiles.csv")
    group = zarr.open_group(str(small_store / "tiles.zarr"), mode="r")
    u, s = group["unstained"], group["stained"]
    assert u.shape == (len(rows), 64, 64, 2) and u.dtype == np.uint16
    assert s.shape == (len(rows), 64, 64, 3) and s.dtype == np.uint8
    assert {r["slide_id"] for r in rows} == {"af"} and {float(r["mpp"]) for r in rows} == {0.5}
    assert all(0.5 <= float(r["tissue_fraction"]) <= 1 for r in rows)
    # tile i of the arrays is the unstained slide at row i's (x, y)
    with open_slide(small_af_pair / "unstained.tiff") as slide:
        for i in (0, len(rows) // 2, len(rows) - 1):
            x, y = int(rows[i]["x"]), int(rows[i]["y"])
            np.testing.assert_array_equal(u[i], slide.read_region((x, y), (64, 64)))
    # stained tiles are H&E tissue, not glass or fill
    sample = np.asarray(s[:: max(1, len(rows) // 20)]).astype(np.float32)
    assert sample.mean() < 215 and sample.std() > 15


def test_splits_are_by_core_and_honour_the_truth(small_store, small_af_pair):
    truth = json.loads((small_af_pair / "truth.json").read_text())
    rows = _csv(small_store / "tiles.csv")
    by_core: dict[str, set[str]] = {}
    for r in rows:
        by_core.setdefault(r["core"], set()).add(r["split"])
    assert all(len(v) == 1 for v in by_core.values()), by_core  # no core in two splits
    split = {core: next(iter(v)) for core, v in by_core.items()}
    truth_split = {c["id"]: c["split"] for c in truth["cores"]}
    assert sorted(split) == sorted(truth_split)
    assert {c for c, s in split.items() if s == "test"} == {c for c, s in truth_split.items() if s == "test"}
    assert {split[c] for c, s in truth_split.items() if s == "train"} == {"train", "val"}  # val from train
    geo = json.loads((small_store / "cores.geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    names = {f["properties"]["name"]: f["properties"] for f in geo["features"]}
    assert set(truth_split) <= set(names)
    for core, s in split.items():
        assert names[core]["split"] == s and names[core]["slide_id"] == "af"
        assert geo["features"][0]["geometry"]["type"] == "Polygon"


def test_registration_report_meets_the_tre_goal(small_store, small_af_pair):
    rows = _csv(small_store / "registration.csv")
    truth = json.loads((small_af_pair / "truth.json").read_text())
    cores = [r for r in rows if r["core"] != "ALL"]
    assert sorted(r["core"] for r in cores) == sorted(c["id"] for c in truth["cores"])
    for r in cores:
        assert r["use"] == "used" and int(r["landmarks"]) == len(truth["landmarks"][r["core"]])
        assert float(r["tre_median_px"]) <= 1.5 and float(r["sim_after"]) > float(r["sim_before"])
    (total,) = [r for r in rows if r["core"] == "ALL"]
    print(f"prepare af: TRE median {total['tre_median_px']} px, p95 {total['tre_p95_px']} px, max "
          f"{total['tre_max_px']} px")
    assert float(total["tre_median_px"]) <= 1.0 and float(total["tre_p95_px"]) <= 2.0
    assert int(total["landmarks"]) == sum(len(v) for v in truth["landmarks"].values())


def test_rerun_skips_the_done_pair(small_store, small_af_pair, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    before = {name: (store / name).read_bytes() for name in ("pairs.csv", "tiles.csv", "registration.csv")}
    assert main([*_prepare_args(small_af_pair, store, "--slide-id", "af", "--truth",
                                str(small_af_pair / "truth.json")), *TILES]) == 0
    assert "af: already done, skipping" in caplog.text
    assert "coarse alignment" not in caplog.text  # nothing was registered again
    for name, data in before.items():
        assert (store / name).read_bytes() == data, name
    assert len(TileStore.open(store)) == len(TileStore.open(small_store))


# ---------------------------------------------------------------------------------------------
# A batch: a pair at another mpp, an unreadable file, a slide without tissue
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch(small_af_pair, tmp_path_factory):
    """``--pairs`` run over three pairs: ``fine`` (the stained slide re-written at 0.25 µm/px, truth
    landmarks scaled), ``broken`` (not a slide) and ``empty`` (a dark 2-channel slide, no tissue)."""
    folder = tmp_path_factory.mktemp("batch")
    with open_slide(small_af_pair / "stained.tiff") as s:
        stained = s.read_region((0, 0), s.dimensions)
    # cv2's pixel-centre convention: continuous stained coordinates simply double
    fine = cv2.resize(stained, (2 * stained.shape[1], 2 * stained.shape[0]), interpolation=cv2.INTER_LINEAR)
    write_pyramid(folder / "stained_025.tiff", fine, mpp=0.25)
    truth = json.loads((small_af_pair / "truth.json").read_text())
    truth["landmarks"] = {k: [[xu, yu, 2 * xs, 2 * ys] for xu, yu, xs, ys in v] for k, v in truth["landmarks"].items()}
    (folder / "truth_025.json").write_text(json.dumps(truth))
    (folder / "broken.tiff").write_text("this is not a slide")
    dark = np.random.default_rng(0).normal(100, 3, size=(1200, 1600, 2)).astype(np.uint16)
    write_pyramid(folder / "empty.tiff", dark, mpp=0.5)
    u, s = small_af_pair / "unstained.tiff", small_af_pair / "stained.tiff"
    (folder / "pairs.csv").write_text(  # relative paths are relative to the CSV's folder
        "slide_id,unstained,stained,truth\n"
        f"fine,{u},stained_025.tiff,truth_025.json\n"
        f"broken,broken.tiff,{s},\n"
        f"empty,empty.tiff,{s},\n")
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    logger = logging.getLogger("stainldm")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = main(["prepare", "--pairs", str(folder / "pairs.csv"), "--out", str(folder / "store"), "--quiet",
                       *TILES])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return {"folder": folder, "rc": rc, "stderr": err.getvalue(), "log": logs.getvalue()}


def test_batch_with_failures_exits_1_and_records_each_pair(batch):
    folder = batch["folder"]
    assert batch["rc"] == 1
    status = {r["slide_id"]: r for r in _csv(folder / "store" / "pairs.csv")}
    assert {k: v["status"] for k, v in status.items()} == {"fine": "done", "broken": "failed", "empty": "failed"}
    assert str(folder / "broken.tiff") in status["broken"]["error"]
    assert "empty.tiff: no tissue found" in status["empty"]["error"]
    assert status["fine"]["error"] == "" and int(status["fine"]["tiles"]) > 100
    lines = batch["stderr"].strip().splitlines()
    assert any(line.startswith("error: broken: ") and str(folder / "broken.tiff") in line for line in lines)
    assert any(line.startswith("error: empty: ") and "no tissue" in line for line in lines)
    assert "2 of 3 pairs failed" in lines[-1]
    rows = TileStore.open(folder / "store").rows
    assert {r.slide_id for r in rows} == {"fine"} and len(rows) == int(status["fine"]["tiles"])


def test_pair_at_another_mpp_is_resampled_and_registers(batch):
    store = batch["folder"] / "store"
    assert "is 0.25 µm/px: the stained slide is resampled onto the unstained one" in batch["log"]
    (total,) = [r for r in _csv(store / "registration.csv") if r["core"] == "ALL"]
    print(f"0.25 µm/px stained: TRE median {total['tre_median_px']} px, p95 {total['tre_p95_px']} px (0.25 µm px)")
    assert float(total["tre_median_px"]) <= 2.0 and float(total["tre_p95_px"]) <= 4.0  # ≤ 1 / 2 px at 0.5 µm
    matrix = np.asarray(json.loads((store / "slides" / "fine" / "registration.json").read_text())["matrix"])
    assert np.sqrt(abs(np.linalg.det(matrix[:2, :2]))) == pytest.approx(2.0, rel=0.01)
    tiles = TileStore.open(store)
    u, s = tiles.read(len(tiles) // 2)
    assert u.shape == (64, 64, 2) and s.shape == (64, 64, 3)  # tiles at 0.5 µm/px on both sides
    assert {r.mpp for r in tiles.rows} == {0.5}


def test_rerun_after_fixing_a_pair_skips_the_done_one_and_adds_the_fixed(batch, small_af_pair, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    folder = tmp_path / "batch"
    shutil.copytree(batch["folder"], folder)
    before = _csv(folder / "store" / "tiles.csv")
    fine_row = {r["slide_id"]: r for r in _csv(folder / "store" / "pairs.csv")}["fine"]
    shutil.copy(small_af_pair / "unstained.tiff", folder / "broken.tiff")  # the fix
    assert main(["prepare", "--pairs", str(folder / "pairs.csv"), "--out", str(folder / "store"), "--quiet",
                 *TILES]) == 1  # `empty` still has no tissue
    assert "fine: already done, skipping" in caplog.text
    status = {r["slide_id"]: r for r in _csv(folder / "store" / "pairs.csv")}
    assert status["fine"] == fine_row
    assert status["broken"]["status"] == "done" and status["empty"]["status"] == "failed"
    after = _csv(folder / "store" / "tiles.csv")
    assert after[: len(before)] == before
    assert {r["slide_id"] for r in after[len(before):]} == {"broken"}
    assert len(after) - len(before) == int(status["broken"]["tiles"]) > 0
    assert len(TileStore.open(folder / "store")) == len(after)
    assert {r["slide_id"] for r in _csv(folder / "store" / "registration.csv")} == {"fine", "broken"}


# ---------------------------------------------------------------------------------------------
# Bad configs and arguments
# ---------------------------------------------------------------------------------------------
def test_tiles_larger_than_the_cores_are_a_config_error_naming_tiles_size(small_af_pair, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(_prepare_args(small_af_pair, out, "--set", "tiles.size=1024")) == 1
    err = capsys.readouterr().err
    assert "tiles.size × tiles.mpp = 512 µm is larger than the cores" in err and "lower tiles.size" in err
    (row,) = _csv(out / "pairs.csv")
    assert row["status"] == "failed" and "tiles.size" in row["error"]
    assert not (out / "tiles.zarr").exists()


def test_rerun_with_a_fixed_config_after_a_config_failure_works(small_af_pair, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(_prepare_args(small_af_pair, out, "--set", "tiles.size=1024")) == 1
    capsys.readouterr()
    assert main(_prepare_args(small_af_pair, out, "--set", "tiles.size=128", "--set", "tiles.stride=128")) == 0, \
        capsys.readouterr().err


def test_typo_in_set_key_is_a_one_line_error(small_af_pair, tmp_path, capsys):
    assert main(_prepare_args(small_af_pair, tmp_path / "o", "--set", "tiles.sise=3")) == 2
    assert "unknown config key 'tiles.sise'; did you mean 'tiles.size'?" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_a_set_item_without_equals_names_the_flag(small_af_pair, tmp_path, capsys):
    assert main(_prepare_args(small_af_pair, tmp_path / "o", "--set", "tiles")) == 2
    assert _one_error_line(capsys) == "error: --set 'tiles': expected key=value, e.g. grid.rows=4"


def test_bad_tile_values_are_config_errors(small_af_pair, tmp_path, capsys):
    assert main(_prepare_args(small_af_pair, tmp_path / "o", "--set", "tiles.size=60")) == 2
    assert "tiles.size (60) must be a multiple of 8" in _one_error_line(capsys)
    assert main(_prepare_args(small_af_pair, tmp_path / "o", "--set", "tiles.min_tissue=1.5")) == 2
    assert "tiles.min_tissue (1.5) must be in [0, 1]" in _one_error_line(capsys)


def test_unstained_without_stained_exits_2(small_af_pair, tmp_path, capsys):
    assert main(["prepare", "--unstained", str(small_af_pair / "unstained.tiff"), "--out", str(tmp_path / "o")]) == 2
    assert "--unstained needs --stained" in _one_error_line(capsys)


def test_another_config_for_an_existing_store_is_refused(small_store, small_af_pair, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    before = (store / "tiles.csv").read_bytes()
    assert main(_prepare_args(small_af_pair, store, "--set", "tiles.size=128", "--set", "tiles.stride=128")) == 2
    line = _one_error_line(capsys)
    assert str(store) in line and "made with another prepare config" in line and "new --out folder" in line
    assert (store / "tiles.csv").read_bytes() == before


@pytest.mark.parametrize(("text", "message"), [
    ("unstained,slide_id\na.tiff,x\n", "needs columns 'unstained' and 'stained' (has: slide_id, unstained)"),
    ("unstained,stained,slide_id\na.tiff,b.tiff,x\nc.tiff,d.tiff,x\n", "pairs.csv:3: slide_id 'x' appears twice"),
    ("unstained,stained\na.tiff,\n", "pairs.csv:2: empty unstained or stained path"),
    ("unstained,stained\n", "no pairs listed"),
])
def test_bad_pairs_csv_is_a_one_line_error(tmp_path, capsys, text, message):
    (tmp_path / "pairs.csv").write_text(text)
    assert main(["prepare", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "o")]) == 2
    assert message in _one_error_line(capsys)
    assert main(["prepare", "--pairs", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.csv: pairs file not found" in _one_error_line(capsys)


# ---------------------------------------------------------------------------------------------
# A whole section (not a TMA)
# ---------------------------------------------------------------------------------------------
def test_the_real_cmu_section_is_one_tissue_region(cmu_path):
    cfg = TissueConfig()
    with open_slide(cmu_path) as slide:
        mask = slide_mask(slide, cfg, modality="auto")
        cores, grid = dearray(mask, mask_mpp=cfg.mask_mpp, level0_mpp=slide.mpp[0])
        w, h = slide.dimensions
    assert not grid.is_tma
    assert [(c.id, c.status) for c in cores] == [("tissue", "ok")]
    x, y, bw, bh = cores[0].bbox_xywh
    assert 0 <= x and 0 <= y and x + bw <= w + 8 and y + bh <= h + 8
    assert bw * bh > 0.3 * w * h  # the section fills much of this crop


# ---------------------------------------------------------------------------------------------
# Sharded: --shard i/n and the launchers' rank variables, on pairs that fail fast (real shards,
# merged, are in tests/pipelines/test_merge_stores.py)
# ---------------------------------------------------------------------------------------------
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.fixture
def quick_pairs(small_af_pair, tmp_path, monkeypatch) -> Path:
    """pairs.csv of five pairs p0..p4 whose unstained file is not a slide (each fails at once)."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "broken.tiff").write_text("this is not a slide")
    s = small_af_pair / "stained.tiff"
    (tmp_path / "pairs.csv").write_text("slide_id,unstained,stained\n" +
                                        "".join(f"p{k},broken.tiff,{s}\n" for k in range(5)))
    return tmp_path / "pairs.csv"


def _quick(pairs: Path, *extra: str) -> int:
    return main(["prepare", "--pairs", str(pairs), "--out", str(pairs.parent / "store"), "--quiet", *extra])


def test_a_shard_prepares_its_rows_into_a_part_of_its_own(quick_pairs, capsys):
    store = quick_pairs.parent / "store"
    assert _quick(quick_pairs, "--shard", "2/2") == 1  # its pairs failed
    part = store / "parts" / "shard-2-of-2"
    assert [p.name for p in store.iterdir()] == ["parts"] and [p.name for p in (store / "parts").iterdir()] == [
        "shard-2-of-2"]
    assert [(r["slide_id"], r["status"]) for r in _csv(part / "pairs.csv")] == [("p1", "failed"), ("p3", "failed")]
    record = json.loads((part / "shard.json").read_text())
    assert record["shard"] == "2/2" and record["status"] == "finished" and record["total"] == 5
    assert [p["row"] for p in record["pairs"]] == [1, 3]
    out, err = capsys.readouterr()
    assert f"shard 2/2: 2 of the 5 pairs in {part}; once every shard is done: stainldm merge-stores {store}" in out
    assert f"2 of 2 pairs failed (see {part / 'pairs.csv'})" in err


@pytest.mark.parametrize(("env", "part", "slides"), [
    ({"RANK": "0", "WORLD_SIZE": "3"}, "shard-1-of-3", ["p0", "p3"]),  # torchrun
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "3"}, "shard-3-of-3", ["p2"]),  # srun
])
def test_rank_variables_pick_the_shard(quick_pairs, monkeypatch, env, part, slides):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _quick(quick_pairs) == 1
    assert [r["slide_id"] for r in _csv(quick_pairs.parent / "store" / "parts" / part / "pairs.csv")] == slides


def test_one_shard_is_the_store_itself_as_without_shards(quick_pairs, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _quick(quick_pairs) == 1
    store = quick_pairs.parent / "store"
    assert not (store / "parts").exists() and len(_csv(store / "pairs.csv")) == 5


def test_an_interrupted_shard_stays_unfinished_until_it_is_rerun(quick_pairs, monkeypatch):
    from stainldm.data.prepare import StoreBuilder

    add = StoreBuilder.add

    def killed_at_the_second_pair(self, pair, **kw):
        if pair.slide_id == "p2":
            raise KeyboardInterrupt
        return add(self, pair, **kw)

    monkeypatch.setattr(StoreBuilder, "add", killed_at_the_second_pair)
    assert _quick(quick_pairs, "--shard", "1/2") == 130
    part = quick_pairs.parent / "store" / "parts" / "shard-1-of-2"
    assert json.loads((part / "shard.json").read_text())["status"] == "running"
    assert [r["slide_id"] for r in _csv(part / "pairs.csv")] == ["p0"]
    monkeypatch.setattr(StoreBuilder, "add", add)
    assert _quick(quick_pairs, "--shard", "1/2") == 1
    assert json.loads((part / "shard.json").read_text())["status"] == "finished"
    assert [r["slide_id"] for r in _csv(part / "pairs.csv")] == ["p0", "p2", "p4"]


def test_shard_needs_a_pairs_file(small_af_pair, tmp_path, capsys):
    assert main(_prepare_args(small_af_pair, tmp_path / "o", "--shard", "1/2")) == 2
    assert _one_error_line(capsys) == "error: --shard needs --pairs: one pair is not split into shards"
    assert not (tmp_path / "o").exists()


def test_a_malformed_shard_names_the_flag(quick_pairs, capsys):
    assert _quick(quick_pairs, "--shard", "0/2") == 2
    assert _one_error_line(capsys) == "error: --shard 0/2: i must be between 1 and n (n ≥ 1)"
    assert not (quick_pairs.parent / "store").exists()


# ---------------------------------------------------------------------------------------------
# --channels: the unstained channels a store holds, by name or index
# ---------------------------------------------------------------------------------------------
FAST_REGISTRATION = ("--set", "register.deformable=false", "tiles.size=64", "tiles.stride=128")


def test_channels_choose_and_order_what_the_store_holds(small_af_pair, tmp_path, capsys):
    one, both = tmp_path / "one", tmp_path / "both"
    assert main([*_prepare_args(small_af_pair, one, "--channels", "1", *FAST_REGISTRATION)]) == 0
    assert main([*_prepare_args(small_af_pair, both, *FAST_REGISTRATION)]) == 0
    store, full = TileStore.open(one), TileStore.open(both)
    assert store.channels_in == 1 and store.channel_names == ("AF488",)
    assert full.channel_names == ("AF405", "AF488") and len(store) > 0
    at = {(r.core, r.x, r.y): i for i, r in enumerate(full.rows)}
    shared = [(i, at[(r.core, r.x, r.y)]) for i, r in enumerate(store.rows) if (r.core, r.x, r.y) in at]
    assert shared  # (the tissue mask is AF488's alone, so the tiles may differ a little)
    for i, j in shared[:5]:
        assert np.array_equal(store.read(i)[0][..., 0], full.read(j)[0][..., 1])  # AF488, cut the same way
    # the channels are part of the store's config: more pairs come with the same choice
    capsys.readouterr()
    assert main([*_prepare_args(small_af_pair, one, "--slide-id", "again", *FAST_REGISTRATION)]) == 2
    assert "this store was made with another prepare config" in _one_error_line(capsys)


def _pair_error(capsys) -> str:
    """The failed pair's error line (a summary line follows it)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: ") and "1 of 1 pairs failed" in err[1], err
    return err[0]


def test_channels_the_slide_lacks_are_a_one_line_error(small_af_pair, tmp_path, capsys):
    assert main([*_prepare_args(small_af_pair, tmp_path / "s", "--channels", "AF488,DAPI")]) == 1
    line = _pair_error(capsys)
    assert "unstained.tiff: --channels asks for 'DAPI', which the slide lacks; it has 2 channels: 0=AF405, 1=AF488" \
        in line
    assert main([*_prepare_args(small_af_pair, tmp_path / "t", "--channels", "AF488,af488")]) == 1
    assert "AF488" in _pair_error(capsys)
    assert main([*_prepare_args(small_af_pair, tmp_path / "u", "--channels", "AF405,,AF488")]) == 2
    assert "--channels 'AF405,,AF488' has an empty entry" in _one_error_line(capsys)
