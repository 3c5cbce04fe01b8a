"""``stainldm prepare --shard`` + ``stainldm merge-stores``: a pairs.csv prepared in two shards (one
through ``--shard``, one through torchrun's rank variables), merged, is the store an unsharded
prepare of the same pairs writes; resume, reruns and the one-line errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from stainldm.data import merge as merge_mod
from stainldm.data.dataset import PairedTileDataset
from stainldm.data.store import TileStore
from stainldm.errors import InputError
from stainldm.wsi.writer import write_pyramid

TILES = ["--set", "tiles.size=64", "--set", "tiles.stride=64"]  # as the small_store fixture


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
            mp.delenv(name, raising=False)
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def pairs_csv(small_af_pair, tmp_path_factory) -> Path:
    """Three pairs: ``af`` and ``af2`` (the make-sample pair twice, with its truth) and ``empty`` (a
    dark slide: fails with no tissue). Shard 1/2 takes af and empty, shard 2/2 af2."""
    folder = tmp_path_factory.mktemp("sharded_pairs")
    dark = np.random.default_rng(0).normal(100, 3, size=(600, 800, 2)).astype(np.uint16)
    write_pyramid(folder / "empty.tiff", dark, mpp=0.5)
    u, s, t = (small_af_pair / n for n in ("unstained.tiff", "stained.tiff", "truth.json"))
    (folder / "pairs.csv").write_text(f"slide_id,unstained,stained,truth\naf,{u},{s},{t}\naf2,{u},{s},{t}\n"
                                      f"empty,empty.tiff,{s},\n")
    return folder / "pairs.csv"


@pytest.fixture(scope="module")
def sharded(pairs_csv) -> dict:
    """Shard 1/2 by ``--shard``, shard 2/2 by RANK/WORLD_SIZE, each its own ``stainldm prepare`` call."""
    store = pairs_csv.parent / "store"
    args = ["prepare", "--pairs", str(pairs_csv), "--out", str(store), "--quiet", *TILES]
    first = _run(*args, "--shard", "1/2")
    second = _run(*args, env={"RANK": "1", "WORLD_SIZE": "2"})
    return {"store": store, "first": first, "second": second}


@pytest.fixture(scope="module")
def merged(sharded, tmp_path_factory) -> dict:
    """The shards merged by ``stainldm merge-stores`` (into a copy: the module's tests share it)."""
    store = tmp_path_factory.mktemp("merged") / "store"
    shutil.copytree(sharded["store"], store)
    rc, out, err = _run("merge-stores", str(store), "--quiet")
    return {"store": store, "rc": rc, "out": out, "err": err}


@pytest.fixture(scope="module")
def unsharded(pairs_csv) -> Path:
    store = pairs_csv.parent / "unsharded"
    rc, _, _ = _run("prepare", "--pairs", str(pairs_csv), "--out", str(store), "--quiet", *TILES)
    assert rc == 1  # `empty` has no tissue
    return store


def test_each_shard_writes_a_store_of_its_own_under_parts(sharded):
    store = sharded["store"]
    assert sorted(p.name for p in store.iterdir()) == ["parts"]  # nothing outside the parts before the merge
    one, two = store / "parts" / "shard-1-of-2", store / "parts" / "shard-2-of-2"
    assert {r["slide_id"]: r["status"] for r in _csv(one / "pairs.csv")} == {"af": "done", "empty": "failed"}
    assert {r["slide_id"]: r["status"] for r in _csv(two / "pairs.csv")} == {"af2": "done"}
    assert {r.slide_id for r in TileStore.open(two).rows} == {"af2"}
    rc, out, err = sharded["first"]
    assert rc == 1 and "error: empty: " in err and "1 of 2 pairs failed (see " + str(one / "pairs.csv") in err
    assert f"shard 1/2: 2 of the 3 pairs in {one}; once every shard is done: stainldm merge-stores {store}" in out
    rc, out, _ = sharded["second"]
    assert rc == 0 and "shard 2/2: 1 of the 3 pairs" in out  # from RANK=1, WORLD_SIZE=2
    assert json.loads((two / "shard.json").read_text())["status"] == "finished"


def test_the_merged_store_is_the_unsharded_store(merged, unsharded):
    store = merged["store"]
    assert merged["rc"] == 0, merged["err"]
    assert f"{store}: " in merged["out"] and "merged 2 parts: " in merged["out"]
    assert "warning: 1 pairs failed in their shards and have no tiles (empty;" in merged["err"]
    a, b = TileStore.open(store), TileStore.open(unsharded)
    assert len(a) == len(b) > 200 and {r.slide_id for r in a.rows} == {"af", "af2"}
    assert a.rows == b.rows  # same tiles, same order, same splits, same similarities
    np.testing.assert_array_equal(a.unstained[:], b.unstained[:])
    np.testing.assert_array_equal(a.stained[:], b.stained[:])
    for name in ("registration.csv", "cores.csv", "cores.geojson", "prepare.yaml", "slides/af2/registration.json"):
        assert (store / name).read_bytes() == (unsharded / name).read_bytes(), name
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in _csv(store / "pairs.csv")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in _csv(unsharded / "pairs.csv")]
    assert f"{len(a)} tiles; chunk files hard-linked {2 * len(a)}, copied 0, re-encoded 0" in merged["out"]


