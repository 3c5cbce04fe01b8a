"""Staining one slide with the library (stain_slide and its parts) on models from the real pipeline.

Models and slides come from ``stain_runs`` / ``stain_slides`` (tests/conftest.py): configs/ci.yaml
models trained 6 steps, 2-channel uint16 autofluorescence slides at 0.5 µm/px cut from the sample;
the models work at 1 µm/px, so output pixels are half the slide's.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import torch
from PIL import Image

import stainldm
from stainldm.errors import CheckpointError, InputError
from stainldm.inference.canvas import window_grid
from stainldm.inference.stain import (
    CANVAS_BLEND_PX,
    StainConfig,
    StainModel,
    region_canvases,
    split_canvas,
    stain_slide,
    tissue_regions,
)
from stainldm.wsi.reader import ArrayReader, open_slide
from stainldm.wsi.tissue import TissueConfig
from stainldm.wsi.writer import write_pyramid

ROOT = Path(__file__).resolve().parents[2]
# The ``piece`` slide's tissue is a 61 µm square: smaller than the default smallest tissue area.
PIECE = TissueConfig(min_area_um2=2000)


def _read(path: Path) -> np.ndarray:
    with open_slide(path) as s:
        return s.read_region((0, 0), s.dimensions)


def _stain(slide: Path, model: StainModel, out: Path, cfg: StainConfig, **kwargs):
    with open_slide(slide) as s:
        return stain_slide(s, model, out, cfg, **kwargs)


@pytest.fixture(scope="module")
def ldm(stain_runs) -> StainModel:
    return StainModel.load(stain_runs["ldm"])


@pytest.fixture(scope="module")
def baseline(stain_runs) -> StainModel:
    return StainModel.load(stain_runs["baseline"])


@pytest.fixture(scope="module")
def ldm_stained(ldm, stain_slides, tmp_path_factory) -> dict:
    """The ``piece`` slide stained by the ldm (2 steps): seed 0 twice, seed 1, and seed 0 with 2 samples."""
    base = tmp_path_factory.mktemp("ldm_stained")
    runs = {"a": StainConfig(steps=2, tissue=PIECE), "b": StainConfig(steps=2, tissue=PIECE),
            "seed1": StainConfig(steps=2, seed=1, tissue=PIECE), "k2": StainConfig(steps=2, samples=2, tissue=PIECE)}
    return {name: _stain(stain_slides["piece"], ldm, base / name / "piece.tiff", cfg) for name, cfg in runs.items()}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def test_load_reads_kind_mpp_and_geometry_of_both_model_kinds(ldm, baseline, stain_runs):
    assert (ldm.kind, baseline.kind) == ("ldm", "baseline")
    for m in (ldm, baseline):
        assert m.in_channels == 2 and m.mpp == 1.0 and m.tile_px == 64
    assert ldm.f == 2 and ldm.ae is not None and baseline.ae is None
    assert StainModel.load(stain_runs["ldm"] / "model.json").kind == "ldm"  # the model.json works too


def test_load_refuses_an_autoencoder_and_a_missing_run(stain_runs, tmp_path):
    with pytest.raises(CheckpointError, match="is a autoencoder checkpoint"):
        StainModel.load(stain_runs["ae"])
    with pytest.raises(CheckpointError, match="not found"):
        StainModel.load(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------
# Reproducibility and outputs
# ---------------------------------------------------------------------------------------------
def test_same_seed_is_bit_identical_and_another_seed_differs(ldm_stained):
    a, b, other = (_read(ldm_stained[k].output) for k in ("a", "b", "seed1"))
    assert a.dtype == np.uint8 and a.shape == (201, 301, 3)
    assert np.array_equal(a, b)
    tissue = (slice(60, 100), slice(60, 100))  # the piece: output px 50..110
    assert np.abs(a[tissue].astype(int) - other[tissue]).mean() > 1
    assert np.array_equal(a[:, 200:], other[:, 200:])  # glass is white whatever the seed


def test_baseline_is_deterministic(baseline, stain_slides, tmp_path):
    a = _stain(stain_slides["a"], baseline, tmp_path / "1" / "a.tiff", StainConfig())
    b = _stain(stain_slides["a"], baseline, tmp_path / "2" / "a.tiff", StainConfig(seed=7))
    assert np.array_equal(_read(a.output), _read(b.output))  # no noise: the seed does not matter
    assert a.uncertainty is None and a.regions == 1


def test_two_samples_write_an_uncertainty_map_zero_on_glass(ldm_stained):
    res = ldm_stained["k2"]
    assert res.uncertainty == res.output.with_name("piece.uncertainty.tiff")
    std = _read(res.uncertainty)
    assert std.shape == (201, 301, 1) and std.dtype == np.float32
    inside = std[60:100, 60:100, 0]
    assert (inside > 0).mean() > 0.99 and float(inside.mean()) > 1  # samples differ on tissue
    assert float(np.abs(std[:, 150:]).max()) == 0  # glass far from the piece: no uncertainty
    assert ldm_stained["a"].uncertainty is None
    assert not ldm_stained["a"].output.with_name("piece.uncertainty.tiff").exists()
    with tifffile.TiffFile(res.uncertainty) as tif:
        desc = json.loads(tif.pages[0].description)
    assert desc["channel_names"] == ["std"] and "standard deviation" in desc["unit"]


def test_uncertainty_fades_with_the_output_where_it_is_white_glass(ldm_stained):
    """The map follows the output's fade to white glass inside a region's box: wherever the output reads
    pure white, the samples' spread is below one 8-bit intensity level (it was up to ~100 before).
    Pure white is judged on 5×5 neighbourhoods: the output is JPEG, which rounds a near-white pixel
    at the mask's rim to 255 while the lossless map keeps its few levels of spread."""
    from scipy import ndimage as ndi

    res = ldm_stained["k2"]
    rgb, std = _read(res.output), _read(res.uncertainty)[..., 0]
    white = ndi.minimum_filter(rgb.min(axis=2), size=5) == 255
    assert white.any() and float(std[white].max()) < 1


