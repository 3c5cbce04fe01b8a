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
SMALL_TILES = ("--set", "tiles.size=64", "--set", "tiles.stride=64")


def _make_small_sample(out: Path, modality: str, seed: int) -> Path:
    from pipelines.cli import main

    assert main(["make-sample", "--out", str(out), "--modality", modality, "--seed", str(seed), "--quiet",
                 "--set", *SMALL_TMA]) == 0
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
def small_store(small_af_pair, tmp_path_factory) -> Path:
    """``stainldm prepare`` of ``small_af_pair`` with its truth (slide id ``af``, 64 px tiles; ~3 s).

    Shared: tests that change a store copy it first.
    """
    from pipelines.cli import main

    out = tmp_path_factory.mktemp("small_store") / "store"
    assert main(["prepare", "--unstained", str(small_af_pair / "unstained.tiff"), "--stained",
                 str(small_af_pair / "stained.tiff"), "--truth", str(small_af_pair / "truth.json"),
                 "--slide-id", "af", "--out", str(out), "--quiet", *SMALL_TILES]) == 0
    return out


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
    from pipelines.cli import main
    from stainldm.data.store import TileStore

    base = tmp_path_factory.mktemp("train_store")
    assert main(["make-sample", "--out", str(base / "sample"), "--quiet", "--set", *TRAIN_TMA]) == 0
    assert main(["prepare", "--unstained", str(base / "sample" / "unstained.tiff"), "--stained",
                 str(base / "sample" / "stained.tiff"), "--out", str(base / "store"), "--config", str(TRAIN_CI_CONFIG),
                 "--quiet"]) == 0
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
    from pipelines.train import load_train_config

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
