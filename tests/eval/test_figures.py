"""The report's figures and gallery panels: files written, the steps figure only for a steps sweep."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from stainldm.eval.figures import (
    COMPARE_PX,
    _detail_centre,
    distributions_figure,
    make_figures,
    per_core_figure,
    preview_unstained,
    save_core_panels,
    steps_figure,
)
from stainldm.eval.stats import summarise
from stainldm.eval.table import CoreRow

NAMES = ["LDM (ddim, 1 step)", "LDM (ddim, 4 steps)", "LDM (ddim, 2 steps)"]


def _rows(methods=NAMES, n_cores: int = 5) -> list[CoreRow]:
    rng = np.random.default_rng(0)
    rows = [CoreRow.make(m, "s", f"A{i}", "ok", tissue_px=50,
                         values={"psnr": 20 + j + rng.normal(), "ssim": 0.5 + 0.1 * j, "lab_w": 3.0 - j,
                                 "h_corr": 0.7, "e_corr": 0.6, "nuclei_f1": 0.5, "nuclei_count_ratio": 1.1,
                                 "seam_score": math.nan})
            for i in range(n_cores) for j, m in enumerate(methods)]
    return [*rows, CoreRow.make(methods[0], "t", "B1", "missing: no prediction")]


def test_preview_of_unstained_inputs():
    rng = np.random.default_rng(0)
    for c in (1, 2, 3, 4):
        img = rng.integers(0, 4000, (8, 8, c)).astype(np.uint16)
        out = preview_unstained(img)
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and out.max() == 255


def test_each_figure_is_one_png(tmp_path):
    rows = _rows()
    s = summarise(rows, NAMES, reference=NAMES[0], seed=0, n_boot=100)
    d = distributions_figure(tmp_path / "d.png", rows, NAMES, s)
    p = per_core_figure(tmp_path / "p.png", rows, NAMES)
    st = steps_figure(tmp_path / "s.png", s, [(4, NAMES[1]), (1, NAMES[0])], {NAMES[0]: None, NAMES[1]: 2.0})
    for fig, name in ((d, "d.png"), (p, "p.png"), (st, "s.png")):
        assert fig.path == f"{tmp_path.name}/{name}" and fig.title and fig.caption
        assert Image.open(tmp_path / name).size[0] > 1000
    assert sorted(x.name for x in tmp_path.iterdir()) == ["d.png", "p.png", "s.png"]  # no temporary files left


def test_quality_against_steps_when_the_same_model_is_given_at_several_steps(tmp_path):
    rows = _rows()
    s = summarise(rows, NAMES, reference=NAMES[0], seed=0, n_boot=200)
    infos = [{"name": m, "kind": "ldm", "steps": k, "seconds_total": 10.0 * k, "notes": []}
             for m, k in zip(NAMES, (1, 4, 2), strict=True)]
    figs = make_figures(tmp_path / "figures", rows, NAMES, s, method_infos=infos)
    assert [f.title for f in figs][-1] == "Quality against sampler steps"
    assert (tmp_path / "figures" / "steps.png").is_file()
    one = [dict(i, steps=4) for i in infos]  # one step count: nothing to plot against
    assert len(make_figures(tmp_path / "one", rows, NAMES, s, method_infos=one)) == 2
    assert not (tmp_path / "one" / "steps.png").exists()


def test_core_panels_and_detail_crop(tmp_path):
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
    tissue = np.zeros((300, 280), bool)
    tissue[150:, 150:] = True
    cy, cx = _detail_centre(tissue, 128)
    assert cy >= 150 and cx >= 150  # in the tissue quadrant, not the image centre
    entry = save_core_panels(tmp_path / "gallery", "s 1:A/1", unstained=rng.integers(0, 9, (300, 280, 1)), real=real,
                             tissue=tissue, mpp=1.0, virtual={"m": (real, np.zeros((300, 280), np.float32))})
    assert entry["key"] == "s 1:A/1" and entry["size_wh"] == [280, 300] and entry["detail_px"] == 128
    m = entry["methods"]["m"]
    assert m["mae"] == 0.0 and m["uncertainty_max"] == 0.0
    assert m["virtual"]["full"] == "gallery/s_1_A_1/m0.virtual.png"
    assert Image.open(tmp_path / m["virtual"]["detail"]).size == (128, 128)
    err = np.asarray(Image.open(tmp_path / m["error"]["full"]))
    assert (err[~tissue] == 230).all()  # glass is gray in the error map


def test_side_by_side_detail_is_the_same_native_region_of_every_method(tmp_path):
    rng = np.random.default_rng(2)
    real = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    blurry = np.full_like(real, 128)
    tissue = np.zeros((300, 400), bool)
    tissue[20:, 100:] = True
    entry = save_core_panels(tmp_path / "gallery", "s:B2", unstained=rng.integers(0, 9, (300, 400, 1)), real=real,
                             tissue=tissue, mpp=1.0, virtual={"sharp": (real, None), "blurry": (blurry, None)})
    cmp = entry["compare"]
    assert cmp["size_wh"] == [COMPARE_PX, COMPARE_PX] and list(cmp["methods"]) == ["sharp", "blurry"]
    x0, y0 = cmp["xy"]
    assert x0 >= 100 and y0 + COMPARE_PX <= 300  # inside the tissue, inside the image
    want = real[y0 : y0 + COMPARE_PX, x0 : x0 + COMPARE_PX]
    assert np.array_equal(np.asarray(Image.open(tmp_path / cmp["real"])), want)  # native pixels: no resampling
    assert np.array_equal(np.asarray(Image.open(tmp_path / cmp["methods"]["sharp"])), want)
    assert (np.asarray(Image.open(tmp_path / cmp["methods"]["blurry"])) == 128).all()
    small = save_core_panels(tmp_path / "g2", "s:C1", unstained=real[:40, :50, :1], real=real[:40, :50],
                             tissue=tissue[:40, :50] | True, mpp=0.5, virtual={"m": (real[:40, :50], None)})
    assert small["compare"]["size_wh"] == [50, 40] and small["compare"]["xy"] == [0, 0]  # a core smaller than the crop
    assert Image.open(tmp_path / small["compare"]["methods"]["m"]).size == (50, 40)
