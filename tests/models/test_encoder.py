"""Condition encoders: the spatial stem's resolution, the timm backbone's tokens, local weights only."""

from __future__ import annotations

import pytest
import torch

from stainldm.errors import ConfigError
from stainldm.models.encoder import ConditionConfig, SemanticEncoder, SpatialStem, check_condition_config


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_spatial_stem_maps_the_tile_to_latent_resolution(factor):
    stem = SpatialStem(in_channels=2, out_channels=16, downsampling=factor)
    out = stem(torch.randn(3, 2, 64, 64))
    assert out.shape == (3, 16, 64 // factor, 64 // factor)


def test_spatial_stem_without_downsampling_keeps_the_resolution():
    assert SpatialStem(in_channels=1, out_channels=8, downsampling=1)(torch.randn(1, 1, 16, 16)).shape == (1, 8, 16, 16)


def test_semantic_encoder_gives_b_s_d_tokens_from_a_two_channel_tile():
    torch.manual_seed(0)
    enc = SemanticEncoder(ConditionConfig(semantic=True, backbone="resnet18", token_dim=48), in_channels=2).eval()
    with torch.no_grad():
        tokens = enc(torch.randn(2, 2, 64, 64))
    # resnet18's last feature map has stride 32: 64 px -> 2×2 = 4 tokens
    assert tokens.shape == (2, 4, 48)
    assert torch.isfinite(tokens).all()


def test_frozen_backbone_has_no_trainable_weights_but_the_projection_trains():
    enc = SemanticEncoder(ConditionConfig(semantic=True, freeze_backbone=True, token_dim=16), in_channels=3)
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    assert all(p.requires_grad for p in enc.proj.parameters()) and enc.pos.requires_grad


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    """A local resnet18 weights file (random weights, saved as timm's own state dict)."""
    import timm

    torch.manual_seed(1)
    state = timm.create_model("resnet18", features_only=False, in_chans=3).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_a_local_backbone_weights_file_is_loaded_and_adapted_to_the_input_channels(resnet18_weights):
    path, saved = resnet18_weights
    enc3 = SemanticEncoder(ConditionConfig(semantic=True, backbone_weights=str(path)), in_channels=3)
    assert torch.equal(enc3.backbone.conv1.weight, saved["conv1.weight"])
    assert torch.equal(enc3.backbone.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])
    # timm adapts the first convolution: 2 channels repeat the RGB filters' first two, scaled by 3/2 ...
    enc2 = SemanticEncoder(ConditionConfig(semantic=True, backbone_weights=str(path)), in_channels=2)
    assert torch.allclose(enc2.backbone.conv1.weight, saved["conv1.weight"][:, :2] * 1.5)
    assert torch.equal(enc2.backbone.layer1[0].conv1.weight, saved["layer1.0.conv1.weight"])
    # ... and 1 channel (brightfield gray) sums them
    enc1 = SemanticEncoder(ConditionConfig(semantic=True, backbone_weights=str(path)), in_channels=1)
    assert torch.allclose(enc1.backbone.conv1.weight, saved["conv1.weight"].sum(1, keepdim=True))


def test_a_missing_backbone_weights_file_is_a_config_error(tmp_path):
    missing = tmp_path / "resnet18.pth"
    with pytest.raises(ConfigError, match=r"ldm\.condition\.backbone_weights: .*resnet18\.pth is not a file"):
        SemanticEncoder(ConditionConfig(semantic=True, backbone_weights=str(missing)), in_channels=2)


def test_a_backbone_weights_file_that_is_not_weights_is_a_config_error(tmp_path):
    bad = tmp_path / "resnet18.pth"
    bad.write_bytes(b"\x00not a torch file" * 64)
    with pytest.raises(ConfigError, match=r"ldm\.condition\.backbone_weights: .*resnet18\.pth is not a readable weights"):
        SemanticEncoder(ConditionConfig(semantic=True, backbone_weights=str(bad)), in_channels=2)


def test_backbone_weights_of_an_unrelated_network_are_a_config_error(tmp_path):
    import timm

    path = tmp_path / "efficientnet.pth"
    torch.save(timm.create_model("efficientnet_b0").state_dict(), path)
    with pytest.raises(ConfigError, match=r"efficientnet\.pth does not match backbone 'resnet18'"):
        SemanticEncoder(ConditionConfig(semantic=True, backbone_weights=str(path)), in_channels=2)


def test_backbone_weights_of_a_bigger_sibling_network_are_a_config_error(tmp_path):
    import timm

    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(ConfigError, match=r"resnet34\.pth|layer1\.2"):
        SemanticEncoder(ConditionConfig(semantic=True, backbone_weights=str(path)), in_channels=2)


def test_an_unknown_backbone_name_is_a_config_error():
    cfg = ConditionConfig(semantic=True, backbone="resnet_does_not_exist")
    with pytest.raises(ConfigError, match=r"ldm\.condition\.backbone 'resnet_does_not_exist' is not a timm model"):
        check_condition_config(cfg)
    with pytest.raises(ConfigError, match=r"ldm\.condition\.backbone 'resnet_does_not_exist': timm cannot build it"):
        SemanticEncoder(cfg, in_channels=2)


@pytest.mark.parametrize(("cfg", "match"), [
    (ConditionConfig(spatial=False, semantic=False), r"at least one of spatial and semantic"),
    (ConditionConfig(dropout=1.0), r"ldm\.condition\.dropout \(1\.0\) must be in \[0, 1\)"),
    (ConditionConfig(dropout=-0.1), r"ldm\.condition\.dropout"),
    (ConditionConfig(spatial_channels=12), r"ldm\.condition\.spatial_channels \(12\) must be a multiple of 8"),
])
def test_bad_condition_settings_are_config_errors_naming_the_key(cfg, match):
    with pytest.raises(ConfigError, match=match):
        check_condition_config(cfg)
