"""Train/val/test assignment by core: a core's tiles never straddle two splits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stainldm.errors import ConfigError


@dataclass(frozen=True)
class SplitConfig:
    """How cores are split.

    Attributes:
        val, test: fractions of cores (by count) for validation and test; the rest train.
        seed: seed of the random assignment.
        train, val_cores, test_cores: explicit core keys (``slide_id:core``, or a bare core id
            for every slide) that override the random draw.
    """

    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    train: tuple[str, ...] = ()
    val_cores: tuple[str, ...] = ()
    test_cores: tuple[str, ...] = ()


def assign_splits(keys: Sequence[str], cfg: SplitConfig, *, given: Mapping[str, str] | None = None) -> dict[str, str]:
    """Assigns every core key (``slide_id:core``) to train, val or test.

    Priority: explicit lists in ``cfg``, then ``given`` (e.g. a sample's truth.json, which only
    says train/test: validation cores are then drawn from its train cores), then a seeded draw
    with the configured fractions. Deterministic for a seed and key set.

    Raises:
        ConfigError: fractions out of range, or a core named in two explicit lists.
    """
    if not (0 <= cfg.val < 1 and 0 <= cfg.test < 1 and cfg.val + cfg.test < 1):
        raise ConfigError(f"split.val ({cfg.val}) and split.test ({cfg.test}) must be in [0, 1) and sum below 1")
    explicit: dict[str, str] = {}
    for split, names in (("train", cfg.train), ("val", cfg.val_cores), ("test", cfg.test_cores)):
        for name in names:
            if name in explicit and explicit[name] != split:
                raise ConfigError(f"split: core '{name}' is listed in both {explicit[name]} and {split}")
            explicit[name] = split

    def lookup(key: str) -> str | None:
        bare = key.split(":", 1)[-1]
        a, b = explicit.get(key), explicit.get(bare)
        if a and b and a != b:
            raise ConfigError(f"split: core '{key}' is listed in both {b} (as '{bare}') and {a} (as '{key}')")
        return a or b

    out: dict[str, str] = {}
    rng = np.random.default_rng(cfg.seed)
    free = []
    for key in sorted(keys):
        split = lookup(key) or (given or {}).get(key)
        if split is not None:
            out[key] = split
        else:
            free.append(key)
    order = [free[i] for i in rng.permutation(len(free))]
    n = len(order)
    if given and not explicit:
        # truth.json gives train/test: carve validation cores out of its train cores.
        train_keys = sorted(k for k, s in out.items() if s == "train")
        n_val = round(cfg.val * (len(train_keys) + n)) if len(train_keys) >= 3 else 0
        for key in [train_keys[i] for i in rng.permutation(len(train_keys))][:n_val]:
            out[key] = "val"
        for key in order:
            out[key] = "train"
        return out
    n_test = round(cfg.test * n)
    n_val = round(cfg.val * n)
    if n >= 3:  # with three or more cores every split gets at least one when its fraction is > 0
        n_test = max(n_test, 1 if cfg.test > 0 else 0)
        n_val = max(n_val, 1 if cfg.val > 0 else 0)
    for i, key in enumerate(order):
        out[key] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out
