"""Metric maths on small synthetic images with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stainldm.eval.metrics import (
    ColourMap,
    NucleiConfig,
    core_metrics,
    fid,
    hed_densities,
    inception_features,
    kid,
    lab_wasserstein,
    masked_psnr,
    masked_ssim,
    match_points,
    nuclei_agreement,
    seam_score,
    segment_nuclei,
    stain_correlation,
)

PINK = (235, 170, 205)
PURPLE = (70, 40, 130)


def tissue_image(centres_xy, *, size=(128, 160), radius=4, seed=0) -> np.ndarray:
    """Pink 'stroma' with purple discs ('nuclei') at ``centres_xy``, and a little noise."""
    h, w = size
    img = np.empty((h, w, 3), np.float32)
    img[:] = PINK
    yy, xx = np.mgrid[:h, :w]
    for x, y in centres_xy:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = PURPLE
    img += np.random.default_rng(seed).normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


GRID = [(x, y) for y in range(16, 128, 24) for x in range(16, 160, 24)]  # 5 × 6 = 30 nuclei


def test_psnr_and_ssim_only_see_the_mask():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = a.copy()
    b[:, 32:] = 255 - b[:, 32:]  # differ only on the right half
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    assert masked_psnr(b, a, left) == math.inf
    assert masked_ssim(b, a, left) > 0.9 > masked_ssim(b, a, ~left)  # (the 7×7 window straddles the edge)
    assert masked_ssim(a, a, left) == pytest.approx(1.0)
    c = a.astype(np.int16)
    c[left] += 10  # MSE 100 on the mask: PSNR = 10·log10(255²/100)
    assert masked_psnr(np.clip(c, 0, 255).astype(np.uint8), a, left & (a < 245).all(axis=2)) == pytest.approx(
        10 * math.log10(255**2 / 100), abs=1e-6)
    assert math.isnan(masked_psnr(a, a, np.zeros((64, 64), bool)))


def test_lab_wasserstein_is_zero_for_same_colours_and_grows_with_a_shift():
    img = tissue_image(GRID)
    mask = np.ones(img.shape[:2], bool)
    assert lab_wasserstein(img, img, mask) == (0.0, 0.0, 0.0)
    darker = np.clip(img.astype(np.int16) - 30, 0, 255).astype(np.uint8)
    w_l, w_a, w_b = lab_wasserstein(darker, img, mask)
    assert w_l > 5 and w_l > w_a and w_l > w_b  # a brightness change is mostly an L* change
    shuffled = img.reshape(-1, 3)[np.random.default_rng(0).permutation(img.shape[0] * img.shape[1])].reshape(img.shape)
    assert lab_wasserstein(shuffled, img, mask) == (0.0, 0.0, 0.0)  # a histogram distance ignores layout


def test_stain_correlation_of_identical_and_swapped_images():
    a, b = tissue_image(GRID), tissue_image(GRID[::2], seed=1)
    mask = np.ones(a.shape[:2], bool)
    h, e = stain_correlation(a, a, mask)
    assert h == pytest.approx(1.0) and e == pytest.approx(1.0)
    h2, _ = stain_correlation(b, a, mask)
    assert 0 < h2 < 0.9  # half of the nuclei are missing
    flat = np.full_like(a, 200)
    assert math.isnan(stain_correlation(flat, a, mask)[0])  # no variation: undefined, not 0


def test_nuclei_are_found_counted_and_matched():
    img = tissue_image(GRID)
    mask = np.ones(img.shape[:2], bool)
    found = segment_nuclei(hed_densities(img)[..., 0], mask, mpp=0.5)
    assert len(found) == len(GRID)
    assert match_points(found, np.array(GRID, float), radius=2) == len(GRID)  # centres within 1 µm
    moved = tissue_image([(x + 3, y) for x, y in GRID], seed=2)  # 1.5 µm away: still the same nuclei
    half = tissue_image(GRID[::2], seed=3)
    same = nuclei_agreement(hed_densities(moved), hed_densities(img), mask, mpp=0.5)
    assert same["nuclei_f1"] == pytest.approx(1.0) and same["nuclei_count_ratio"] == pytest.approx(1.0)
    fewer = nuclei_agreement(hed_densities(half), hed_densities(img), mask, mpp=0.5)
    assert fewer["nuclei_pred"] == 15 and fewer["nuclei_count_ratio"] == pytest.approx(0.5)
    assert fewer["nuclei_f1"] == pytest.approx(2 * 15 / 45)
    far = nuclei_agreement(hed_densities(moved), hed_densities(img), mask, mpp=0.5,
                           cfg=NucleiConfig(match_radius_um=1.0))
    assert far["nuclei_f1"] == 0.0
    flat = np.full_like(img, 200)
    assert len(segment_nuclei(hed_densities(flat)[..., 0], mask, mpp=0.5)) == 0  # no noise "nuclei"


def test_a_few_near_black_pixels_do_not_take_the_nuclei_threshold():
    """Pigment, dust or a dark speck (haematoxylin density far above any nucleus's) in a few pixels:
    Otsu on the raw densities splits them from everything else and no nucleus is found."""
    img = tissue_image(GRID)
    img[60:66, 2:8] = 0  # 36 black pixels of 20480 (before the cap: no nucleus found)
    mask = np.ones(img.shape[:2], bool)
    found = segment_nuclei(hed_densities(img)[..., 0], mask, mpp=0.5)
    assert len(found) in (len(GRID), len(GRID) + 1)  # the speck may count as one more
    assert match_points(found, np.array(GRID, float), radius=2) == len(GRID)


def test_match_points_is_one_to_one():
    pred = np.array([[0.0, 0.0], [1.0, 0.0]])
    true = np.array([[0.5, 0.0]])
    assert match_points(pred, true, radius=1.0) == 1
    assert match_points(pred, np.zeros((0, 2)), radius=1.0) == 0


def test_seam_score_sees_steps_at_window_borders_only():
    rng = np.random.default_rng(0)
    smooth = np.clip(rng.normal(128, 10, (96, 96, 3)), 0, 255)
    mask = np.ones((96, 96), bool)
    assert seam_score(smooth.astype(np.uint8), mask, borders_x=[32, 64], borders_y=[48]) == pytest.approx(1.0, abs=0.1)
    tiles = smooth.copy()
    tiles[:, 32:64] += 25  # independent tiles with a colour jump at x = 32 and 64
    tiles = np.clip(tiles, 0, 255).astype(np.uint8)
    assert seam_score(tiles, mask, borders_x=[32, 64], borders_y=[48]) > 1.5
    assert seam_score(tiles, mask, borders_x=[16, 80], borders_y=[]) == pytest.approx(1.0, abs=0.15)  # elsewhere
    glass = np.zeros((96, 96), bool)
    glass[:, :20] = True
    assert math.isnan(seam_score(tiles, glass, borders_x=[32, 64], borders_y=[]))  # borders off tissue



def test_seam_score_with_a_period_compares_borders_with_the_same_phase_of_an_upsampled_grid():
    """A 4× upsampling decoder leaves a weak step every 4 px; borders on that grid are not seams."""
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(128, 4, (128, 128, 3)), 0, 255)
    img += np.repeat(np.repeat(rng.normal(0, 12, (32, 32, 1)), 4, 0), 4, 1)  # a latent-pixel grid everywhere
    img = np.clip(img, 0, 255).astype(np.uint8)
    mask = np.ones((128, 128), bool)
    grid = [32, 64, 96]
    assert seam_score(img, mask, borders_x=grid, borders_y=grid) > 1.5  # every latent boundary looks like a seam
    assert seam_score(img, mask, borders_x=grid, borders_y=grid, period=4) == pytest.approx(1.0, abs=0.15)
    checker = (np.add.outer(np.arange(128) // 32, np.arange(128) // 32) % 2) * 30.0  # independent 32 px tiles
    seamed = img.astype(np.float32) + checker[..., None]
    seamed = np.clip(seamed, 0, 255).astype(np.uint8)
    assert seam_score(seamed, mask, borders_x=grid, borders_y=grid, period=4) > 1.2  # a real seam still shows
    with pytest.raises(ValueError, match=r"multiples of `period` \(4\)"):
        seam_score(img, mask, borders_x=[30], borders_y=[], period=4)


def test_core_metrics_identical_and_shape_check():
    img = tissue_image(GRID)
    mask = np.ones(img.shape[:2], bool)
    m = core_metrics(img, img, mask, mpp=0.5)
    assert m["psnr"] == math.inf and m["ssim"] == pytest.approx(1.0) and m["lab_w"] == 0.0
    assert m["h_corr"] == pytest.approx(1.0) and m["nuclei_f1"] == 1.0 and m["nuclei_count_error"] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        core_metrics(img[:10], img, mask, mpp=0.5)


def test_colour_map_learns_a_per_pixel_mapping():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 4096, (6, 32, 32, 2)).astype(np.uint16)  # two-channel autofluorescence
    x = u.astype(np.float64) / 4095

    def stain(xx):  # some smooth non-linear truth
        return np.clip(np.stack([255 - 150 * xx[..., 0] ** 2, 200 - 120 * xx[..., 1], 230 - 80 * xx[..., 0] * xx[..., 1]],
                                -1), 0, 255).round().astype(np.uint8)

    cmap = ColourMap.fit(u, stain(x), seed=0)
    test = rng.integers(0, 4096, (40, 40, 2)).astype(np.uint16)
    out = cmap.apply(test)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - stain(test / 4095).astype(int)).mean() < 6
    four = ColourMap.fit(rng.integers(0, 255, (2, 16, 16, 4)).astype(np.uint8), stain(x[:2, :16, :16]))
    assert four.table is None and four.apply(np.zeros((4, 4, 4), np.uint8)).shape == (4, 4, 3)  # polynomial only
    assert "colour map" in cmap.describe()


def test_fid_kid_and_features_from_a_torchscript_module():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (200, 8))
    b = rng.normal(0.5, 1, (200, 8))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fid(a, b) > fid(a, rng.normal(0, 1, (200, 8)))
    k_same, _ = kid(a, rng.normal(0, 1, (200, 8)))
    k_diff, _ = kid(a, b)
    assert abs(k_same) < k_diff

    class WithFlag(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            assert x.shape[-2:] == (299, 299)
            return x.mean(dim=(2, 3)) if return_features else x[:, :1, 0, 0]

    class Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    patches = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for module in (WithFlag(), torch.jit.script(WithFlag()), torch.jit.script(Plain())):
        f = inception_features(module, patches, batch=2)
        assert f.shape == (5, 3)
        assert np.allclose(f, patches.reshape(5, -1, 3).mean(1), atol=1.0)
