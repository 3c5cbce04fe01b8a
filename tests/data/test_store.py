"""The paired tile store: round trips, the fast chunk reader, interrupted writes, bad stores."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from stainldm.data.store import (
    TILE_COLUMNS,
    TileRow,
    TileStore,
    create_tile_arrays,
    place_tiles,
    read_tile_rows,
)
from stainldm.errors import InputError
from stainldm.files import atomic_write_csv

TILE = 16


def _rows(n: int, *, start: int = 0, slide: str = "s1", core: str = "A1", split: str = "train") -> list[TileRow]:
    return [TileRow(slide, core, split, 10 * i, 20 * i, 0.5, 0.75, 0.4, 0.6) for i in range(start, start + n)]


def _tiles(n: int, *, channels: int = 2, dtype=np.uint16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hi = np.iinfo(dtype).max
    u = rng.integers(1, hi, size=(n, TILE, TILE, channels), endpoint=True).astype(dtype)
    s = rng.integers(1, 255, size=(n, TILE, TILE, 3), endpoint=True).astype(np.uint8)
    return u, s


def _store(tmp_path, n: int = 5, *, channels: int = 2, dtype=np.uint16):
    store = TileStore.create(tmp_path / "store", tile_px=TILE, channels_in=channels, dtype_in=np.dtype(dtype).name)
    u, s = _tiles(n, channels=channels, dtype=dtype)
    store.append(u, s, _rows(n))
    return store, u, s


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("channels", "dtype"), [(2, np.uint16), (1, np.uint8), (3, np.uint8)])
def test_create_append_reopen_read_round_trip(tmp_path, channels, dtype):
    store, u, s = _store(tmp_path, 4, channels=channels, dtype=dtype)
    u2, s2 = _tiles(3, channels=channels, dtype=dtype, seed=1)
    store.append(u2, s2, _rows(3, start=4, core="B2", split="test"))
    back = TileStore.open(tmp_path / "store")
    assert len(back) == 7 and back.tile_px == TILE and back.channels_in == channels
    assert back.unstained.dtype == dtype and back.stained.dtype == np.uint8
    assert back.unstained.shape == (7, TILE, TILE, channels) and back.stained.shape == (7, TILE, TILE, 3)
    assert back.rows == _rows(4) + _rows(3, start=4, core="B2", split="test")
    for i, (eu, es) in enumerate(zip(np.concatenate([u, u2]), np.concatenate([s, s2]), strict=True)):
        ru, rs = back.read(i)
        assert ru.dtype == dtype and rs.dtype == np.uint8
        np.testing.assert_array_equal(ru, eu)
        np.testing.assert_array_equal(rs, es)
    with open(tmp_path / "store" / "tiles.csv", newline="") as fh:
        assert tuple(next(csv.reader(fh))) == TILE_COLUMNS


def test_fast_chunk_reader_equals_zarr_reads(tmp_path):
    _store(tmp_path, 6)
    back = TileStore.open(tmp_path / "store")
    back.read(0)
    assert all(f is not None for f in back._fast), "the fast path should serve this store's own arrays"
    for i in range(len(back)):
        ru, rs = back.read(i)
        np.testing.assert_array_equal(ru, np.asarray(back.unstained[i]))
        np.testing.assert_array_equal(rs, np.asarray(back.stained[i]))
        assert ru.dtype == np.uint16 and ru.dtype.isnative and ru.shape == (TILE, TILE, 2) and ru.flags.c_contiguous


def test_zero_tiles_read_back_as_zeros(tmp_path):
    """zarr skips all-fill chunks when writing; the fast reader must then return the fill value."""
    store = TileStore.create(tmp_path / "store", tile_px=TILE, channels_in=2, dtype_in="uint16")
    u, s = _tiles(2)
    u[1] = 0
    s[1] = 0
    store.append(u, s, _rows(2))
    ru, rs = TileStore.open(tmp_path / "store").read(1)
    assert not ru.any() and not rs.any() and ru.shape == (TILE, TILE, 2)


def test_read_past_the_end_is_an_error(tmp_path):
    store, _, _ = _store(tmp_path, 5)
    store.truncate(3)
    with pytest.raises(IndexError, match="tile 3 out of range"):
        store.read(3)  # the stale chunk file of the dropped tile 3 is still on disk
    with pytest.raises(IndexError):
        TileStore.open(tmp_path / "store").read(-1)


def test_append_checks_counts_and_read_only(tmp_path):
    store, u, s = _store(tmp_path, 2)
    with pytest.raises(ValueError, match="2/2 tiles for 3 rows"):
        store.append(u, s, _rows(3))
    store.append(u[:0], s[:0], [])  # nothing to do
    assert len(TileStore.open(tmp_path / "store")) == 2
    reader = TileStore.open(tmp_path / "store")
    with pytest.raises(InputError, match="read-only"):
        reader.append(u, s, _rows(2))
    with pytest.raises(InputError, match="read-only"):
        reader.truncate(0)


# ---------------------------------------------------------------------------------------------
# Interrupted writes
# ---------------------------------------------------------------------------------------------
def test_interrupted_append_is_dropped_when_reopened_for_writing(tmp_path):
    store, u, _ = _store(tmp_path, 3)
    # What a run killed between writing the arrays and committing the CSV rows leaves behind:
    extra_u, extra_s = _tiles(2, seed=7)
    for arr, data in ((store.unstained, extra_u), (store.stained, extra_s)):
        arr.resize((5, *arr.shape[1:]))
        arr[3:5] = data
    reader = TileStore.open(tmp_path / "store")  # readers see the committed rows only
    assert len(reader) == 3 and reader.unstained.shape[0] == 5
    again = TileStore.create(tmp_path / "store", tile_px=TILE, channels_in=2, dtype_in="uint16")
    assert len(again) == 3 and again.unstained.shape[0] == 3 and again.stained.shape[0] == 3
    new_u, new_s = _tiles(1, seed=9)
    again.append(new_u, new_s, _rows(1, start=3, core="C3"))
    back = TileStore.open(tmp_path / "store")
    assert len(back) == 4 and back.rows[3].core == "C3"
    np.testing.assert_array_equal(back.read(3)[0], new_u[0])
    np.testing.assert_array_equal(back.read(2)[0], u[2])


def test_truncate_keeps_a_prefix_and_appending_continues(tmp_path):
    store, u, s = _store(tmp_path, 5)
    store.truncate(2)
    assert len(store) == 2 and store.unstained.shape[0] == 2 and store.stained.shape[0] == 2
    zeros_u, zeros_s = np.zeros_like(u[:2]), np.zeros_like(s[:2])  # all fill value: zarr writes no chunk
    store.append(zeros_u, zeros_s, _rows(2, start=2, core="B1"))
    back = TileStore.open(tmp_path / "store")
    assert [r.core for r in back.rows] == ["A1", "A1", "B1", "B1"]
    assert len(read_tile_rows(tmp_path / "store" / "tiles.csv")) == 4
    np.testing.assert_array_equal(back.read(1)[0], u[1])
    for i in (2, 3):  # not the old tiles 2 and 3, whose chunk files the shrink left on disk
        assert not back.read(i)[0].any() and not back.read(i)[1].any()
        assert not np.asarray(back.unstained[i]).any()
    store.truncate(0)
    assert len(TileStore.open(tmp_path / "store")) == 0


def test_csv_rows_beyond_the_arrays_are_refused_for_reading(tmp_path):
    store, _, _ = _store(tmp_path, 3)
    store.unstained.resize((2, TILE, TILE, 2))
    with pytest.raises(InputError, match=r"lists 3 tiles but tiles.zarr holds 2.*rerun `stainldm prepare`"):
        TileStore.open(tmp_path / "store")


# ---------------------------------------------------------------------------------------------
# Bad stores and arguments
# ---------------------------------------------------------------------------------------------
def test_a_folder_that_is_not_a_store_is_an_input_error(tmp_path):
    (tmp_path / "tiles.csv").write_text(",".join(TILE_COLUMNS) + "\n")
    with pytest.raises(InputError, match=r"not a tile store \(needs tiles.zarr and tiles.csv\)") as exc:
        TileStore.open(tmp_path)
    assert str(tmp_path) in str(exc.value)
    with pytest.raises(InputError, match="not a tile store"):
        TileStore.open(tmp_path / "missing")


def test_reuse_with_another_tile_size_channel_count_or_dtype_is_refused(tmp_path):
    _store(tmp_path, 2)
    root = tmp_path / "store"
    with pytest.raises(InputError, match="holds tiles of 16 px, 2 channels, uint16; this run makes 32 px"):
        TileStore.create(root, tile_px=32, channels_in=2, dtype_in="uint16")
    with pytest.raises(InputError, match="3 channels"):
        TileStore.create(root, tile_px=TILE, channels_in=3, dtype_in="uint16")
    with pytest.raises(InputError, match="uint8 — use a new folder for this store"):
        TileStore.create(root, tile_px=TILE, channels_in=2, dtype_in="uint8")
    assert len(TileStore.open(root)) == 2  # left as it was


def test_a_store_that_cannot_be_written_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write the tile store there") as exc:
        TileStore.create(blocker / "store", tile_px=TILE, channels_in=1, dtype_in="uint8")
    assert str(blocker / "store") in str(exc.value)


def test_indices_by_split_and_split_errors(tmp_path):
    store = TileStore.create(tmp_path / "store", tile_px=TILE, channels_in=1, dtype_in="uint8")
    u, s = _tiles(5, channels=1, dtype=np.uint8)
    store.append(u, s, _rows(3, split="train") + _rows(2, start=3, core="B1", split="test"))
    assert store.indices().tolist() == [0, 1, 2, 3, 4]
    assert store.indices("train").tolist() == [0, 1, 2] and store.indices("test").tolist() == [3, 4]
    assert store.indices("test").dtype == np.int64
    with pytest.raises(InputError, match="unknown split 'training'; use one of train, val, test"):
        store.indices("training")
    with pytest.raises(InputError, match=r"no tiles in split 'val' \(store has .*'train': 3.*'test': 2"):
        store.indices("val")


def test_malformed_tiles_csv_row_names_the_line(tmp_path):
    _store(tmp_path, 3)
    path = tmp_path / "store" / "tiles.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",10,20,", ",ten,20,")  # the second tile's x
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"tiles.csv:3: malformed row") as exc:
        TileStore.open(tmp_path / "store")
    assert "ten" in str(exc.value)
    lines[2] = "s1,A1,train,10"  # too few fields
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"tiles.csv:3: malformed row"):
        read_tile_rows(path)
    path.write_text("slide,core\n")
    with pytest.raises(InputError, match="expected the header slide_id,core,split"):
        read_tile_rows(path)


# ---------------------------------------------------------------------------------------------
# Placing tiles into another store's arrays (what a merge of store parts does)
# ---------------------------------------------------------------------------------------------
def test_place_tiles_links_chunk_files_and_keeps_the_ones_already_placed(tmp_path):
    src, u, s = _store(tmp_path, 4)
    u[2], s[2] = 0, 0  # an all-fill tile: zarr keeps no chunk file for it
    src.truncate(2)
    src.append(u[2:], s[2:], _rows(2, start=2))
    dst = tmp_path / "merged"
    create_tile_arrays(dst / "tiles.zarr", tile_px=TILE, channels_in=2, dtype_in="uint16", n=3)
    assert place_tiles(src, dst, [(3, 0), (2, 1)]) == {"linked": 2, "copied": 0, "recoded": 0}
    assert place_tiles(src, dst, [(3, 0), (2, 1), (0, 2)]) == {"linked": 2, "copied": 0, "recoded": 0}  # resumed
    atomic_write_csv(dst / "tiles.csv", [TILE_COLUMNS, *(r.as_csv() for r in _rows(3))])
    back = TileStore.open(dst)
    for j, i in enumerate((3, 2, 0)):
        np.testing.assert_array_equal(back.read(j)[0], u[i])
        np.testing.assert_array_equal(back.read(j)[1], s[i])
    chunk = dst / "tiles.zarr" / "stained" / "c" / "0" / "0" / "0" / "0"
    assert chunk.stat().st_ino == (src.root / "tiles.zarr" / "stained" / "c" / "3" / "0" / "0" / "0").stat().st_ino
    # the source store goes on (a shard rerun): its writes replace files, never the merged store's bytes
    src.truncate(3)
    src.append(u[:1] + 1, s[:1] + 1, _rows(1, start=3))
    np.testing.assert_array_equal(TileStore.open(dst).read(0)[1], s[3])


def test_a_store_with_an_unfinished_merge_or_only_parts_does_not_open(tmp_path):
    _store(tmp_path, 2)
    root = tmp_path / "store"
    (root / "merge.json").write_text('{"status": "merging"}')
    with pytest.raises(InputError, match=r"store: holds an unfinished merge of store parts \(interrupted, or still "
                                         r"running\); rerun `stainldm merge-stores .*store` to finish it"):
        TileStore.open(root)
    (root / "merge.json").write_text('{"status": "done"}')
    assert len(TileStore.open(root)) == 2
    (tmp_path / "sharded" / "parts" / "shard-1-of-2").mkdir(parents=True)
    with pytest.raises(InputError, match=r"sharded: holds the parts of a sharded prepare .* but no merged store yet"):
        TileStore.open(tmp_path / "sharded")


def test_the_store_records_channel_names_and_refuses_others(tmp_path):
    store = TileStore.create(tmp_path / "s", tile_px=16, channels_in=2, dtype_in="uint16",
                             channel_names=["DAPI", "FITC"])
    assert store.channel_names == ("DAPI", "FITC")
    assert TileStore.create(tmp_path / "s", tile_px=16, channels_in=2, dtype_in="uint16",
                            channel_names=("DAPI", "FITC")).channel_names == ("DAPI", "FITC")
    with pytest.raises(InputError, match=r"s: holds channels DAPI, FITC, this slide gives FITC, DAPI; choose them "
                                         r"by name with `channels`"):
        TileStore.create(tmp_path / "s", tile_px=16, channels_in=2, dtype_in="uint16", channel_names=["FITC", "DAPI"])
    assert TileStore.create(tmp_path / "old", tile_px=16, channels_in=1, dtype_in="uint8").channel_names is None