def test_output_geometry_levels_mpp_and_white_glass(baseline, stain_slides, tmp_path):
    res = _stain(stain_slides["core"], baseline, tmp_path / "core.tiff", StainConfig())
    with open_slide(stain_slides["core"]) as s:
        w0, h0 = s.dimensions
        expected = (math.ceil(w0 * s.mpp[0] / baseline.mpp), math.ceil(h0 * s.mpp[1] / baseline.mpp))
    assert expected == (1101, 301)
    osl = openslide.OpenSlide(str(res.output))
    assert osl.dimensions == expected
    assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(baseline.mpp)
    assert float(osl.properties["openslide.mpp-y"]) == pytest.approx(baseline.mpp)
    assert osl.level_dimensions == ((1101, 301), (551, 151))
    rgb = _read(res.output)
    for level, (lw, lh) in enumerate(osl.level_dimensions):
        img = np.asarray(osl.read_region((0, 0), level, (lw, lh)))
        assert img.shape == (lh, lw, 4) and (img[..., 3] == 255).all()
        ds = osl.level_downsamples[level]
        far = img[:, math.ceil(400 / ds) :, :3]  # the core's box ends at x ≈ 250: beyond 400 all glass
        assert (far == 255).all(), level
        core = img[round(110 / ds) : round(150 / ds), round(110 / ds) : round(150 / ds), :3]
        assert float(core.mean()) < 240, level  # the core is stained, not left white
        if level:  # a lower level is level 0 averaged 2×2 (the last, odd row and column aside)
            small = rgb[: 2 * (lh - 1), : 2 * (lw - 1)].reshape(lh - 1, 2, lw - 1, 2, 3).mean(axis=(1, 3))
            assert np.abs(img[: lh - 1, : lw - 1, :3] - small).mean() < 3
    with tifffile.TiffFile(res.output) as tif:
        assert len(tif.series[0].levels) == 2 and tif.pages[0].compression == tifffile.COMPRESSION.JPEG
        desc = json.loads(tif.pages[0].description)
    assert desc["input"] == str(stain_slides["core"]) and desc["checkpoint"] == str(baseline.path)


