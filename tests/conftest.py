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
