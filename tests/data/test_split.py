"""Train/val/test assignment by core: deterministic, honours truth and explicit lists, bad configs fail."""

from __future__ import annotations

import pytest

from stainldm.data.split import SplitConfig, assign_splits
from stainldm.errors import ConfigError

KEYS = [f"s{s}:{r}{c}" for s in (1, 2) for r in "ABCD" for c in range(1, 6)]  # 40 cores on two slides


def test_every_core_gets_one_split_in_the_configured_proportions():
    out = assign_splits(KEYS, SplitConfig(val=0.15, test=0.25, seed=3))
    assert sorted(out) == sorted(KEYS)
    assert set(out.values()) == {"train", "val", "test"}
    counts = {s: sum(v == s for v in out.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 24, "val": 6, "test": 10}


def test_the_same_seed_gives_the_same_split_whatever_the_key_order():
    cfg = SplitConfig(seed=7)
    first = assign_splits(KEYS, cfg)
    assert assign_splits(list(reversed(KEYS)), cfg) == first
    assert assign_splits(KEYS, SplitConfig(seed=8)) != first


def test_small_sets_still_fill_every_split():
    out = assign_splits(["s:A1", "s:A2", "s:A3"], SplitConfig(val=0.1, test=0.1))
    assert sorted(out.values()) == ["test", "train", "val"]
    assert set(assign_splits(["s:A1", "s:A2", "s:A3"], SplitConfig(val=0.0, test=0.1)).values()) == {"train", "test"}
    assert assign_splits(["s:A1"], SplitConfig()) == {"s:A1": "train"}
    assert assign_splits([], SplitConfig()) == {}


def test_truth_train_test_is_honoured_and_val_is_carved_from_train():
    given = {k: ("test" if k.endswith(("A1", "B2", "C3")) else "train") for k in KEYS}
    out = assign_splits(KEYS, SplitConfig(val=0.15, seed=1), given=given)
    assert {k for k, v in out.items() if v == "test"} == {k for k, v in given.items() if v == "test"}
    val = {k for k, v in out.items() if v == "val"}
    assert len(val) == round(0.15 * 34) and all(given[k] == "train" for k in val)
    # cores the truth does not know (e.g. a second slide without truth) train
    extra = assign_splits([*KEYS, "other:A1"], SplitConfig(val=0.15, seed=1), given=given)
    assert extra["other:A1"] == "train"
    # too few truth train cores to spare one for validation
    small = {"s:A1": "train", "s:A2": "train", "s:B1": "test"}
    assert assign_splits(list(small), SplitConfig(val=0.3), given=small) == small


def test_explicit_lists_override_the_draw_and_bare_ids_match_every_slide():
    cfg = SplitConfig(seed=0, test_cores=("A1", "s2:B2"), val_cores=("s1:C3",), train=("D5",))
    out = assign_splits(KEYS, cfg)
    assert out["s1:A1"] == out["s2:A1"] == "test" and out["s2:B2"] == "test"
    assert out["s1:C3"] == "val"
    assert out["s1:D5"] == out["s2:D5"] == "train"
    # explicit lists also win over truth
    given = {k: "test" for k in KEYS}
    assert assign_splits(KEYS, SplitConfig(train=("A1",)), given=given)["s1:A1"] == "train"


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.1, 1.0), (0.5, 0.5), (1.2, 0.0)])
def test_bad_fractions_are_config_errors(val, test):
    with pytest.raises(ConfigError, match=r"split.val .* and split.test .* must be in \[0, 1\) and sum below 1"):
        assign_splits(KEYS, SplitConfig(val=val, test=test))


def test_a_core_in_two_lists_is_a_config_error():
    with pytest.raises(ConfigError, match="core 's1:A1' is listed in both train and test"):
        assign_splits(KEYS, SplitConfig(train=("s1:A1",), test_cores=("s1:A1",)))


def test_a_bare_and_a_qualified_name_of_one_core_in_two_lists_is_a_config_error():
    with pytest.raises(ConfigError, match=r"core 's1:A1' is listed in both train \(as 'A1'\) and test"):
        assign_splits(KEYS, SplitConfig(train=("A1",), test_cores=("s1:A1",)))