def test_provenance_and_no_leftover_files(ldm_stained, ldm, stain_slides):
    res = ldm_stained["k2"]
    meta = json.loads(res.provenance.read_text())
    assert meta["input"] == str(stain_slides["piece"]) and meta["checkpoint"] == str(ldm.path)
    assert meta["version"] == stainldm.__version__ and meta["model_kind"] == "ldm"
    assert meta["seconds"] > 0 and meta["mpp"] == 1.0 and meta["size_wh"] == [301, 201]
    assert meta["output"] == "piece.tiff" and meta["uncertainty"] == "piece.uncertainty.tiff"
    cfg = meta["stain_config"]
    assert (cfg["sampler"], cfg["steps"], cfg["seed"], cfg["samples"]) == ("dpmpp_2m", 2, 0, 2)
    assert meta["regions"] == 1 and 0 < meta["tissue_fraction"] < 0.2
    for name, r in ldm_stained.items():  # only the results: no work folder, no partial files
        files = sorted(p.name for p in r.output.parent.iterdir())
        expected = ["piece.json", "piece.thumb.png", "piece.tiff"] + (["piece.uncertainty.tiff"] if name == "k2" else [])
        assert files == sorted(expected), name
    thumb = np.asarray(Image.open(res.thumbnail))
    assert thumb.shape == (201, 301, 3)


def test_provenance_records_the_canvases_sampled_and_the_tile(baseline, stain_slides, tmp_path):
    """``canvases`` are exactly :func:`region_canvases`' rectangles (output level-0 px) and
    ``tile_px`` the model's tile: evaluation draws window borders from them."""
    cfg = StainConfig(max_canvas_px=128)
    res = _stain(stain_slides["core"], baseline, tmp_path / "core.tiff", cfg)
    meta = json.loads(res.provenance.read_text())
    with open_slide(stain_slides["core"]) as s:
        regions, _ = tissue_regions(s, cfg, out_mpp=baseline.mpp)
    expected = region_canvases(regions, tuple(meta["size_wh"]), cfg)
    assert len(expected) == 9  # one region, split into 3×3 sub-canvases
    assert meta["canvases"] == [list(c) for c in expected]
    assert meta["tile_px"] == baseline.tile_px


def test_provenance_extras_are_recorded(baseline, stain_slides, tmp_path):
    extra = {"sampler": "dpmpp_2m", "steps": 2, "seed": 3, "checkpoint_sha256": "ab" * 32}
    res = _stain(stain_slides["a"], baseline, tmp_path / "a.tiff", StainConfig(), provenance=extra)
    meta = json.loads(res.provenance.read_text())
    assert {k: meta[k] for k in extra} == extra


# ---------------------------------------------------------------------------------------------
# Bad slides
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_a_slide_with_other_channels_than_the_model_is_an_input_error(baseline, tmp_path, channels):
    img = np.random.default_rng(0).integers(0, 255, (300, 300, channels), dtype=np.uint8).squeeze()
    write_pyramid(tmp_path / "other.tiff", img, mpp=0.5)
    with open_slide(tmp_path / "other.tiff") as s, pytest.raises(InputError, match=f"has {channels} channels but"):
        stain_slide(s, baseline, tmp_path / "out" / "o.tiff", StainConfig())
    assert not (tmp_path / "out").exists()


def test_a_slide_without_tissue_is_an_input_error_and_leaves_nothing(ldm, stain_slides, tmp_path):
    with open_slide(stain_slides["empty"]) as s, pytest.raises(InputError, match="no tissue"):
        stain_slide(s, ldm, tmp_path / "empty.tiff", StainConfig(steps=2))
    assert list(tmp_path.iterdir()) == []


def test_a_slide_without_mpp_is_an_input_error(baseline, stain_slides, tmp_path):
    img = _read(stain_slides["a"])
    with pytest.raises(InputError, match="does not record its mpp; pass `mpp`"):
        stain_slide(ArrayReader(img), baseline, tmp_path / "o.tiff", StainConfig())


@pytest.mark.parametrize(("field", "value", "message"), [("steps", 0, "`steps`"), ("samples", 0, "`samples`"),
                                                         ("batch_size", 0, "`batch_size`"), ("overlap_px", -1, "`overlap`"),
                                                         ("max_canvas_px", 32, "max_canvas_px"),
                                                         ("single_window_scale", 0.5, "single_window_scale"),
                                                         ("sampler", "euler", "`sampler` euler")])
