"""Latent-canvas maths (pure): window layouts, overlap cost, fusion weights, fused predictions, tiled decoding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from stainldm.inference.canvas import (
    WindowCost,
    axis_window,
    choose_window,
    decode_tiled,
    evaluations_per_pixel,
    fuse_windows,
    window_grid,
    window_starts,
    window_weight,
)

LENGTHS = [1, 31, 32, 33, 48, 49, 63, 64, 100, 117, 257, 1000, 2049]


def _covered(starts: list[int], *, window: int, length: int) -> np.ndarray:
    hits = np.zeros(length, int)
    for s in starts:
        hits[s : s + window] += 1
    return hits


# ---------------------------------------------------------------------------------------------
# window_starts / window_grid
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize(("window", "overlap"), [(32, 2), (32, 8), (16, 0), (64, 4), (8, 7)])
@pytest.mark.parametrize("jitter", [None, 0, 5, 123])
def test_window_starts_cover_the_axis_with_the_overlap_and_the_fewest_windows(length, window, overlap, jitter):
    starts = window_starts(length, window=window, overlap=overlap, jitter_seed=jitter)
    if length <= window:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] == length - window
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(0 <= s <= length - window for s in starts)  # every window lies inside the axis
    assert all(b - a <= window - overlap for a, b in itertools.pairwise(starts))  # neighbours share >= overlap
    assert _covered(starts, window=window, length=length).min() >= 1
    n = len(starts)  # the fewest: one window less cannot cover the axis with that overlap
    assert n == math.ceil((length - overlap) / (window - overlap))
    assert (n - 1) * window - (n - 2) * overlap < length


@pytest.mark.parametrize("length", [100, 257, 1000])
def test_jittered_starts_differ_across_seeds_keep_the_count_and_repeat_per_seed(length):
    plain = window_starts(length, window=32, overlap=2)
    draws = [window_starts(length, window=32, overlap=2, jitter_seed=s) for s in range(12)]
    assert {len(d) for d in draws} == {len(plain)}  # same number of windows: same cost every step
    assert len({tuple(d) for d in draws}) >= 10  # the borders move from step to step
    assert draws[3] == window_starts(length, window=32, overlap=2, jitter_seed=3)  # reproducible
    # Every interior border position is visited by some draw, not only the even layout's.
    borders = {s for d in draws for s in d[1:-1]}
    assert len(borders) > 2 * (len(plain) - 2)


def test_window_grid_jitters_rows_and_columns_independently():
    grid = window_grid((300, 300), window=32, overlap=2, jitter_seed=4)
    ys = sorted({y for y, _ in grid})
    xs = sorted({x for _, x in grid})
    assert len(grid) == len(ys) * len(xs) == len(window_grid((300, 300), window=32, overlap=2)) == 100
    # a square canvas gets its own row and column borders (2 px of slack over 9 gaps: they can coincide)
    differ = [len({tuple(sorted({p[a] for p in window_grid((300, 300), window=32, overlap=2, jitter_seed=s)}))
                   for a in (0, 1)}) == 2 for s in range(20)]
    assert sum(differ) >= 10, differ
    assert window_grid((20, 300), window=(32, 40), overlap=2)[0] == (0, 0)
    assert {y for y, _ in window_grid((20, 300), window=(32, 40), overlap=2)} == {0}  # short axis: one row


# ---------------------------------------------------------------------------------------------
# axis_window and the overlap cost
# ---------------------------------------------------------------------------------------------
def _axis_cost(length: int, window: int, overlap: int) -> int:
    return len(window_starts(length, window=window, overlap=overlap)) * min(window, length)


@pytest.mark.parametrize("multiple", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("overlap", [2, 8])
def test_axis_window_is_a_multiple_in_range_and_never_costs_more_than_the_plain_window(multiple, overlap):
    for length in range(1, 1500, 7):
        w = axis_window(length, window=32, overlap=overlap, multiple=multiple)
        assert w % multiple == 0 and 32 <= w <= 48, (length, w)
        assert _axis_cost(length, w, overlap) <= _axis_cost(length, 32, overlap), (length, w)


def test_axis_window_rounds_a_window_that_is_not_a_multiple():
    assert axis_window(100, window=30, overlap=2, multiple=4) % 4 == 0


def _axis_ratio(length: int, *, window: int, overlap: int, multiple: int) -> float:
    """Overlap cost along one axis, through evaluations_per_pixel (the other axis: one exact window)."""
    w = axis_window(length, window=window, overlap=overlap, multiple=multiple)
    return evaluations_per_pixel((length, window), window=(w, window), overlap=overlap)


def test_evaluations_per_pixel_is_the_window_area_over_the_canvas_area():
    for size, win, overlap, jitter in (((70, 90), (32, 36), 5, 3), ((300, 130), (40, 34), 2, None), ((20, 20), (32, 32), 2, 1)):
        grid = window_grid(size, window=win, overlap=overlap, jitter_seed=jitter)
        counted = sum(min(win[0], size[0]) * min(win[1], size[1]) for _ in grid) / (size[0] * size[1])
        assert evaluations_per_pixel(size, window=win, overlap=overlap) == pytest.approx(counted)
    assert evaluations_per_pixel((32, 32), window=(32, 32), overlap=2) == 1.0
    assert evaluations_per_pixel((10, 20), window=(32, 32), overlap=2) == 1.0  # a canvas smaller than a window
    # Rows and columns are laid out independently: the cost is the product of the axes' costs.
    r = {n: _axis_ratio(n, window=32, overlap=2, multiple=2) for n in (57, 100, 333)}
    w = {n: axis_window(n, window=32, overlap=2, multiple=2) for n in r}
    assert evaluations_per_pixel((100, 333), window=(w[100], w[333]), overlap=2) == pytest.approx(r[100] * r[333])


@pytest.mark.parametrize(("multiple", "from_side"), [(1, 57), (2, 57), (4, 106)])
def test_overlap_cost_goal_for_canvases_two_windows_wide(multiple, from_side):
    """Issue goal: network evaluations per latent pixel / the non-overlapping minimum ≤ 1.3, window 32, overlap 2.

    With axis_window (windows 32…48) it holds for every canvas whose sides are both ≥ 57 latent px
    (≥ 106 when windows must be multiples of 4), up to 2048 (a 4096 px canvas at f = 2), and for
    canvases that fit one window (≤ 48: cost 1). It does not hold just above one window: a 49…56 px
    side needs two windows (49: 64/49 = 1.31 on that axis alone; (49, 49): 1.71), and with
    multiples of 4 the sides 57…105 reach 1.31.
    """
    sides = np.arange(1, 2049)
    ratio = np.array([_axis_ratio(int(n), window=32, overlap=2, multiple=multiple) for n in sides])
    assert (ratio >= 1).all()
    assert (ratio[sides <= 48] == 1).all()  # one window, no overlap
    big = ratio[sides >= from_side]
    assert float(big.max() ** 2) <= 1.3  # the worst pair of sides ≥ from_side
    # ... and the worst canvas is a real one: check it through the 2-D function.
    worst = int(sides[sides >= from_side][np.argmax(big)])
    w = axis_window(worst, window=32, overlap=2, multiple=multiple)
    assert evaluations_per_pixel((worst, worst), window=(w, w), overlap=2) <= 1.3
    # Where the goal is missed: a side just over one window.
    assert ratio[sides == 49][0] > 1.3
    w49 = axis_window(49, window=32, overlap=2, multiple=multiple)
    assert evaluations_per_pixel((49, 49), window=(w49, w49), overlap=2) > 1.7
    if multiple == 4:
        assert float(ratio[(sides >= 57) & (sides < 106)].max() ** 2) > 1.3


# ---------------------------------------------------------------------------------------------
# window_weight
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("window", "overlap"), [((32, 40), 6), (32, 2), ((48, 34), 8), (16, 0), (12, 5)])
def test_window_weight_is_positive_one_in_the_middle_and_symmetric(window, overlap):
    wt = window_weight(window, overlap=overlap)
    wy, wx = (window, window) if isinstance(window, int) else window
    assert wt.shape == (wy, wx) and wt.dtype == torch.float32
    assert float(wt.min()) > 0 and float(wt.max()) == 1.0
    o = min(overlap, wy // 2, wx // 2)
    assert torch.all(wt[o : wy - o, o : wx - o] == 1)
    torch.testing.assert_close(wt, wt.flip(0))
    torch.testing.assert_close(wt, wt.flip(1))
    edge = wt[wy // 2, : wx // 2]  # rises monotonically from the border to the middle
    assert torch.all(edge[1:] >= edge[:-1])
    if overlap == 0:
        assert torch.all(wt == 1)


def test_window_weight_of_a_window_narrower_than_two_tapers_stays_positive():
    wt = window_weight(8, overlap=20)  # no flat middle: tapers of 4 px from each side meet
    assert float(wt.min()) > 0 and float(wt.max()) < 1
    torch.testing.assert_close(wt, wt.T)


def test_window_weight_follows_device_and_dtype():
    wt = window_weight(16, overlap=4, dtype=torch.float64, device="cpu")
    assert wt.dtype == torch.float64 and wt.device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# fuse_windows
# ---------------------------------------------------------------------------------------------
CASES = [((70, 90), (32, 36), 5, 3), ((70, 90), (32, 36), 5, None), ((300, 130), (40, 34), 2, 11),
         ((20, 50), (32, 32), 4, 0), ((64, 64), (32, 32), 0, None)]


@pytest.mark.parametrize(("size", "win", "overlap", "jitter"), CASES)
@pytest.mark.parametrize("batch", [1, 4, 1000])
def test_fusion_of_windows_cut_from_one_image_reproduces_it_and_of_a_constant_is_that_constant(
        size, win, overlap, jitter, batch):
    g = torch.Generator().manual_seed(0)
    img = torch.randn((1, 3, *size), generator=g)
    positions = window_grid(size, window=win, overlap=overlap, jitter_seed=jitter)
    weight = window_weight(win, overlap=overlap)
    calls = []

    def cut(chunk):
        calls.append(len(chunk))
        wh, ww = min(win[0], size[0]), min(win[1], size[1])
        return torch.cat([img[:, :, y : y + wh, x : x + ww] for y, x in chunk])

    out = fuse_windows(cut, positions, canvas=img, window=win, weight=weight, batch=batch)
    assert out.shape == img.shape and out.dtype == img.dtype
    torch.testing.assert_close(out, img, rtol=0, atol=1e-6)
    assert sum(calls) == len(positions) and max(calls) <= batch  # every window once, batched
    wh, ww = min(win[0], size[0]), min(win[1], size[1])
    const = fuse_windows(lambda c: torch.full((len(c), 3, wh, ww), -0.625), positions, canvas=img, window=win,
                         weight=weight, batch=batch)
    torch.testing.assert_close(const, torch.full_like(img, -0.625), rtol=0, atol=1e-6)


def test_fusion_blends_disagreeing_windows_smoothly_in_the_overlap():
    """Two windows predicting 0 and 1 meet in a smooth ramp inside their overlap, not a step."""
    size, win, overlap = (8, 56), (8, 32), 8
    positions = window_grid(size, window=win, overlap=overlap)
    assert positions == [(0, 0), (0, 24)]
    out = fuse_windows(lambda c: torch.stack([torch.full((1, *win), float(x > 0)) for _, x in c]), positions,
                       canvas=torch.zeros(1, 1, *size), window=win, weight=window_weight(win, overlap=overlap), batch=2)
    row = out[0, 0, 4]
    assert torch.all(row[:24] == 0) and torch.all(row[32:] == 1)
    ramp = row[24:32]
    assert torch.all(ramp[1:] > ramp[:-1]) and 0 < float(ramp[0]) < 0.2 and 0.8 < float(ramp[-1]) < 1
    assert float((row[1:] - row[:-1]).max()) < 0.25  # no jump larger than a quarter of the difference


# ---------------------------------------------------------------------------------------------
# decode_tiled
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "tile", "overlap", "scale"), [((50, 70), 16, 4, 4), ((37, 100), 32, 4, 2),
                                                              ((10, 12), 16, 2, 4), ((64, 64), 16, 0, 1)])
def test_tiled_decoding_of_an_upsampler_reproduces_the_upsampled_latent(size, tile, overlap, scale):
    z = torch.randn((1, 3, *size), generator=torch.Generator().manual_seed(1))
    tiles = []

    def up(t):
        tiles.append(tuple(t.shape[-2:]))
        return torch.nn.functional.interpolate(t, scale_factor=scale, mode="nearest")

    out = decode_tiled(up, z, tile=tile, overlap=overlap, scale=scale)
    assert out.shape == (1, 3, size[0] * scale, size[1] * scale)
    torch.testing.assert_close(out, up(z), rtol=0, atol=1e-6)
    assert all(h <= tile and w <= tile for h, w in tiles[:-1])  # decoded a tile at a time
    assert len(tiles) - 1 == len(window_grid(size, window=tile, overlap=overlap))



def test_tiled_decoding_skips_tiles_away_from_keep_batches_and_keeps_the_kept_pixels():
    z = torch.randn((1, 3, 40, 72), generator=torch.Generator().manual_seed(2))
    calls = []

    def up(t):
        calls.append(int(t.shape[0]))
        return torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")

    full = decode_tiled(up, z, tile=(16, 20), overlap=4, scale=2)
    torch.testing.assert_close(full, up(z), rtol=0, atol=1e-6)
    calls.clear()
    keep = torch.zeros((40, 72), dtype=torch.bool)
    keep[5:10, 5:10] = True  # the top-left corner only
    part = decode_tiled(up, z, tile=(16, 20), overlap=4, scale=2, keep=keep, batch=3)
    grid = window_grid((40, 72), window=(16, 20), overlap=4)
    wanted = [(y, x) for y, x in grid if keep[y : y + 16, x : x + 20].any()]
    assert 0 < len(wanted) < len(grid) and sum(calls) == len(wanted) and max(calls) <= 3
    torch.testing.assert_close(part[..., :32, :40], full[..., :32, :40], rtol=0, atol=1e-6)  # kept: unchanged
    assert (part[..., -8:, -8:] == 0).all()  # covered by skipped tiles only: left for the caller
    batched = decode_tiled(up, z, tile=(16, 20), overlap=4, scale=2, batch=4)
    torch.testing.assert_close(batched, full, rtol=0, atol=1e-6)
    calls.clear()
    none = decode_tiled(up, z, tile=16, overlap=4, scale=2, keep=torch.zeros((40, 72), dtype=torch.bool))
    assert calls == [] and none.shape == (1, 3, 80, 144) and (none == 0).all()


def test_tiled_decoding_changes_channel_count_like_a_decoder():
    z = torch.randn(1, 4, 40, 40)

    def dec(t):  # 4 latent channels -> 3 image channels, 2× larger
        return torch.nn.functional.interpolate(t[:, :3] + t[:, 3:], scale_factor=2, mode="nearest")

    torch.testing.assert_close(decode_tiled(dec, z, tile=16, overlap=4, scale=2), dec(z), rtol=0, atol=1e-6)



def test_movable_windows_let_the_borders_move_where_the_cheapest_window_pins_them():
    """axis_window's cheapest window can cover a length exactly (no spare overlap): every jittered
    layout is then the same and the borders stay put. ``movable`` takes a window with room instead
    when one costs at most 5 % more: the pinned lengths become rare and the cost barely moves."""
    def layouts(n, w):
        return len({tuple(window_starts(n, window=w, overlap=4, jitter_seed=s)) for s in range(8)})

    lengths = [n for n in range(110, 1200) if len(window_starts(n, window=axis_window(
        n, window=32, overlap=4, multiple=4), overlap=4)) > 2]
    pinned = {mv: [n for n in lengths if layouts(n, axis_window(n, window=32, overlap=4, multiple=4, movable=mv)) == 1]
              for mv in (False, True)}
    assert len(pinned[True]) < len(pinned[False]) / 1.5
    moved = sorted(set(pinned[False]) - set(pinned[True]))
    assert moved and layouts(moved[0], axis_window(moved[0], window=32, overlap=4, multiple=4, movable=True)) >= 3
    for n in lengths[::37]:
        plain, mv = (axis_window(n, window=32, overlap=4, multiple=4, movable=m) for m in (False, True))
        assert _axis_ratio(n, window=32, overlap=4, multiple=4) * 1.05 >= len(window_starts(
            n, window=mv, overlap=4)) * mv / n - 1e-9
        assert mv % 4 == 0 and 32 <= mv <= 48 and plain % 4 == 0


# ---------------------------------------------------------------------------------------------
# The window cost model
# ---------------------------------------------------------------------------------------------
def test_window_cost_fit_is_the_quadratic_through_three_counts():
    cost = WindowCost.fit([256, 1024, 4096], [1e6 + 500 * a + 60 * a * a for a in (256, 1024, 4096)])
    assert cost.fixed == pytest.approx(1e6) and cost.per_px == pytest.approx(500) and cost.per_px2 == pytest.approx(60)
    assert cost.flops((10, 20)) == pytest.approx(1e6 + 500 * 200 + 60 * 200**2)
    assert WindowCost(0, 1, 0, attention_px2=0.5).attention_bytes((8, 8), batch=3) == 2 * 3 * 0.5 * 64**2 * 4


def _layouts(size, tile, overlap, multiple, cost, whole_max):
    """Every layout choose_window considers, priced by brute force: ((wy, wx), cost)."""
    def options(n):
        ws = {n} if n <= max(whole_max, tile) else set()
        ws |= {min(w, n) for w in range(math.ceil(tile / multiple) * multiple, int(1.5 * tile) + 1, multiple)}
        return ws
    out = []
    for wy in options(size[0]):
        for wx in options(size[1]):
            n = len(window_grid(size, window=(wy, wx), overlap=overlap))
            out.append(((wy, wx), n * cost.flops((wy, wx))))
    return out


@pytest.mark.parametrize("per_px2", [0.0, 8.0, 64.0, 500.0])
@pytest.mark.parametrize("side", [40, 96, 97, 130, 184, 250, 368, 700])
def test_choose_window_costs_at_most_5_percent_over_the_cheapest_layout(per_px2, side):
    cost = WindowCost(1e5, 5e5, per_px2)
    size = (side, side + 24)
    win = choose_window(size, tile=32, overlap=4, multiple=4, cost=cost, whole_max=96)
    n = len(window_grid(size, window=win, overlap=4))
    best = min(c for _, c in _layouts(size, 32, 4, 4, cost, 96))
    assert n * cost.flops(win) <= 1.0501 * best
    assert all(v % 4 == 0 or v == s for v, s in zip(win, size, strict=True))


def test_choose_window_takes_the_whole_core_without_attention_and_tiles_with_much_of_it():
    free = WindowCost(0, 1e6, 0)
    assert choose_window((96, 96), tile=32, overlap=4, multiple=4, cost=free, whole_max=96) == (96, 96)
    assert choose_window((100, 96), tile=32, overlap=4, multiple=4, cost=free, whole_max=96)[1] == 96  # one axis whole
    heavy = WindowCost(0, 1e6, 1e4)
    win = choose_window((96, 96), tile=32, overlap=4, multiple=4, cost=heavy, whole_max=96)
    assert all(32 <= v <= 48 for v in win)
    # without a cost model: pixels, so the whole canvas whenever it is allowed (as before the cost model)
    assert choose_window((96, 96), tile=32, overlap=4, multiple=4, whole_max=96) == (96, 96)


def test_choose_window_keeps_the_math_attention_path_within_its_memory_budget():
    cost = WindowCost(0, 1e6, 1.0, attention_px2=1.0)
    size = (96, 96)
    assert choose_window(size, tile=32, overlap=4, multiple=4, cost=cost, whole_max=96) == (96, 96)
    budget = cost.attention_bytes((48, 48), batch=2)
    win = choose_window(size, tile=32, overlap=4, multiple=4, cost=cost, whole_max=96, memory_budget=budget, batch=2)
    assert cost.attention_bytes(win, batch=2) <= budget and win != (96, 96)
    # a training tile stays possible whatever the budget
    assert choose_window(size, tile=32, overlap=4, multiple=4, cost=cost, whole_max=96, memory_budget=1) == (32, 32)


def test_fusion_of_windows_of_several_canvases_in_shared_calls():
    """(n, y, x) positions: the windows of a stack of canvases share predict calls, and each canvas
    is fused as if alone."""
    g = torch.Generator().manual_seed(4)
    stack = torch.randn((3, 2, 70, 90), generator=g)
    win, overlap = (32, 36), 5
    weight = window_weight(win, overlap=overlap)
    positions = [(n, y, x) for n in range(3) for y, x in window_grid((70, 90), window=win, overlap=overlap, jitter_seed=n)]
    calls = []

    def cut(chunk):
        calls.append({n for n, _, _ in chunk})
        return torch.cat([stack[n : n + 1, :, y : y + 32, x : x + 36] * (n + 1) for n, y, x in chunk])

    out = fuse_windows(cut, positions, canvas=stack, window=win, weight=weight, batch=7)
    for n in range(3):
        torch.testing.assert_close(out[n], stack[n] * (n + 1), rtol=0, atol=1e-5)
    assert any(len(c) > 1 for c in calls)  # some calls mix canvases
