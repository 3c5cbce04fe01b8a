"""stainldm.data.merge: store parts of a sharded prepare and their merge, on small stores written
directly (the slides-to-parts path through ``stainldm prepare`` is in tests/pipelines)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from stainldm.data import merge as merge_mod
from stainldm.data.dataset import PairedTileDataset
from stainldm.data.merge import PART_RECORD, ShardPart, find_parts, merge_stores, part_folder, read_part
from stainldm.data.store import TileRow, TileStore, read_pairs, write_pairs
from stainldm.errors import ConfigError, InputError
from stainldm.shards import shard_items

TILE = 16
CONFIG = {"seed": 0, "workers": 2, "tiles": {"mpp": 0.5, "size": TILE, "stride": TILE}, "split": {"seed": 0}}
IDS = ["a", "b", "c", "d", "e"]  # pairs.csv order
SIZES = {"a": 3, "b": 2, "c": 4, "d": 1, "e": 2, "x": 1, "z": 2}  # tiles per slide


def _tiles(sid: str, n: int, channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(sum(map(ord, sid)))
    u = rng.integers(1, 65535, size=(n, TILE, TILE, channels), dtype=np.uint16)
    s = rng.integers(1, 255, size=(n, TILE, TILE, 3), dtype=np.uint8)
    return u, s


def _rows(sid: str, n: int) -> list[TileRow]:
    return [TileRow(sid, f"A{k % 2 + 1}", "train" if k % 2 == 0 else "val", 16 * k, 0, 0.5, 1.0, 0.4, 0.6)
            for k in range(n)]


def _add(folder: Path, sid: str, *, status: str = "done", config: dict = CONFIG, channels: int = 2) -> None:
    """What StoreBuilder.add leaves for one pair: its tiles, its reports, its pairs.csv row."""
    n = SIZES[sid] if status == "done" else 0
    if status == "done":
        store = TileStore.create(folder, tile_px=TILE, channels_in=channels, dtype_in="uint16")
        store.append(*_tiles(sid, n, channels), _rows(sid, n))
        if not (folder / "prepare.yaml").is_file():
            (folder / "prepare.yaml").write_text(yaml.safe_dump({"config_hash": "h", **config}))
    (folder / "slides" / sid).mkdir(parents=True, exist_ok=True)
    (folder / "slides" / sid / "registration.csv").write_text(f"slide_id,core,split\n{sid},A1,train\n")
    pairs = read_pairs(folder / "pairs.csv")
    pairs[sid] = {"slide_id": sid, "unstained": f"{sid}_u.tiff", "stained": f"{sid}_s.tiff", "status": status,
                  "tiles": str(n), "seconds": "1.0", "error": "" if status == "done" else "no tissue found"}
    write_pairs(folder / "pairs.csv", pairs)


def _shard(out: Path, index: int, count: int = 2, *, ids=IDS, failed=(), finish: bool = True, **kw) -> Path:
    """A shard's part as ``prepare --shard`` writes it."""
    part = ShardPart.start(out, ids, (index, count))
    for sid in shard_items(ids, (index, count)):
        _add(part.folder, sid, status="failed" if sid in failed else "done", **kw)
    if finish:
        part.finish()
    return part.folder


def _sharded(out: Path, **kw) -> list[Path]:
    return [_shard(out, 0, **kw), _shard(out, 1, **kw)]


def _check_tiles(out: Path, slides) -> None:
    """``out`` holds exactly the tiles of ``slides``, in that order."""
    store = TileStore.open(out)
    assert [r.slide_id for r in store.rows] == [sid for sid in slides for _ in range(SIZES[sid])]
    i = 0
    for sid in slides:
        u, s = _tiles(sid, SIZES[sid])
        assert store.rows[i : i + SIZES[sid]] == _rows(sid, SIZES[sid])
        for k in range(SIZES[sid]):
            ru, rs = store.read(i + k)
            np.testing.assert_array_equal(ru, u[k])
            np.testing.assert_array_equal(rs, s[k])
        i += SIZES[sid]