def test_bad_stain_config_is_an_input_error(baseline, stain_slides, tmp_path, field, value, message):
    with open_slide(stain_slides["a"]) as s, pytest.raises(InputError, match=message):
        stain_slide(s, baseline, tmp_path / "o.tiff", StainConfig(**{field: value}))


# ---------------------------------------------------------------------------------------------
# Regions and sub-canvases
# ---------------------------------------------------------------------------------------------
def test_tissue_regions_are_margined_boxes_in_output_pixels_merged_when_they_overlap():
    mask = np.zeros((50, 80), bool)  # at the default mask_mpp of 4 µm: 4 output px (1 µm) per mask px
    mask[5:15, 10:20] = True
    mask[30:40, 60:75] = True
    cfg = StainConfig(region_margin_px=8)
    reader = ArrayReader(np.zeros((200, 320, 2), np.uint16), mpp=1.0)
    boxes, frac = tissue_regions(reader, cfg, out_mpp=1.0, mask=mask)
    assert boxes == [(32, 12, 56, 56), (232, 112, 76, 56)]
    assert frac == pytest.approx(mask.mean())
    boxes2, _ = tissue_regions(reader, cfg, out_mpp=2.0, mask=mask)  # coarser output: half the pixels
    assert boxes2[0] == (12, 2, 36, 36)
    mask[15:30, 18:62] = True  # a bridge: one piece
    assert len(tissue_regions(reader, cfg, out_mpp=1.0, mask=mask)[0]) == 1
    near = np.zeros((50, 80), bool)
    near[5:15, 10:20] = True
    near[5:15, 23:33] = True  # 3 mask px apart: boxes overlap once margined, merged
    assert tissue_regions(reader, cfg, out_mpp=1.0, mask=near)[0] == [(32, 12, 108, 56)]


@pytest.mark.parametrize("box", [(0, 0, 300, 300), (17, 5, 1000, 129), (3, 4, 128, 128), (0, 0, 129, 2000), (5, 5, 40, 30)])
@pytest.mark.parametrize(("max_px", "overlap"), [(128, 64), (128, 16), (256, 64), (100, 90)])
def test_split_canvas_covers_the_box_with_overlaps_and_at_most_max_px(box, max_px, overlap):
    x, y, w, h = box
    parts = split_canvas(box, max_px=max_px, overlap=overlap)
    hits = np.zeros((h, w), int)
    for px, py, pw, ph in parts:
        assert x <= px and y <= py and px + pw <= x + w and py + ph <= y + h  # inside the box
        assert pw <= max_px and ph <= max_px
        hits[py - y : py - y + ph, px - x : px - x + pw] += 1
    assert hits.min() >= 1  # covered
    if w <= max_px and h <= max_px:
        assert parts == [box]
    xs = sorted({p[0] for p in parts})
    ys = sorted({p[1] for p in parts})
    widths = {p[0]: p[2] for p in parts}
    heights = {p[1]: p[3] for p in parts}
    for a, b in itertools.pairwise(xs):
        assert a + widths[a] - b >= overlap  # neighbours overlap by at least ``overlap``
    for a, b in itertools.pairwise(ys):
        assert a + heights[a] - b >= overlap
    assert parts == sorted(parts, key=lambda p: (p[1], p[0]))  # raster order


def test_the_smallest_allowed_canvas_budget_stains(baseline, stain_slides, tmp_path):
    """The smallest budget check_stain_config accepts (two sub-canvas cross-fades) stains; one less is refused."""
    res = _stain(stain_slides["a"], baseline, tmp_path / "a.tiff", StainConfig(max_canvas_px=2 * CANVAS_BLEND_PX))
    assert res.output.is_file()
    with pytest.raises(InputError, match="max_canvas_px"):
        _stain(stain_slides["a"], baseline, tmp_path / "b.tiff", StainConfig(max_canvas_px=2 * CANVAS_BLEND_PX - 1))


