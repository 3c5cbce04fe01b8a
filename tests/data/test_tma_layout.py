"""The TMA grid: positions, labels, splits, and each core's turn and irregular disc."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stainldm.data.tma_layout import Core, GridConfig, core_alpha, core_matrix, plan_layout
from stainldm.errors import ConfigError


def test_plan_layout_places_labels_and_splits_the_grid():
    grid = GridConfig(rows=3, cols=4, missing=2, test_cores=3)
    layout = plan_layout(grid, mpp=0.5, thickness_variation=0.15, rng=np.random.default_rng(0))
    assert layout.size_wh == (math.ceil(2 * 700 + 4 * 700 + 3 * 200), math.ceil(2 * 700 + 3 * 700 + 2 * 200))
    assert layout.radius_px == 350 and layout.reach_px == pytest.approx(350 * 1.03 + 1)
    ids = [c.id for c in layout.cores]
    assert len(ids) == 10 and len(layout.missing) == 2
    assert sorted(ids + layout.missing) == sorted(f"{r}{c}" for r in "ABC" for c in range(1, 5))
    assert sum(c.split == "test" for c in layout.cores) == 3
    for core in layout.cores:
        assert core.id == f"{'ABC'[core.row]}{core.col + 1}"
        nominal = 700 + 350 + np.array([core.col, core.row]) * 900
        assert np.abs(core.center_xy - nominal).max() <= 20  # jitter_um 10 at 0.5 µm/px
        assert 0.85 <= core.thickness <= 1.15 and 0 <= core.rotation_deg < 360
        assert np.abs(core.edge[:, 1]).sum() == pytest.approx(0.03)
    again = plan_layout(grid, mpp=0.5, thickness_variation=0.15, rng=np.random.default_rng(0))
    assert [c.center_xy.tolist() for c in again.cores] == [c.center_xy.tolist() for c in layout.cores]


def test_grid_config_refuses_impossible_grids():
    with pytest.raises(ConfigError, match="grid.rows"):
        GridConfig(rows=27)
    with pytest.raises(ConfigError, match="grid.missing"):
        GridConfig(rows=1, cols=2, missing=1)
    with pytest.raises(ConfigError, match="grid.test_cores"):
        GridConfig(test_cores=11)
    with pytest.raises(ConfigError, match="grid.jitter_um"):
        GridConfig(jitter_um=30.0)
    with pytest.raises(ConfigError, match="grid.edge_irregularity"):
        GridConfig(edge_irregularity=0.5)


def test_core_matrix_is_a_rotation_after_an_optional_flip():
    core = Core(id="A1", row=0, col=0, center_xy=np.zeros(2), rotation_deg=90.0)
    np.testing.assert_allclose(core_matrix(core), [[0, -1], [1, 0]], atol=1e-12)
    core.flip = True
    m = core_matrix(core)
    assert np.linalg.det(m) == pytest.approx(-1.0)
    np.testing.assert_allclose(m @ [1.0, 0.0], [0.0, -1.0], atol=1e-12)  # x mirrored, then turned


def test_core_alpha_covers_the_disc_with_an_antialiased_edge():
    core = Core(id="A1", row=0, col=0, center_xy=np.array([50.0, 40.0]))
    alpha = core_alpha(core, 20.0, 10, 0, 80, 80)
    assert alpha.shape == (80, 80) and alpha.dtype == np.float32
    assert alpha[40, 40] == 1.0 and alpha[0, 0] == 0.0 and alpha[40, 10] == 0.0  # (x 50, y 40) is the centre
    assert alpha.sum() == pytest.approx(math.pi * 20**2, rel=0.01)
    assert ((alpha > 0) & (alpha < 1)).any()
    bumpy = Core(id="A1", row=0, col=0, center_xy=np.array([50.0, 40.0]), edge=np.array([[2, 0.1, 0.0]]))
    b = core_alpha(bumpy, 20.0, 10, 0, 80, 80)
    assert b[40, 40 + 21] > 0.5 and b[40 + 21, 40] < 0.5  # 10% wider along x, narrower along y
