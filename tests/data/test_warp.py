"""The misregistration maths: drawing it within bounds, rendering it, mapping points both ways."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stainldm.data.warp import (
    Misregistration,
    MisregistrationConfig,
    draw_misregistration,
    elastic_displacement,
    hat_matrix,
    render_stained,
    stained_to_unstained,
    unstained_to_stained,
)
from stainldm.errors import ConfigError, RunError

SIZE_WH = (1400, 1000)
CENTERS = np.array([[400.0, 350.0], [1000.0, 350.0], [400.0, 650.0], [1000.0, 650.0]])


def _draw(seed: int = 0) -> Misregistration:
    return draw_misregistration(MisregistrationConfig(), size_wh=SIZE_WH, centers_xy=CENTERS, reach_px=160.0,
                                margin_px=300.0, mpp=0.5, rng=np.random.default_rng(seed))


def _identity(size_wh: tuple[int, int], step: int = 8, field: float = 0.0) -> Misregistration:
    """No rigid motion; a uniform elastic dx of ``field`` px."""
    ny, nx = math.ceil(size_wh[1] / step) + 2, math.ceil(size_wh[0] / step) + 2
    return Misregistration(rotation_deg=0.0, translation_px=np.zeros(2), center_xy=np.zeros(2),
                           matrix=np.array([[1.0, 0, 0], [0, 1.0, 0]]), step_px=step,
                           field=np.stack([np.full((ny, nx), field), np.zeros((ny, nx))]), size_wh=size_wh)


def test_draw_misregistration_stays_within_bounds_and_is_seeded():
    for seed in range(5):
        tr = _draw(seed)
        assert abs(tr.rotation_deg) <= 3.0
        assert math.hypot(*tr.translation_px) * 0.5 <= 200.0
        peak = np.hypot(tr.field[0], tr.field[1]).max()
        assert 0.6 * 3.0 - 1e-3 <= peak <= 3.0
        a = math.radians(tr.rotation_deg)
        np.testing.assert_allclose(tr.matrix[:, :2], [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        np.testing.assert_allclose(tr.matrix[:, :2] @ tr.center_xy + tr.matrix[:, 2] - tr.center_xy,
                                   tr.translation_px, atol=1e-9)
        mapped = CENTERS @ tr.matrix[:, :2].T + tr.matrix[:, 2]
        assert (mapped - 163 >= 16).all() and (mapped + 163 <= np.array(tr.size_wh)).all()
        assert tr.size_wh[0] >= SIZE_WH[0] and tr.size_wh[1] >= SIZE_WH[1]
    again, other = _draw(0), _draw(1)
    assert json.dumps(again.as_dict()) == json.dumps(_draw(0).as_dict())
    assert other.rotation_deg != again.rotation_deg


def test_draw_misregistration_refuses_a_margin_too_small_for_the_shift():
    with pytest.raises(ConfigError, match=r"grid\.margin_um is too small for misregistration\.max_translation_um"):
        # Cores reach 390 px from centres 350 px from the edge: no shift keeps them on the scan.
        draw_misregistration(MisregistrationConfig(max_translation_um=0.0), size_wh=SIZE_WH, centers_xy=CENTERS,
                             reach_px=390.0, margin_px=0.0, mpp=0.5, rng=np.random.default_rng(0))


def test_misregistration_config_refuses_out_of_range_values():
    with pytest.raises(ConfigError, match="max_rotation_deg"):
        MisregistrationConfig(max_rotation_deg=90)
    with pytest.raises(ConfigError, match="must not be negative"):
        MisregistrationConfig(elastic_max_px=-1)
    with pytest.raises(ConfigError, match="elastic_scale_um"):
        MisregistrationConfig(elastic_scale_um=0)


def test_as_dict_is_the_json_transform():
    tr = _draw(3)
    t = json.loads(json.dumps(tr.as_dict()))
    assert t["matrix"] == tr.matrix.tolist() and t["elastic_field"]["step_px"] == tr.step_px
    assert t["elastic_max_px"] == pytest.approx(np.hypot(tr.field[0], tr.field[1]).max())


def test_hat_matrix_interpolates_linearly_and_clamps():
    coords = np.array([-3.0, 0.0, 4.0, 8.0, 13.0, 100.0])
    w = hat_matrix(coords, 3, 8.0)  # nodes at 0, 8, 16
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    nodes = np.array([0.0, 8.0, 16.0])
    np.testing.assert_allclose(w @ nodes, np.clip(coords, 0, 16))  # reproduces a linear function
    np.testing.assert_allclose(w[2], [0.5, 0.5, 0.0])


def test_elastic_displacement_is_bilinear_between_nodes():
    dx = np.array([[0.0, 1.0], [2.0, 3.0]])  # node (row j, col i) at (i*step, j*step)
    t = {"elastic_field": {"step_px": 10, "dx": dx.tolist(), "dy": (-dx).tolist()}}
    got = elastic_displacement(np.array([[0.0, 0.0], [5.0, 0.0], [5.0, 5.0], [10.0, 10.0], [50.0, 0.0]]), t)
    np.testing.assert_allclose(got[:, 0], [0.0, 0.5, 1.5, 3.0, 1.0])
    np.testing.assert_allclose(got[:, 1], -got[:, 0])


def test_point_maps_invert_each_other():
    t = json.loads(json.dumps(_draw(2).as_dict()))
    p = np.random.default_rng(0).uniform(200, 900, size=(50, 2))
    q = unstained_to_stained(p, t)
    np.testing.assert_allclose(stained_to_unstained(q, t), p, atol=1e-6)
    affine = p @ np.asarray(t["matrix"])[:, :2].T + np.asarray(t["matrix"])[:, 2]
    assert np.hypot(*(q - affine).T).max() <= t["elastic_max_px"] + 1e-6


def test_point_mapping_refuses_a_warp_it_cannot_invert():
    t = json.loads(json.dumps(_draw(0).as_dict()))
    shape = np.asarray(t["elastic_field"]["dx"]).shape
    checker = 200.0 * (np.indices(shape).sum(axis=0) % 2 * 2 - 1)  # ±200 px between neighbouring nodes
    rough = {**t, "elastic_field": {**t["elastic_field"], "dx": checker.tolist(), "dy": checker.tolist()}}
    points = np.array([[400.0, 350.0], [1000.0, 650.0], [523.5, 411.5]])
    with pytest.raises(RunError, match="did not converge"):
        unstained_to_stained(points, rough)


def test_render_stained_identity_copies_and_shift_moves():
    he = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(render_stained(he, _identity((50, 40)), (1, 2, 3)), he)
    # A uniform field e = 2 px in x: stained q shows unstained q + 2.
    shifted = render_stained(he, _identity((50, 40), field=2.0), (1, 2, 3))
    np.testing.assert_array_equal(shifted[:, :-2], he[:, 2:])
    assert (shifted[:, -1] == (1, 2, 3)).all()  # off the unstained canvas: glass
    # A larger canvas than he (as for shifted slides) is glass beyond it, rendered band by band.
    big = render_stained(he, _identity((60, 600)), (9, 9, 9))
    assert big.shape == (600, 60, 3) and (big[40:] == 9).all() and (big[:, 50:] == 9).all()