def test_a_region_larger_than_the_canvas_budget_is_complete_seam_free_and_close_to_one_canvas(
        baseline, stain_slides, tmp_path):
    one = _stain(stain_slides["core"], baseline, tmp_path / "one.tiff", StainConfig())
    many = _stain(stain_slides["core"], baseline, tmp_path / "many.tiff", StainConfig(max_canvas_px=128))
    with open_slide(stain_slides["core"]) as s:
        (box,), _ = tissue_regions(s, StainConfig(), out_mpp=1.0)
    parts = split_canvas(box, max_px=128, overlap=64)
    assert len(parts) == 9  # a 236×232 box: 3×3 sub-canvases
    a, b = _read(one.output).astype(float), _read(many.output).astype(float)
    white_a, white_b = a.min(axis=2) >= 250, b.min(axis=2) >= 250
    assert (white_a == white_b).mean() > 0.999  # complete: no hole where a sub-canvas is missing
    tissue = ~white_a & ~white_b
    assert tissue.sum() > 25_000
    diff = np.abs(a - b).mean(axis=2)[tissue].mean()
    unrelated = np.abs(a - np.roll(a, 6, axis=1)).mean(axis=2)[tissue].mean()  # the texture 6 px away
    assert diff < 0.5 * unrelated, (diff, unrelated)
    for c in range(3):
        assert np.corrcoef(a[..., c][tissue], b[..., c][tissue])[0, 1] > 0.85
    # Seam-free: gradients across the sub-canvas edges are like gradients anywhere in the core.
    x, y, w, h = box
    inner_y, inner_x = slice(y + 40, y + h - 40), slice(x + 40, x + w - 40)
    gx = np.abs(np.diff(b, axis=1)).mean(axis=2)  # gx[:, i]: between columns i and i+1
    gy = np.abs(np.diff(b, axis=0)).mean(axis=2)
    cols = sorted({e - 1 for px, _, pw, _ in parts for e in (px, px + pw) if x + 40 < e < x + w - 40})
    rows = sorted({e - 1 for _, py, _, ph in parts for e in (py, py + ph) if y + 40 < e < y + h - 40})
    assert len(cols) >= 3 and len(rows) >= 3
    assert gx[inner_y][:, cols].mean() / gx[inner_y, inner_x].mean() < 1.15
    assert gy[rows][:, inner_x].mean() / gy[inner_y, inner_x].mean() < 1.15


# ---------------------------------------------------------------------------------------------
# One canvas
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size_hw", [(37, 90), (1, 5), (70, 40)])
def test_stain_canvas_returns_the_input_size_in_range(ldm, baseline, size_hw):
    x = torch.rand((1, 2, *size_hw), generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = StainConfig(steps=1, samples=2)
    for model in (ldm, baseline):
        out = model.stain_canvas(x, cfg, seed=3)
        assert out.shape == (2, 3, *size_hw) and torch.isfinite(out).all()
        assert float(out.min()) >= -1 and float(out.max()) <= 1
        assert torch.equal(out[0], out[1]) == (model is baseline)  # ldm: two samples, two noises


def test_a_core_is_one_window_when_attention_is_cheap_and_several_when_it_is_not(ldm):
    """The window cost model: the shipped demo model attends only at 1/4 of its latent resolution, so a
    canvas of up to single_window_scale tiles (a TMA core) is one window, with no overlap and no
    borders, and one unit larger several of 1–1.5 tiles. The ci model attends at 1/2: one window of
    three tiles would cost more than tiles, so it gets tiles."""
    demo = StainModel.load(ROOT / "data" / "checkpoints" / "ldm")
    tile, unit = demo.tile_px // demo.f, demo.multiple
    cfg = StainConfig(steps=2)
    side = int(cfg.single_window_scale * tile) // unit * unit
    assert demo.ldm_windows(side, tile, cfg)[0] == (side, tile)
    (wy, wx), _ = demo.ldm_windows(side + unit, tile, cfg)
    assert tile <= wy <= 1.5 * tile and wx == tile
    assert demo.ldm_windows(side, side, StainConfig(single_window_scale=1))[0][0] <= 1.5 * tile
    shapes = []
    hook = demo.net.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))
    try:
        x = torch.rand((1, 2, side * demo.f, 2 * tile * demo.f), generator=torch.Generator().manual_seed(3)) * 2 - 1
        out = demo.stain_canvas(x, cfg, seed=0)
    finally:
        hook.remove()
    assert shapes == [(1, demo.net.latent_channels, side, 2 * tile)] * 2  # 2 steps, one whole-canvas window each
    assert out.shape == (1, 3, *x.shape[-2:]) and torch.isfinite(out).all()

    tile = ldm.tile_px // ldm.f
    side = 3 * tile
    cost = ldm.window_cost
    assert cost.per_px2 > 0 and cost.attention_px2 > 0
    win, overlap = ldm.ldm_windows(side, side, cfg)
    n = len(window_grid((side, side), window=win, overlap=overlap))
    assert n > 1 and all(tile <= v <= 1.5 * tile for v in win)
    assert n * cost.flops(win) < cost.flops((side, side))  # cheaper than the one big window