def test_the_merged_store_trains_and_a_rerun_does_nothing(merged):
    store = merged["store"]
    items = PairedTileDataset(store, split="train")
    item = items[len(items) - 1]
    assert item["unstained"].shape == (2, 64, 64) and item["stained"].shape == (3, 64, 64)
    before = (store / "tiles.csv").read_bytes()
    rc, out, _ = _run("merge-stores", str(store), "--quiet")
    assert rc == 0 and "already merged from these 2 parts; nothing to do" in out
    assert (store / "tiles.csv").read_bytes() == before


def test_rerunning_a_shard_skips_its_done_pairs_and_the_merge_stays(merged, pairs_csv, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(merged["store"], store)
    part = store / "parts" / "shard-2-of-2"
    before = {n: (part / n).read_bytes() for n in ("tiles.csv", "pairs.csv", "shard.json")}
    rc, _, _ = _run("prepare", "--pairs", str(pairs_csv), "--out", str(store), "--shard", "2/2", "--quiet", *TILES)
    assert rc == 0
    assert {n: (part / n).read_bytes() for n in before} == before  # af2 skipped, nothing redone
    rc, out, _ = _run("merge-stores", str(store), "--quiet")
    assert rc == 0 and "already merged" in out


def test_an_interrupted_merge_resumes(sharded, merged, tmp_path, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(sharded["store"], store)
    place = merge_mod.place_tiles
    calls = []

    def dies_after_a_while(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return place(*args)

    monkeypatch.setattr(merge_mod, "place_tiles", dies_after_a_while)
    rc, _, err = _run("merge-stores", str(store), "--quiet")
    assert rc == 130 and "interrupted; rerun the same command to resume" in err
    monkeypatch.setattr(merge_mod, "place_tiles", place)
    with pytest.raises(InputError, match=r"unfinished merge of store parts .* rerun `stainldm merge-stores"):
        TileStore.open(store)  # so training refuses it
    rc, _, err = _run("merge-stores", str(store), "--quiet")
    assert rc == 0, err
    assert (store / "tiles.csv").read_bytes() == (merged["store"] / "tiles.csv").read_bytes()
    np.testing.assert_array_equal(TileStore.open(store).stained[:], TileStore.open(merged["store"]).stained[:])


# ---------------------------------------------------------------------------------------------
# One-line errors
# ---------------------------------------------------------------------------------------------
def test_an_unfinished_shard_or_another_store_is_a_one_line_error(sharded, merged, unsharded, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(sharded["store"], store)
    record = store / "parts" / "shard-2-of-2" / "shard.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "status": "running"}))  # as a killed shard leaves it
    rc, _, err = _run("merge-stores", str(store))
    assert rc == 2
    assert _one_error_line(err) == (f"error: {store}/parts/shard-2-of-2: unfinished part (shard 2/2 is still running, "
                                    "or was interrupted); rerun its prepare (shard 2/2) to finish it, then merge")
    rc, _, err = _run("merge-stores", str(unsharded), *(str(p) for p in sorted((merged["store"] / "parts").iterdir())))
    assert rc == 2 and "already holds a tile store that was not merged from parts" in _one_error_line(err)


@pytest.mark.parametrize(("extra", "env", "message"), [
    (["--shard", "3/2"], {}, "error: --shard 3/2: i must be between 1 and n (n ≥ 1)"),
    (["--shard", "two"], {}, "error: --shard two: expected i/n, e.g. --shard 1/4"),
    ([], {"RANK": "2", "WORLD_SIZE": "2"}, "error: RANK=2, WORLD_SIZE=2: the rank must be between 0 and "
                                           "WORLD_SIZE - 1; fix the launcher's environment or pass --shard i/n"),
])
def test_a_malformed_shard_is_a_one_line_error(pairs_csv, tmp_path, extra, env, message):
    rc, _, err = _run("prepare", "--pairs", str(pairs_csv), "--out", str(tmp_path / "o"), *extra, env=env)
    assert rc == 2 and _one_error_line(err) == message
    assert not (tmp_path / "o").exists()
