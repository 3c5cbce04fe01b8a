from __future__ import annotations

from stainldm.seeds import Stream, derive_seed


def test_seeds_are_reproducible_within_range_and_distinct_across_streams_keys_and_runs():
    assert derive_seed(0, Stream.CANVAS, 3) == derive_seed(0, Stream.CANVAS, 3)
    seeds = {derive_seed(s, stream, k) for s in range(4) for stream in Stream for k in range(50)}
    assert len(seeds) == 4 * len(Stream) * 50  # no collisions where ad-hoc arithmetic had them
    assert all(0 <= v < 2**63 for v in seeds)
    assert all(0 <= derive_seed(s, Stream.AUGMENT, 9, bits=31) < 2**31 for s in range(100))


def test_streams_that_ad_hoc_arithmetic_made_collide_get_distinct_seeds():
    # seed * 997 + k gave seed 1's window grid 997 the seed of seed 2's grid 0
    assert derive_seed(1, Stream.JITTER, 997) != derive_seed(2, Stream.JITTER, 0)
    # a stream's seeds are not another stream's
    assert derive_seed(0, Stream.CANVAS, 1) != derive_seed(0, Stream.SAMPLE, 1)
