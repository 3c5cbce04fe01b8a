"""Shared fixtures: tiny real slides written with our writer, the bundled CMU sample, no network."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CMU_SAMPLE = ROOT / "data" / "samples" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def cmu_path() -> Path:
    assert CMU_SAMPLE.is_file(), f"bundled sample missing: {CMU_SAMPLE}"
    return CMU_SAMPLE


@pytest.fixture(scope="session")
def he_image(cmu_path) -> np.ndarray:
    """The real H&E sample at level 0 as an (H, W, 3) uint8 array."""
    from stainldm.wsi.reader import open_slide

    with open_slide(cmu_path) as slide:
        return slide.read_region((0, 0), slide.dimensions)


# ---------------------------------------------------------------------------------------------
# Small synthetic TMA pairs and a prepared tile store, made once per session
# ---------------------------------------------------------------------------------------------
# 2×3 grid, one position empty: five 300 µm cores (600 px at 0.5 µm/px), one of them test. Five
# cores keep dearraying well above its four-piece TMA threshold; 300 µm cores meet the
# registration goal with the default register.tile_px (256), which 200 µm cores do not.
SMALL_TMA = ("grid.rows=2", "grid.cols=3", "grid.core_diameter_um=300", "grid.gap_um=100", "grid.test_cores=1")
SMALL_TILES = ("tiles.size=64", "tiles.stride=64")


def _make_small_sample(out: Path, modality: str, seed: int, *overrides: str) -> Path:
    from stainldm.config import load_config
    from stainldm.data.sample_files import make_sample
    from stainldm.data.synthetic import SampleConfig

    make_sample(out, load_config(SampleConfig, overrides=[*SMALL_TMA, f"modality={modality}", f"seed={seed}",
                                                          *overrides]))
    return out


def _prepare(out: Path, sample: Path, *, config: Path | None = None, overrides=(), truth: bool = False,
             slide_id: str | None = None) -> Path:
    """``stainldm prepare`` of a make-sample folder, through the library."""
    from stainldm.data.pairs import load_prepare_config
    from stainldm.data.prepare import SlidePair, prepare_pair

    pair = SlidePair.from_paths(sample / "unstained.tiff", sample / "stained.tiff",
                                truth=sample / "truth.json" if truth else None, slide_id=slide_id)
    prepare_pair(out, pair, load_prepare_config(config, overrides))
    return out


@pytest.fixture(scope="session")
def small_af_pair(tmp_path_factory) -> Path:
    """A 2×3 autofluorescence make-sample pair (seed 0): unstained.tiff, stained.tiff, truth.json (~3 s)."""
    return _make_small_sample(tmp_path_factory.mktemp("af_pair"), "autofluorescence", 0)


@pytest.fixture(scope="session")
def small_bf_pair(tmp_path_factory) -> Path:
    """A 2×3 brightfield make-sample pair (seed 1: other tissue than ``small_af_pair``) (~3 s)."""
    return _make_small_sample(tmp_path_factory.mktemp("bf_pair"), "brightfield", 1)


@pytest.fixture(scope="session")
def small_real_pair(tmp_path_factory) -> Path:
    """``small_af_pair`` with make-sample's realism on: structures only one scan shows (deposits and
    pigment in the H&E, granules and debris in the autofluorescence, dust, dropped nuclei), each
    scan its own blur (~5 s)."""
    return _make_small_sample(tmp_path_factory.mktemp("real_pair"), "autofluorescence", 0, "realism.enabled=true")


@pytest.fixture(scope="session")
def small_store(small_af_pair, tmp_path_factory) -> Path:
    """``stainldm prepare`` of ``small_af_pair`` with its truth (slide id ``af``, 64 px tiles; ~3 s).

    Shared: tests that change a store copy it first.
    """
    out = tmp_path_factory.mktemp("small_store") / "store"
    return _prepare(out, small_af_pair, overrides=SMALL_TILES, truth=True, slide_id="af")


# ---------------------------------------------------------------------------------------------
# Training: one tile store (configs/ci.yaml prepare settings) and one autoencoder run per session
# ---------------------------------------------------------------------------------------------
TRAIN_CI_CONFIG = ROOT / "configs" / "ci.yaml"
# 2×2 grid of four 250 µm cores: dearrays into four cores, which the seeded split draw puts into
# train, val and test (64 px tiles at 1 µm/px, ~140 tiles; make-sample + prepare ~10 s).
TRAIN_TMA = ("grid.rows=2", "grid.cols=2", "grid.missing=0", "grid.core_diameter_um=250", "grid.gap_um=150")
# Faster than configs/ci.yaml as it stands, same architectures: 2 tiles a step, 2 validation tiles.
TRAIN_FAST = ("data.batch_size=2", "val_tiles=2", "sample_steps=2")


@pytest.fixture(scope="session")
def train_store(tmp_path_factory) -> Path:
    """A tile store with train, val and test tiles (2-channel uint16 autofluorescence, 64 px)."""
    from stainldm.config import load_config
    from stainldm.data.sample_files import make_sample
    from stainldm.data.store import TileStore
    from stainldm.data.synthetic import SampleConfig

    base = tmp_path_factory.mktemp("train_store")
    make_sample(base / "sample", load_config(SampleConfig, overrides=TRAIN_TMA))
    _prepare(base / "store", base / "sample", config=TRAIN_CI_CONFIG)
    store = TileStore.open(base / "store")
    assert {r.split for r in store.rows} == {"train", "val", "test"}, "the training store needs every split"
    assert store.tile_px == 64 and store.channels_in == 2
    return base / "store"


@pytest.fixture(scope="session")
def train_bf_store(tmp_path_factory) -> Path:
    """A tiny 1-channel uint8 (brightfield) store written directly: 6 train + 2 val tiles, no test."""
    from stainldm.data.store import TileRow, TileStore

    root = tmp_path_factory.mktemp("train_bf_store") / "store"
    rng = np.random.default_rng(7)
    store = TileStore.create(root, tile_px=64, channels_in=1, dtype_in="uint8")
    unstained = rng.integers(0, 256, size=(8, 64, 64, 1), dtype=np.uint8)
    stained = rng.integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
    rows = [TileRow("bf", "A1" if i < 6 else "B1", "train" if i < 6 else "val", 64 * i, 0, 1.0, 1.0, 0.5, 0.5)
            for i in range(8)]
    store.append(unstained, stained, rows)
    return root


@pytest.fixture(scope="session")
def train_config():
    """``make(*overrides)``: the ``train:`` section of configs/ci.yaml, made faster, with --set overrides."""
    from stainldm.train.config import load_train_config

    def make(*overrides: str):
        return load_train_config(TRAIN_CI_CONFIG, [*TRAIN_FAST, *overrides])

    return make


@pytest.fixture(scope="session")
def train_ae_run(train_store, train_config, tmp_path_factory) -> Path:
    """An autoencoder trained for the 6 steps of configs/ci.yaml (shared: copy it before changing it)."""
    from stainldm.train.loop import Trainer

    run = tmp_path_factory.mktemp("train_ae") / "ae"
    Trainer(kind="autoencoder", cfg=train_config(), run_dir=run, store=train_store, device="cpu").train()
    return run


# ---------------------------------------------------------------------------------------------
# Evaluation: ci.yaml models trained on ``train_store``, their stained slides and one report
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def eval_runs(train_store, train_ae_run, train_config, tmp_path_factory) -> dict[str, Path]:
    """An ldm and a baseline trained on ``train_store`` (configs/ci.yaml, 6 steps) and the store's
    slide stained with the ldm (``pred_ldm``: 1 sampler step, 2 samples, so with an uncertainty map)."""
    from stainldm.inference.batch import stain_slides
    from stainldm.inference.config import StainConfig
    from stainldm.inference.model import StainModel
    from stainldm.train.loop import Trainer

    base = tmp_path_factory.mktemp("eval_runs")
    Trainer(kind="ldm", cfg=train_config(), run_dir=base / "ldm", store=train_store, device="cpu",
            autoencoder_run=train_ae_run).train()
    Trainer(kind="baseline", cfg=train_config(), run_dir=base / "baseline", store=train_store, device="cpu").train()
    slide = train_store.parent / "sample" / "unstained.tiff"
    outcomes = stain_slides([slide], StainModel.load(base / "ldm", device="cpu"), base / "pred_ldm",
                            StainConfig(steps=1, samples=2))
    assert [o.status for o in outcomes] == ["done"]
    return {"store": train_store, "slide": slide, "ldm": base / "ldm", "baseline": base / "baseline",
            "pred_ldm": base / "pred_ldm"}


@pytest.fixture(scope="session")
def eval_report(eval_runs, tmp_path_factory) -> dict:
    """The evaluation of the ldm prediction, the baseline run (stained on the fly) and the colour map on
    the test split, through the library as a notebook would: ``{"out": folder, "result": Evaluation,
    "summary": summary}`` (``stainldm evaluate``'s own fixture is in tests/pipelines/test_evaluate.py)."""
    from stainldm.eval.evaluate import EvalData, colour_map_method, evaluate, write_evaluation
    from stainldm.eval.predictions import load_methods

    out = tmp_path_factory.mktemp("eval_report") / "report"
    data = EvalData.open(eval_runs["store"])
    methods = load_methods(data.unstained, preds=[eval_runs["pred_ldm"]], baselines=[eval_runs["baseline"]], out=out,
                           device="cpu")
    methods.append(colour_map_method(data.store, seed=0))
    result = evaluate(data, methods, gallery_dir=out / "gallery")
    summary, _ = write_evaluation(out, result, store=eval_runs["store"], split="test")
    return {"out": out, "result": result, "summary": summary}


# ---------------------------------------------------------------------------------------------
# Staining: the whole pipeline once per session, and small unstained slides
# ---------------------------------------------------------------------------------------------
# 2×2 grid of 200 µm cores (a 1720² px, 0.5 µm/px slide). grid.missing=0 matters: with make-sample's
# default missing core the three left are not dearrayed as a TMA, and configs/ci.yaml's split then
# puts every tile in train (no val tiles: training refuses the store).
STAIN_TMA = ("grid.rows=2", "grid.cols=2", "grid.missing=0", "grid.core_diameter_um=200", "grid.gap_um=60",
             "grid.test_cores=1")
# configs/ci.yaml's 6 steps, with fewer tiles a step and in validation (as TRAIN_FAST).
STAIN_TRAIN_FAST = ("data.batch_size=2", "val_tiles=2", "sample_steps=2")


@pytest.fixture(scope="session")
def stain_runs(tmp_path_factory) -> dict[str, Path]:
    """make-sample -> prepare -> train autoencoder, ldm, baseline (configs/ci.yaml) through the library:
    ``{"sample", "store", "ae", "ldm", "baseline"}`` (~30 s)."""
    from stainldm.config import load_config
    from stainldm.data.sample_files import make_sample
    from stainldm.data.store import TileStore
    from stainldm.data.synthetic import SampleConfig
    from stainldm.train.config import load_train_config, resolve_config
    from stainldm.train.loop import Trainer

    base = tmp_path_factory.mktemp("stain_runs")
    sample, store = base / "sample", base / "store"
    make_sample(sample, load_config(SampleConfig, overrides=STAIN_TMA))
    _prepare(store, sample, config=TRAIN_CI_CONFIG)
    splits = {r.split for r in TileStore.open(store).rows}
    assert {"train", "val"} <= splits, f"the staining sample needs train and val tiles, got {splits}"
    for kind, run in (("autoencoder", "ae"), ("ldm", "ldm"), ("baseline", "baseline")):
        ae = base / "ae" if kind == "ldm" else None
        cfg = resolve_config(load_train_config(TRAIN_CI_CONFIG, STAIN_TRAIN_FAST), store=store, autoencoder_run=ae,
                             wandb="disabled")
        Trainer(kind=kind, cfg=cfg, run_dir=base / run, store=store, device="cpu", autoencoder_run=ae).train()
    return {"sample": sample, "store": store, "ae": base / "ae", "ldm": base / "ldm", "baseline": base / "baseline"}


@pytest.fixture(scope="session")
def stain_slides(stain_runs, tmp_path_factory) -> dict[str, Path]:
    """Small 2-channel uint16 slides (0.5 µm/px) cut from ``stain_runs``' sample, on its own glass:

    * ``core``: core A1 near the left of 2201×601 px of glass (1101×301 px at the model's 1 µm/px:
      two pyramid levels, and glass 800 px from any tissue);
    * ``piece``: a 121² px square from inside core B2 on 601×401 px of glass (a 61 µm piece: found
      with ``TissueConfig(min_area_um2=2000)``; a 96² px canvas, so the LDM stains it in a second);
    * ``a``, ``b``, ``c``: 481² px crops around cores A2, B1, B2 (tissue about half of each);
    * ``empty``: dark glass only (no tissue).
    """
    import json

    from stainldm.wsi.reader import open_slide
    from stainldm.wsi.writer import write_pyramid

    sample = stain_runs["sample"]
    with open_slide(sample / "unstained.tiff") as slide:
        u = slide.read_region((0, 0), slide.dimensions)  # (1720, 1720, 2) uint16
    centres = {c["id"]: [round(v) for v in c["center_unstained_xy"]]
               for c in json.loads((sample / "truth.json").read_text())["cores"]}
    glass = u[:240, :240]  # the slide's corner: glass (cores start ~390 px in)
    reps = np.ceil(np.array([601, 2201]) / 240).astype(int)
    out = tmp_path_factory.mktemp("stain_slides")

    def crop(core: str, r: int) -> np.ndarray:
        x, y = centres[core]
        return u[y - r : y + r + 1, x - r : x + r + 1]

    slide = np.tile(glass, (*reps, 1))[:601, :2201].copy()
    slide[40 : 40 + 441, 40 : 40 + 441] = crop("A1", 220)
    write_pyramid(out / "core.tiff", slide, mpp=0.5)
    piece = np.tile(glass, (2, 3, 1))[:401, :601].copy()
    x, y = centres["B2"]
    piece[100:221, 100:221] = u[y - 60 : y + 61, x - 60 : x + 61]
    write_pyramid(out / "piece.tiff", piece, mpp=0.5)
    for name, core in (("a", "A2"), ("b", "B1"), ("c", "B2")):
        write_pyramid(out / f"{name}.tiff", crop(core, 240), mpp=0.5)
    dark = np.random.default_rng(0).poisson(150, (400, 400, 2)).astype(np.uint16)
    write_pyramid(out / "empty.tiff", dark, mpp=0.5)
    return {name: out / f"{name}.tiff" for name in ("core", "piece", "a", "b", "c", "empty")}
