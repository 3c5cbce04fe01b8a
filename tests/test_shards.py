"""stainldm.shards: ``i/n`` and the launchers' rank variables, and which items a shard takes."""

from __future__ import annotations

import pytest

from stainldm.errors import InputError
from stainldm.shards import parse_shard, shard_items


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("1/2", {}, (0, 2)),
    ("2/2", {"RANK": "0", "WORLD_SIZE": "2"}, (1, 2)),  # --shard wins over the environment
    ("1/1", {}, (0, 1)),
    (None, {"RANK": "3", "WORLD_SIZE": "4"}, (3, 4)),  # torchrun
    (None, {"SLURM_PROCID": "2", "SLURM_NTASKS": "3"}, (2, 3)),  # srun
    (None, {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (1, 2)),  # torchrun in SLURM
    (None, {"RANK": "1"}, (0, 1)),  # half a pair is no sharding
    (None, {}, (0, 1)),
])
def test_parse_shard(text, env, expected):
    assert parse_shard(text, env) == expected


def test_parse_shard_reads_the_process_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "4")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert parse_shard(None) == (4, 8)


@pytest.mark.parametrize("text", ["3/2", "0/2", "1/0", "2", "a/b", "1/2/3", "-1/2"])
def test_parse_shard_refuses_bad_specs(text):
    with pytest.raises(InputError, match=f"`shard` {text}: "):
        parse_shard(text, {})


@pytest.mark.parametrize("env", [{"RANK": "2", "WORLD_SIZE": "2"}, {"SLURM_PROCID": "x", "SLURM_NTASKS": "2"}])
def test_parse_shard_refuses_rank_variables_out_of_range(env):
    with pytest.raises(InputError, match="RANK|SLURM"):
        parse_shard(None, env)


def test_parse_shard_names_the_argument_in_the_environment_branch():
    with pytest.raises(InputError, match=r"not integers; fix the launcher's environment or pass `shard` i/n"):
        parse_shard(None, {"RANK": "x", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("count", [1, 2, 3, 5, 12, 13])
def test_shards_are_disjoint_cover_the_list_and_are_balanced(count):
    items = [f"slide{k:02d}" for k in range(12)]
    parts = [shard_items(items, (i, count)) for i in range(count)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [shard_items(items, (i, count)) for i in range(count)]  # deterministic


def test_a_shard_takes_rows_i_i_plus_n_and_keeps_them_when_rows_are_appended():
    items = ["a", "b", "c", "d", "e"]
    assert shard_items(items, (0, 2)) == ["a", "c", "e"] and shard_items(items, (1, 2)) == ["b", "d"]
    more = [*items, "f", "g"]
    for i in range(3):
        before, after = shard_items(items, (i, 3)), shard_items(more, (i, 3))
        assert after[: len(before)] == before
    assert shard_items(items, (4, 8)) == ["e"] and shard_items(items, (5, 8)) == []


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0)])
def test_shard_items_refuses_a_shard_out_of_range(shard):
    with pytest.raises(InputError, match=r"`shard` .*: needs 0 ≤ index < count"):
        shard_items(["a"], shard)
