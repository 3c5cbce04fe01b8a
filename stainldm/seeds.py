"""Every random draw's seed, derived one way from the run's seed: numpy's ``SeedSequence``.

A run has one seed (``train.seed``, ``stain --seed``, ``make-sample seed``). Each independent stream of
draws (a canvas's noise, a training step's generator, a tile's augmentation) gets its own seed from
``SeedSequence(seed, spawn_key=(stream, *keys))``: well-mixed, independent of one another, and the same
on every machine and rank. Ad-hoc arithmetic (``seed * 997 + k``) collides between streams and runs
(seed 1's canvas 997 is seed 2's canvas 0); spawn keys do not.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """What a derived seed is for: the first spawn key, so two streams never share a seed."""

    CANVAS = 1  # a latent canvas's initial noise (staining), per canvas
    SAMPLE = 2  # one of K samples of a canvas (staining)
    JITTER = 3  # a window grid's random offsets (staining), per network call
    TRAIN_STEP = 4  # a training micro-batch's generator (noise, timesteps, dropout), per rank
    AUGMENT = 5  # one tile's paired augmentation, per epoch
    EPOCH = 6  # an epoch's tile order
    WORKER = 7  # a data-loader worker's augmentation state, per worker
    AXIS = 8  # one axis (y 0, x 1) of a jittered window grid
    VALIDATION = 9  # the validation samples' generator (the same at every validation)


def derive_seed(seed: int, stream: Stream, *keys: int, bits: int = 63) -> int:
    """The seed of one stream of draws under the run's ``seed``.

    Args:
        seed: the run's seed (a non-negative integer).
        stream: what the draws are for.
        keys: the stream's indices (canvas number, step, rank, ...), non-negative integers.
        bits: size of the result: 63 for ``torch.Generator.manual_seed``, 31 for libraries that take an
            int32 (albumentations, ``random``).

    Returns:
        An integer in ``[0, 2**bits)``.
    """
    words = np.random.SeedSequence(int(seed), spawn_key=(int(stream), *(int(k) for k in keys))).generate_state(
        2, np.uint32)
    return (int(words[0]) << 32 | int(words[1])) & ((1 << bits) - 1)