@pytest.mark.parametrize("kind", ["ldm", "baseline"])
def test_windows_far_from_tissue_are_skipped_and_tissue_is_stained_the_same(ldm, baseline, kind):
    """Background skipping: with a tissue map, windows farther than SKIP_MARGIN_PX from tissue are not
    run through the network (fewer evaluations), the LDM decodes only tiles under tissue, and the
    tissue's pixels come out as without skipping."""
    model = ldm if kind == "ldm" else baseline
    x = torch.rand((1, 2, 256, 512), generator=torch.Generator().manual_seed(1)) * 2 - 1
    tissue = np.zeros((256, 512), np.float32)
    tissue[40:120, 30:130] = 1  # a piece in the top-left corner of a wide canvas
    seen, decoded = [], []
    hook = model.net.register_forward_hook(lambda _m, args, _out: seen.append(int(args[0].shape[0])))
    if model.ae is not None:
        decode = model.ae.decode
        model.ae.decode = lambda z: (decoded.append(z.shape[0] * z.shape[-2] * z.shape[-1]), decode(z))[1]
    try:
        cfg = StainConfig(steps=2)
        full = model.stain_canvas(x, cfg, seed=0)
        n_full, d_full = sum(seen), sum(decoded)
        seen.clear(), decoded.clear()
        skip = model.stain_canvas(x, cfg, seed=0, tissue=tissue)
        n_skip, d_skip = sum(seen), sum(decoded)
    finally:
        hook.remove()
        if model.ae is not None:
            del model.ae.decode  # back to the class's method
    assert 0 < n_skip < 0.6 * n_full
    if model.ae is not None:  # latent px decoded
        assert 0 < d_skip < 0.6 * d_full
    piece = (slice(None), slice(None), slice(40, 120), slice(30, 130))
    assert float((full[piece] - skip[piece]).abs().max()) < 0.02


# ---------------------------------------------------------------------------------------------
# Canvases sampled together, reading and writing beside the model, precision and provenance
# ---------------------------------------------------------------------------------------------
def test_canvases_sampled_together_are_the_canvases_sampled_alone(ldm, baseline):
    """stain_batch: two canvases of one size and their K samples in shared network calls give what
    each gives alone (same noise per canvas and sample, same windows)."""
    g = torch.Generator().manual_seed(5)
    xs = [torch.rand((1, 2, 96, 128), generator=g) * 2 - 1 for _ in range(2)]
    tissue = np.zeros((96, 128), np.float32)
    tissue[10:80, 20:100] = 1
    for model in (ldm, baseline):
        cfg = StainConfig(steps=2, samples=2, batch_size=16)
        together = model.stain_batch(xs, cfg, seeds=[3, 4], tissues=[tissue, None])
        alone = [model.stain_canvas(xs[0], cfg, seed=3, tissue=tissue), model.stain_canvas(xs[1], cfg, seed=4)]
        for a, b in zip(together, alone, strict=True):
            assert a.shape == b.shape == (2, 3, 96, 128)
            torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
        assert not torch.equal(together[0], together[1])