# ---------------------------------------------------------------------------------------------
# Parts and the merge
# ---------------------------------------------------------------------------------------------
def test_shards_take_alternate_rows_into_their_own_folders(tmp_path):
    a, b = _sharded(tmp_path / "store")
    assert a == part_folder(tmp_path / "store", (0, 2)) == tmp_path / "store" / "parts" / "shard-1-of-2"
    assert b.name == "shard-2-of-2" and find_parts(tmp_path / "store") == [a, b]
    assert list(read_pairs(a / "pairs.csv")) == ["a", "c", "e"] and list(read_pairs(b / "pairs.csv")) == ["b", "d"]
    record = json.loads((b / PART_RECORD).read_text())
    assert record["shard"] == "2/2" and record["status"] == "finished" and record["total"] == 5
    assert record["pairs"] == [{"row": 1, "slide_id": "b"}, {"row": 3, "slide_id": "d"}]


def test_merge_links_every_tile_once_in_pairs_csv_order(tmp_path):
    out = tmp_path / "store"
    _sharded(out)
    with pytest.raises(InputError, match=r"holds the parts of a sharded prepare .* run `stainldm merge-stores"):
        TileStore.open(out)
    calls = []
    result = merge_stores(out, progress=lambda *a: calls.append(a))
    n = sum(SIZES[sid] for sid in IDS)
    assert (result.tiles, result.parts, result.pairs_done, result.pairs_failed) == (n, 2, 5, [])
    assert result.placed == {"linked": 2 * n, "copied": 0, "recoded": 0} and not result.already
    assert calls[-1] == (n, n)
    _check_tiles(out, IDS)  # a, b, c, d, e: the order of pairs.csv, not part by part
    assert list(read_pairs(out / "pairs.csv")) == IDS
    assert json.loads((out / "merge.json").read_text())["status"] == "done"
    assert (out / "prepare.yaml").read_bytes() == (out / "parts" / "shard-1-of-2" / "prepare.yaml").read_bytes()
    assert sorted(p.name for p in (out / "slides").iterdir()) == IDS
    assert (out / "registration.csv").read_text().count("\n") == 1 + len(IDS)  # aggregated from every slide
    chunk = out / "tiles.zarr" / "unstained" / "c" / "0" / "0" / "0" / "0"
    assert chunk.stat().st_nlink == 2  # the part's file, not a copy
    # train-ready, and the parts can go
    shutil.rmtree(out / "parts")
    _check_tiles(out, IDS)
    items = PairedTileDataset(out, split="train")
    assert len(items) == sum((SIZES[sid] + 1) // 2 for sid in IDS)
    assert items[0]["unstained"].shape == (2, TILE, TILE) and items[0]["stained"].shape == (3, TILE, TILE)


def test_tiles_are_copied_once_where_the_file_system_cannot_link(tmp_path, monkeypatch):
    out = tmp_path / "store"
    _sharded(out)

    link = os.link

    def no_link(src, dst):  # as from one file system to another (zarr's own metadata writes still link)
        if "/c/" in str(dst):
            raise OSError(18, "Invalid cross-device link")
        link(src, dst)

    monkeypatch.setattr(os, "link", no_link)
    result = merge_stores(out)
    n = sum(SIZES[sid] for sid in IDS)
    assert result.placed == {"linked": 0, "copied": 2 * n, "recoded": 0}
    _check_tiles(out, IDS)
    assert (out / "tiles.zarr" / "stained" / "c" / "0" / "0" / "0" / "0").stat().st_nlink == 1


def test_a_part_whose_arrays_are_stored_otherwise_is_reencoded(tmp_path):
    out = tmp_path / "store"
    _, second = _sharded(out)
    group = zarr.open_group(str(second / "tiles.zarr"), mode="r+")
    stained = np.asarray(group["stained"][:])
    group.create_array("stained", shape=stained.shape, chunks=(1, TILE, TILE, 3), dtype="uint8",
                       compressors=None, overwrite=True)[:] = stained  # another zarr's defaults, say
    result = merge_stores(out)
    n, n2 = sum(SIZES[sid] for sid in IDS), SIZES["b"] + SIZES["d"]
    assert result.placed == {"linked": 2 * n - n2, "copied": 0, "recoded": n2}
    _check_tiles(out, IDS)


def test_failed_pairs_are_listed_and_a_fixed_shard_is_merged_again(tmp_path):
    out = tmp_path / "store"
    _shard(out, 0)
    second = _shard(out, 1, failed=("b",))
    result = merge_stores(out)
    assert result.pairs_failed == ["b"] and result.pairs_done == 4
    _check_tiles(out, ["a", "c", "d", "e"])
    assert read_pairs(out / "pairs.csv")["b"]["status"] == "failed"
    again = merge_stores(out)
    assert again.already and again.tiles == result.tiles
    (out / "stats.json").write_text("{}")  # a training's statistics of the old store
    _add(second, "b")  # the pair fixed and its shard rerun
    fixed = merge_stores(out)
    assert not fixed.already and fixed.pairs_failed == [] and not (out / "stats.json").exists()
    _check_tiles(out, IDS)  # no stale tile of the first merge: b's tiles are in place
    assert fixed.placed["linked"] == 2 * sum(SIZES[sid] for sid in IDS)


def test_any_stores_can_be_merged_in_the_order_named(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for sid in ("c", "a"):
        _add(one, sid)
    _add(two, "e")
    merge_stores(tmp_path / "merged", [two, one])
    _check_tiles(tmp_path / "merged", ["e", "c", "a"])
    assert json.loads((tmp_path / "merged" / "merge.json").read_text())["parts"][0]["part"] == str(two)


# ---------------------------------------------------------------------------------------------
# Interrupted merges
# ---------------------------------------------------------------------------------------------
def test_an_interrupted_merge_never_opens_and_a_rerun_finishes_it(tmp_path, monkeypatch):
    out = tmp_path / "store"
    _sharded(out)
    place = merge_mod.place_tiles
    calls = []

    def dies_on_the_third_slide(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return place(*args)

    monkeypatch.setattr(merge_mod, "place_tiles", dies_on_the_third_slide)
    with pytest.raises(KeyboardInterrupt):
        merge_stores(out)
    monkeypatch.setattr(merge_mod, "place_tiles", place)
    assert not (out / "tiles.csv").exists()
    with pytest.raises(InputError, match=r"unfinished merge of store parts .* rerun `stainldm merge-stores"):
        TileStore.open(out)
    with pytest.raises(InputError, match="unfinished merge"):  # nor does prepare append to it
        TileStore.create(out, tile_px=TILE, channels_in=2, dtype_in="uint16")
    result = merge_stores(out)
    first_two = 2 * (SIZES["a"] + SIZES["b"])
    assert result.placed["linked"] == 2 * sum(SIZES[sid] for sid in IDS) - first_two  # a's and b's tiles were kept
    _check_tiles(out, IDS)


def test_an_interrupted_merge_again_leaves_no_store_that_looks_complete(tmp_path, monkeypatch):
    out = tmp_path / "store"
    _, second = _sharded(out)
    merge_stores(out)
    _add(second, "b", status="failed")  # the part changed: the next merge rebuilds the store
    monkeypatch.setattr(merge_mod, "place_tiles", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        merge_stores(out)
    assert not (out / "tiles.csv").exists()
    with pytest.raises(InputError, match="unfinished merge"):
        TileStore.open(out)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------
def test_an_unfinished_shard_is_refused(tmp_path):
    out = tmp_path / "store"
    _shard(out, 0)
    running = _shard(out, 1, finish=False)  # still running, or killed
    with pytest.raises(InputError, match=r"shard-2-of-2: unfinished part \(shard 2/2 is still running, or was "
                                         r"interrupted\); rerun its prepare \(shard 2/2\)"):
        merge_stores(out)
    record = json.loads((running / PART_RECORD).read_text())
    (running / PART_RECORD).write_text(json.dumps({**record, "status": "finished"}))
    pairs = read_pairs(running / "pairs.csv")
    del pairs["d"]
    write_pairs(running / "pairs.csv", pairs)
    with pytest.raises(InputError, match="unfinished part .pair 'd' is neither done nor failed"):
        merge_stores(out)
    assert not (out / "merge.json").exists() and not (out / "tiles.zarr").exists()


def test_a_store_with_tiles_of_an_unrecorded_pair_is_refused(tmp_path):
    one = tmp_path / "one"
    _add(one, "a")
    TileStore.create(one, tile_px=TILE, channels_in=2, dtype_in="uint16").append(*_tiles("x", 1), _rows("x", 1))
    with pytest.raises(InputError, match=r"one: unfinished \(tiles of 'x', which pairs.csv does not record"):
        merge_stores(tmp_path / "merged", [one])


def test_parts_of_other_configs_or_modalities_are_refused(tmp_path):
    out = tmp_path / "store"
    _shard(out, 0)
    other = {**CONFIG, "workers": 8, "tiles": {**CONFIG["tiles"], "size": 32, "stride": 32}}
    second = _shard(out, 1, config=other)
    with pytest.raises(ConfigError, match=r"shard-2-of-2: prepared with another config than .*shard-1-of-2 "
                                          r"\(tiles.size 32 vs 16, tiles.stride 32 vs 16\); prepare every part"):
        merge_stores(out)
    shutil.rmtree(second)
    _shard(out, 1, config={**CONFIG, "workers": 8})  # workers do not change the tiles
    shutil.rmtree(part_folder(out, (0, 2)))
    _shard(out, 0, channels=3)
    with pytest.raises(InputError, match=r"holds 2-channel uint16 tiles of 16 px, .* 3-channel uint16 tiles .* one "
                                         r"modality"):
        merge_stores(out)


def test_a_slide_in_two_parts_is_refused(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _add(one, "a")
    _add(two, "c")
    _add(two, "a", status="failed")
    with pytest.raises(InputError, match=rf"slide 'a' is in two parts, {one} and {two}; a slide belongs in one"):
        merge_stores(tmp_path / "merged", [one, two])


def test_shards_of_another_pairs_list_or_a_missing_shard_are_refused(tmp_path):
    out = tmp_path / "store"
    _shard(out, 0)
    with pytest.raises(InputError, match=r"parts: shard 2 of 2 has no part \(1 of 2 found\); run its prepare"):
        merge_stores(out)
    _shard(out, 1, ids=["b", "x", "d"])
    with pytest.raises(InputError, match="shard-2-of-2: prepared from another pairs list than .*shard-1-of-2"):
        merge_stores(out)
    _shard(out, 2, count=3)
    with pytest.raises(InputError, match=r"holds parts of 2 and of 3 shards; name the parts"):
        find_parts(out)
    with pytest.raises(InputError, match="no store parts"):
        merge_stores(tmp_path / "empty")


def test_merging_into_a_folder_with_another_store_is_refused(tmp_path):
    prepared = tmp_path / "prepared"
    _add(prepared, "z")
    _sharded(prepared)
    with pytest.raises(InputError, match=r"prepared: already holds a tile store that was not merged from parts"):
        merge_stores(prepared)
    out = tmp_path / "store"
    _sharded(out)
    merge_stores(out)
    one = tmp_path / "one"
    _add(one, "z")
    with pytest.raises(InputError, match=r"store: holds a store merged from other parts \(parts/shard-1-of-2, "
                                         r"parts/shard-2-of-2\); merge these into another folder"):
        merge_stores(out, [one])
    _add(out, "z")  # a pair prepared straight into the merged store, then a part changes
    _add(part_folder(out, (1, 2)), "b", status="failed")
    with pytest.raises(InputError, match=r"store: holds 14 tiles but was merged with 12: pairs were prepared into "
                                         r"it since; merging again would drop them"):
        merge_stores(out)
    with pytest.raises(InputError, match="is the merged store itself"):
        merge_stores(tmp_path / "m", [one, one])
    with pytest.raises(InputError, match="no such store part"):
        read_part(tmp_path / "missing")
