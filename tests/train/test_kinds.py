"""The per-kind parts of training, chosen by name: what each kind refuses before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stainldm.errors import ConfigError
from stainldm.models.baseline import BaselineUNet
from stainldm.train.config import TrainConfig
from stainldm.train.kinds import AutoencoderKind, BaselineKind, make_kind

CPU = torch.device("cpu")


def _kind(name: str, *, tile_px: int = 64, **kwargs):
    return make_kind(name, TrainConfig(), in_channels=2, tile_px=tile_px, store=Path("store"), device=CPU, **kwargs)


def test_make_kind_picks_the_class_by_name():
    assert isinstance(_kind("autoencoder"), AutoencoderKind) and isinstance(_kind("baseline"), BaselineKind)
    assert _kind("baseline").section == TrainConfig().baseline
    assert isinstance(_kind("baseline").build_model(), BaselineUNet)


def test_an_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown model kind 'gan'; use autoencoder, ldm or baseline"):
        _kind("gan")


def test_the_ldm_without_an_autoencoder_names_the_parameter():
    with pytest.raises(ConfigError, match=r"training the ldm needs a trained autoencoder: pass `autoencoder_run`"):
        _kind("ldm", autoencoder_run=None)


@pytest.mark.parametrize("tile_px", [24, 40])
def test_baseline_tiles_too_small_or_uneven_are_a_config_error(tile_px):
    with pytest.raises(ConfigError, match=rf"tiles of {tile_px} px are too small or uneven for the baseline U-Net"):
        _kind("baseline", tile_px=tile_px)


def test_kinds_without_a_discriminator_give_no_fake_and_validate_on_the_unstained_tile():
    task = _kind("baseline")
    x, y = torch.zeros(1, 2, 8, 8), torch.ones(1, 3, 8, 8)
    assert task.build_loss(CPU) is None and task.take_fake() is None and task.validation_input(x, y) is x
    assert _kind("autoencoder").validation_input(x, y) is y  # the autoencoder reconstructs H&E