def test_a_slide_stained_in_grouped_batches_matches_canvas_by_canvas(ldm, stain_runs, tmp_path):
    """group_canvases (on by default on a GPU): the sample's four cores go through the network
    together; each is padded to the batch's size, so pixels move a little, not the staining."""
    slide = stain_runs["sample"] / "unstained.tiff"
    one = _stain(slide, ldm, tmp_path / "one" / "s.tiff", StainConfig(steps=2, group_canvases=False))
    grouped = _stain(slide, ldm, tmp_path / "grouped" / "s.tiff", StainConfig(steps=2, group_canvases=True,
                                                                              batch_size=64))
    meta_one, meta_grouped = (json.loads(r.provenance.read_text()) for r in (one, grouped))
    assert meta_one["regions"] == meta_grouped["regions"] == 4
    assert meta_one["batches"] == 4 and meta_grouped["batches"] < 4
    other = _stain(slide, ldm, tmp_path / "seed" / "s.tiff", StainConfig(steps=2, group_canvases=False, seed=5))
    a, b, c = (_read(r.output).astype(float) for r in (one, grouped, other))
    tissue = a.min(axis=2) < 230
    assert tissue.mean() > 0.1
    # An untrained model follows its noise: another seed is another picture; grouping is the same one
    # (each canvas keeps its own noise; its windows are laid out on the batch's size).
    diff, unrelated = (np.abs(a - o).mean(axis=2)[tissue].mean() for o in (b, c))
    assert diff < 0.3 * unrelated, (diff, unrelated)
    for k in range(3):
        assert np.corrcoef(a[..., k][tissue], b[..., k][tissue])[0, 1] > 0.93


def test_reading_and_writing_in_threads_changes_no_pixel(ldm, stain_slides, tmp_path):
    cfgs = {"threads": StainConfig(steps=2, samples=2, tissue=PIECE), "inline": StainConfig(steps=2, samples=2,
                                                                                           tissue=PIECE, prefetch=False)}
    res = {k: _stain(stain_slides["piece"], ldm, tmp_path / k / "piece.tiff", c) for k, c in cfgs.items()}
    assert np.array_equal(_read(res["threads"].output), _read(res["inline"].output))
    assert np.array_equal(_read(res["threads"].uncertainty), _read(res["inline"].uncertainty))


def test_a_read_that_fails_in_the_reader_thread_fails_the_slide_and_leaves_nothing(baseline, stain_slides, tmp_path):
    class Failing(ArrayReader):
        reads = 0

        def read_at_mpp(self, *args, **kwargs):
            Failing.reads += 1
            if Failing.reads == 2:
                raise InputError(f"{self.name}: truncated tile")
            return super().read_at_mpp(*args, **kwargs)

    img = np.concatenate([_read(stain_slides["a"]), _read(stain_slides["b"])], axis=1)
    slide = Failing(img, mpp=0.5)
    with pytest.raises(InputError, match="truncated tile"):
        stain_slide(slide, baseline, tmp_path / "out" / "o.tiff", StainConfig())
    assert Failing.reads == 2
    assert not list((tmp_path / "out").iterdir())  # no output, no work folder


def test_bf16_staining_on_the_cpu_is_recorded_and_close_to_fp32(stain_runs, stain_slides, tmp_path):
    runs = {}
    for precision in ("fp32", "bf16"):
        model = StainModel.load(stain_runs["ldm"], precision=precision)
        assert model.precision == precision
        runs[precision] = _stain(stain_slides["piece"], model, tmp_path / precision / "piece.tiff",
                                 StainConfig(steps=2, tissue=PIECE))
    meta = json.loads(runs["bf16"].provenance.read_text())
    assert (meta["device"], meta["precision"], meta["attention"]) == ("cpu", "bf16", "sdpa")
    a, b = (_read(r.output).astype(float) for r in runs.values())
    tissue = a.min(axis=2) < 230
    assert tissue.sum() > 500 and not np.array_equal(a, b)
    assert np.abs(a - b).mean(axis=2)[tissue].mean() < 4


def test_fp16_staining_on_a_cpu_is_refused(stain_runs):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    with pytest.raises(InputError, match=r"^precision fp16 needs a CUDA GPU"):
        StainModel.load(stain_runs["ldm"], precision="fp16")
