"""Canvas maths: window layouts, fusion weights, fused predictions, tiled decoding."""

from __future__ import annotations

import itertools

import pytest
import torch

from stainldm.inference.canvas import (
    axis_window,
    decode_tiled,
    evaluations_per_pixel,
    fuse_windows,
    window_grid,
    window_starts,
    window_weight,
)


@pytest.mark.parametrize("length", [33, 64, 100, 257, 1000])
@pytest.mark.parametrize("jitter", [None, 1, 2])
def test_windows_cover_the_canvas_with_the_overlap(length, jitter):
    starts = window_starts(length, window=32, overlap=4, jitter_seed=jitter)
    assert starts[0] == 0 and starts[-1] == length - 32
    assert all(b - a <= 32 - 4 for a, b in itertools.pairwise(starts))  # overlap >= 4
    assert len(starts) == len(window_starts(length, window=32, overlap=4))  # jitter keeps the count


def test_jitter_moves_the_borders():
    draws = {tuple(window_starts(300, window=32, overlap=2, jitter_seed=s)) for s in range(10)}
    assert len(draws) > 5


def test_axis_window_picks_a_multiple_with_no_more_evaluations():
    for length in (40, 88, 250, 1000, 5000):
        w = axis_window(length, window=32, overlap=2, multiple=4)
        assert w % 4 == 0 and 32 <= w <= 48
        n_best = len(window_starts(length, window=w, overlap=2)) * min(w, length)
        n_plain = len(window_starts(length, window=32, overlap=2)) * min(32, length)
        assert n_best <= n_plain


def test_overlap_cost_goal():
    """Network evaluations per latent pixel / the non-overlapping minimum ≤ 1.3 (issue 5's goal)."""
    for side in range(40, 1200, 37):
        w = axis_window(side, window=32, overlap=2, multiple=4)
        assert evaluations_per_pixel((side, side), window=(w, w), overlap=2) <= 1.3, side


def test_window_weight_is_positive_and_flat_inside():
    wt = window_weight((32, 40), overlap=6)
    assert wt.shape == (32, 40) and float(wt.min()) > 0
    assert torch.all(wt[6:-6, 6:-6] == 1)


def test_fusion_of_windows_cut_from_one_image_reproduces_it():
    img = torch.randn(1, 3, 70, 90)
    win = (32, 36)
    positions = window_grid((70, 90), window=win, overlap=5, jitter_seed=3)

    def predict(chunk):
        return torch.cat([img[:, :, y : y + win[0], x : x + win[1]] for y, x in chunk])

    out = fuse_windows(predict, positions, canvas=img, window=win, weight=window_weight(win, overlap=5), batch=4)
    torch.testing.assert_close(out, img)
    const = fuse_windows(lambda c: torch.full((len(c), 3, *win), 0.25), positions, canvas=img, window=win,
                         weight=window_weight(win, overlap=5), batch=3)
    torch.testing.assert_close(const, torch.full_like(img, 0.25))


def test_tiled_decoding_of_an_upsampler_equals_decoding_at_once():
    z = torch.randn(1, 3, 50, 70)

    def up(t):
        return torch.nn.functional.interpolate(t, scale_factor=4, mode="nearest")

    torch.testing.assert_close(decode_tiled(up, z, tile=16, overlap=4, scale=4), up(z))
