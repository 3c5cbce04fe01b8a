"""Shards of a batch: which share of a list of work items this process takes.

    index, count = parse_shard("2/8")          # or None: torchrun's / SLURM's rank variables
    mine = shard_items(pairs, (index, count))   # items 1, 9, 17, ... of the list (0-based)

``stain`` shards slides and ``prepare`` shards slide pairs this way, so one launcher line (a SLURM
array, ``srun``, ``torchrun``) spreads either over processes and machines without a scheduler.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

from stainldm.errors import InputError

T = TypeVar("T")


def parse_shard(text: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Which share of a batch this process takes.

    Args:
        text: ``i/n`` (shard ``i`` of ``n``, 1-based), or None to read the launcher's variables.
        env: the environment (default ``os.environ``): torchrun's ``RANK``/``WORLD_SIZE``, else
            SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``.

    Returns:
        ``(index, count)``, 0-based; ``(0, 1)`` when neither ``text`` nor the variables say.

    Raises:
        InputError: ``text`` is not ``i/n`` with 1 ≤ i ≤ n, or the variables are out of range.
    """
    env = os.environ if env is None else env
    if text:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError as exc:
            raise InputError(f"`shard` {text}: expected i/n, e.g. `shard` 1/4") from exc
        if not (n >= 1 and 1 <= i <= n):
            raise InputError(f"`shard` {text}: i must be between 1 and n (n ≥ 1)")
        return i - 1, n
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank in env and world in env:
            try:
                index, count = int(env[rank]), int(env[world])
            except ValueError as exc:
                raise InputError(f"{rank}={env[rank]!r}, {world}={env[world]!r}: not integers; fix the launcher's "
                                 "environment or pass `shard` i/n") from exc
            if not (count >= 1 and 0 <= index < count):
                raise InputError(f"{rank}={index}, {world}={count}: the rank must be between 0 and {world} - 1; "
                                 "fix the launcher's environment or pass `shard` i/n")
            return index, count
    return 0, 1


def shard_items(items: Sequence[T], shard: tuple[int, int]) -> list[T]:
    """The items shard ``(index, count)`` (0-based, as :func:`parse_shard` returns) takes: item ``k``
    of the list goes to shard ``k mod count``.

    Deterministic from the list's order alone (for ``prepare``, the order of ``pairs.csv``): shards
    are disjoint, together cover the list, differ in size by at most one, and keep their items when
    items are appended to the end of the list.

    Raises:
        InputError: ``shard`` is not ``(index, count)`` with ``0 ≤ index < count``.
    """
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise InputError(f"`shard` ({index}, {count}): needs 0 ≤ index < count (0-based, as parse_shard returns)")
    return [item for k, item in enumerate(items) if k % count == index]
