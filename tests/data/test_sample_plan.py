"""Source planning: the tissue mask, candidate disc centres, the train/test cut and spread picks."""

from __future__ import annotations

import numpy as np
import pytest

from stainldm.data.sample_plan import (
    SamplingConfig,
    choose_split,
    disc_centres,
    greedy_pack,
    pick_spread,
    thumbnail_tissue,
)
from stainldm.errors import ConfigError
from stainldm.wsi.tissue import he_fixed_threshold_mask

GLASS = (244, 243, 246)
PINK = (220, 140, 190)


def _thumb(h: int = 60, w: int = 100) -> np.ndarray:
    thumb = np.empty((h, w, 3), np.uint8)
    thumb[:] = GLASS
    thumb[10:50, 10:90] = PINK
    return thumb


def test_he_fixed_threshold_mask_is_per_pixel():
    thumb = _thumb()
    mask = he_fixed_threshold_mask(thumb)
    assert mask[30, 50] and not mask[2, 2]
    assert mask.sum() == 40 * 80
    # A pixel's answer does not depend on its neighbours (unlike tissue_mask's Otsu and clean-up).
    np.testing.assert_array_equal(he_fixed_threshold_mask(thumb[5:25, 5:25]), mask[5:25, 5:25])
    dark_gray = np.full((1, 1, 3), 150, np.uint8)  # unsaturated but dense: OD 3 × 0.53
    assert he_fixed_threshold_mask(dark_gray).all()


def test_thumbnail_tissue_closes_the_mask_and_measures_the_glass():
    thumb = _thumb()
    thumb[30, 50] = GLASS  # a one-pixel hole inside tissue
    mask, glass = thumbnail_tissue(thumb)
    assert mask[30, 50] and glass == GLASS
    _, default = thumbnail_tissue(np.full((8, 8, 3), PINK, np.uint8))  # no glass to measure
    assert default == (242, 242, 242)


def test_disc_centres_are_mostly_tissue_and_inside_the_source():
    mask = np.zeros((60, 100), bool)
    mask[10:50, 10:90] = True
    pts = disc_centres(mask, cell_xy=(4.0, 4.0), radius_px=20.0, dimensions=(400, 240), min_tissue_fraction=0.99)
    assert len(pts) > 0
    assert (pts[:, 0] >= 40 + 20).all() and (pts[:, 0] <= 360 - 20).all()  # whole disc on tissue
    assert (pts[:, 1] >= 40 + 20).all() and (pts[:, 1] <= 200 - 20).all()
    assert np.all(np.diff(pts[:, 1]) >= 0)  # raster order
    loose = disc_centres(mask, cell_xy=(4.0, 4.0), radius_px=20.0, dimensions=(400, 240), min_tissue_fraction=0.3)
    assert len(loose) > len(pts)


def test_greedy_pack_keeps_order_and_spacing():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.5, 0.0], [10.0, 0.0]])
    np.testing.assert_array_equal(greedy_pack(pts, 2.0, 5), [[0, 0], [3, 0], [10, 0]])
    np.testing.assert_array_equal(greedy_pack(pts, 2.0, 2), [[0, 0], [3, 0]])
    assert greedy_pack(pts[:0], 2.0, 3).shape == (0, 2)


def test_pick_spread_draws_spaced_points_reproducibly():
    pts = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), axis=-1).reshape(-1, 2)
    picked = pick_spread(pts, 4, 5.0, np.random.default_rng(0))
    assert picked.shape == (4, 2)
    d = np.hypot(*(picked[:, None] - picked[None]).transpose(2, 0, 1))
    assert d[~np.eye(4, dtype=bool)].min() >= 5.0
    np.testing.assert_array_equal(picked, pick_spread(pts, 4, 5.0, np.random.default_rng(0)))
    # Tight packing: the random tries fail and the greedy fallback still finds them.
    line = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert sorted(pick_spread(line, 2, 2.0, np.random.default_rng(1))[:, 0]) == [0.0, 2.0]


def test_choose_split_leaves_the_test_part_small_and_the_train_part_large():
    xs = np.arange(0.0, 200.0, 2.0)
    pts = np.column_stack([xs, np.full_like(xs, 50.0)])  # a horizontal strip of candidates
    mask_xy = (np.repeat(xs, 3), np.tile([49.0, 50.0, 51.0], len(xs)))
    axis, side, cut = choose_split(pts, mask_xy, radius_px=5.0, n_test=1, d_test=10.0, n_train=3, d_train=10.0)
    assert axis == 0  # along y every point has the same coordinate: no room to cut
    line = cut if side == "low" else -cut
    test_side = pts[:, 0] + 5 <= line if side == "low" else pts[:, 0] - 5 >= line
    assert test_side.sum() >= 1 and test_side.sum() <= 2  # just enough for the one test disc
    assert choose_split(pts, mask_xy, radius_px=5.0, n_test=1, d_test=10.0, n_train=50, d_train=10.0) is None


def test_sampling_config_refuses_out_of_range_values():
    with pytest.raises(ConfigError, match="sampling.min_tissue_fraction"):
        SamplingConfig(min_tissue_fraction=0)
    with pytest.raises(ConfigError, match="must not be negative"):
        SamplingConfig(test_min_distance=-1)
    with pytest.raises(ConfigError, match="sampling.mask_mpp"):
        SamplingConfig(mask_mpp=0)
