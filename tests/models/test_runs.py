"""The model registry: build any kind from its config, load any run folder, and every broken file
(weights of another architecture, a corrupt safetensors, a model.json that is not ours)."""

from __future__ import annotations

import collections
import json
import os

import pytest
import torch

from stainldm.diffusion.schedule import ScheduleConfig
from stainldm.errors import CheckpointError, ConfigError
from stainldm.models import runs
from stainldm.models.autoencoder import AutoencoderConfig, build_autoencoder
from stainldm.models.baseline import BaselineConfig, BaselineUNet
from stainldm.models.denoiser import DenoiserConfig
from stainldm.models.encoder import ConditionConfig
from stainldm.models.ldm import LatentDiffusion, LDMConfig

SMALL = BaselineConfig(features=(4, 4, 8, 8, 16, 4))
AE = AutoencoderConfig(channels=(8, 16), latent_channels=4, norm_num_groups=8)
LDM = LDMConfig(denoiser=DenoiserConfig(channels=(16, 32), attention_levels=(False, True), num_head_channels=16,
                                        norm_num_groups=8),
                condition=ConditionConfig(spatial=True, spatial_channels=8), schedule=ScheduleConfig())


def _net(seed: int, cfg: BaselineConfig = SMALL, in_channels: int = 2) -> BaselineUNet:
    torch.manual_seed(seed)
    return BaselineUNet(cfg, in_channels=in_channels).eval()


@pytest.fixture
def saved(tmp_path):
    net = _net(0)
    path = tmp_path / "model.safetensors"
    runs.save_weights(net, path)
    return net, path


def test_weights_round_trip_into_a_fresh_model_gives_identical_outputs(saved):
    net, path = saved
    fresh = _net(1)
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert not torch.equal(fresh(x), net(x))
        runs.load_weights(fresh, path)
        assert torch.equal(fresh(x), net(x))
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temporary file left behind


def test_weights_of_another_config_name_the_mismatching_tensor(saved):
    _, path = saved
    wider = _net(0, BaselineConfig(features=(8, 4, 8, 8, 16, 4)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'net\.conv_0\.conv_0\.conv\.weight' has shape "
                                              r"\(4, 2, 3, 3\) but this model expects \(8, 2, 3, 3\)"):
        runs.load_weights(wider, path)


def test_weights_with_other_input_channels_are_refused(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match=r"tensor 'net\.conv_0\.conv_0\.conv\.weight' has shape \(4, 2, 3, 3\)"):
        runs.load_weights(_net(0, in_channels=3), path)


def test_weights_of_another_architecture_name_a_missing_tensor(saved):
    _, path = saved
    other = torch.nn.Sequential(collections.OrderedDict(stem=torch.nn.Conv2d(2, 4, 3)))
    with pytest.raises(CheckpointError, match=r"has no tensor 'stem\.weight' that this model needs"):
        runs.load_weights(other, path)


def test_extra_tensors_are_refused_when_strict_and_skipped_when_not(tmp_path):
    big = torch.nn.Sequential(collections.OrderedDict(a=torch.nn.Linear(2, 2), b=torch.nn.Linear(2, 2)))
    path = tmp_path / "big.safetensors"
    runs.save_weights(big, path)
    small = torch.nn.Sequential(collections.OrderedDict(a=torch.nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match=r"big\.safetensors: has tensor 'b\.(weight|bias)' this model does not know"):
        runs.load_weights(small, path)
    runs.load_weights(small, path, strict=False)
    assert torch.equal(small.a.weight, big.a.weight)


def test_a_missing_weights_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing\.safetensors: weights file not found"):
        runs.load_weights(_net(0), tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("damage", ["truncate", "random", "empty"])
def test_a_corrupt_safetensors_file_is_a_checkpoint_error(saved, damage):
    _, path = saved
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(len(data)))
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file.*corrupt"):
        runs.load_weights(_net(0), path)


# -- model.json --------------------------------------------------------------------------------
def test_model_json_round_trip_from_the_file_or_its_folder(tmp_path):
    runs.write_model_json(tmp_path / "model.json", {"kind": "baseline", "in_channels": 2})
    meta = runs.read_model_json(tmp_path, kind="baseline")
    assert meta == {"format": runs.MODEL_FORMAT, "kind": "baseline", "in_channels": 2}
    assert runs.read_model_json(tmp_path / "model.json") == meta


def test_model_json_of_another_kind_is_a_checkpoint_error(tmp_path):
    runs.write_model_json(tmp_path / "model.json", {"kind": "baseline"})
    with pytest.raises(CheckpointError, match=r"model\.json: is a baseline checkpoint, but a autoencoder checkpoint"):
        runs.read_model_json(tmp_path, kind="autoencoder")


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", r"model\.json: not valid JSON; the checkpoint is corrupt"),
    ('{"format": "other-tool/3", "kind": "ldm"}', r"not a stainldm model description \(format 'other-tool/3'"),
    ("{}", r"not a stainldm model description \(format None"),
])
def test_a_model_json_that_is_not_ours_is_a_checkpoint_error(tmp_path, text, match):
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        runs.read_model_json(tmp_path)


def test_model_json_binary_garbage_is_a_checkpoint_error(tmp_path):
    (tmp_path / "model.json").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(CheckpointError, match=r"model\.json: not valid JSON"):
        runs.read_model_json(tmp_path)


def test_a_model_json_holding_a_list_is_a_checkpoint_error(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match=r"model\.json: not a stainldm model description"):
        runs.read_model_json(tmp_path)


def test_a_missing_model_json_says_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match=r"model\.json: not found; pass a training run folder"):
        runs.read_model_json(tmp_path)




# -- build -------------------------------------------------------------------------------------
def test_build_model_makes_each_kind_from_its_own_config():
    assert isinstance(runs.build_model("baseline", SMALL, in_channels=3), BaselineUNet)
    ldm = runs.build_model("ldm", LDM, in_channels=2, latent_channels=4, downsampling=2)
    assert isinstance(ldm, LatentDiffusion) and ldm.latent_channels == 4 and ldm.downsampling == 2
    ae = runs.build_model("autoencoder", AE)
    assert type(ae) is type(build_autoencoder(AE))


def test_an_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown model kind 'gan'; use autoencoder, ldm or baseline"):
        runs.build_model("gan", SMALL, in_channels=2)
    with pytest.raises(ConfigError, match=r"unknown model kind 'gan'"):
        runs.model_config("gan", {})


def test_model_config_reads_a_section_back_and_names_a_bad_key():
    from stainldm.config import to_dict

    assert runs.model_config("ldm", to_dict(LDM)) == LDM
    with pytest.raises(ConfigError, match=r"baseline"):
        runs.model_config("baseline", {"width": 3})


# -- run folders -------------------------------------------------------------------------------
def _meta(kind: str, **extra) -> dict:
    return {"kind": kind, "in_channels": 2, "tile_px": 32, "mpp": 1.0,
            "input_stats": {"low": [0, 0], "high": [1, 1]}, **extra}


def _baseline_run(folder):
    from stainldm.config import to_dict

    net = _net(0)
    folder.mkdir()
    runs.save_weights(net, folder / "model.safetensors")
    runs.write_model_json(folder / "model.json", _meta("baseline", config=to_dict(SMALL)))
    return net


def _ldm_run(folder, *, latent_scale: float = 0.5):
    from stainldm.config import to_dict

    torch.manual_seed(0)
    ldm, ae = LatentDiffusion(LDM, in_channels=2, latent_channels=4, downsampling=2).eval(), build_autoencoder(AE).eval()
    folder.mkdir()
    runs.save_weights(ldm, folder / "model.safetensors")
    runs.save_weights(ae, folder / "autoencoder.safetensors")
    ae_meta = {"config": to_dict(AE), "latent_channels": 4, "downsampling": 2, "latent_scale": latent_scale}
    runs.write_model_json(folder / "model.json", _meta("ldm", config=to_dict(LDM), latent_channels=4, downsampling=2,
                                                         latent_scale=latent_scale, autoencoder=ae_meta))
    return ldm, ae


def test_load_run_of_a_baseline_reproduces_its_outputs(tmp_path):
    net = _baseline_run(tmp_path / "b")
    run = runs.load_run(tmp_path / "b", kind="baseline")
    assert (run.kind, run.folder, run.autoencoder) == ("baseline", tmp_path / "b", None) and not run.model.training
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(run.model(x), net(x))
    assert runs.load_run(tmp_path / "b" / "model.json").meta == run.meta  # its model.json works too


def test_load_run_of_an_ldm_brings_its_autoencoder(tmp_path):
    ldm, ae = _ldm_run(tmp_path / "l")
    run = runs.load_run(tmp_path / "l")
    assert run.kind == "ldm" and run.meta["latent_scale"] == 0.5
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    z, t = torch.randn(1, 4, 16, 16), torch.tensor([10])
    x = torch.rand(1, 2, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(run.autoencoder.reconstruct(y), ae.reconstruct(y))
        assert torch.equal(run.model(z, t, run.model.encode_condition(x)), ldm(z, t, ldm.encode_condition(x)))


def test_load_run_of_another_kind_or_without_its_autoencoder_is_a_checkpoint_error(tmp_path):
    _baseline_run(tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"is a baseline checkpoint, but a ldm checkpoint is needed here"):
        runs.load_run(tmp_path / "b", kind="ldm")
    _ldm_run(tmp_path / "l")
    (tmp_path / "l" / "autoencoder.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"autoencoder\.safetensors: weights file not found"):
        runs.load_run(tmp_path / "l")


def test_a_run_of_a_kind_stainldm_does_not_know_is_a_checkpoint_error(tmp_path):
    runs.write_model_json(tmp_path / "model.json", _meta("gan", config={}))
    with pytest.raises(CheckpointError, match=r"is a gan checkpoint; stainldm knows autoencoder, ldm, baseline runs"):
        runs.load_run(tmp_path)


def test_load_autoencoder_is_frozen_and_needs_a_latent_scale(tmp_path):
    from stainldm.config import to_dict

    folder = tmp_path / "ae"
    folder.mkdir()
    runs.save_weights(build_autoencoder(AE), folder / "model.safetensors")
    meta = _meta("autoencoder", config=to_dict(AE), latent_channels=4, downsampling=2, latent_scale=None)
    runs.write_model_json(folder / "model.json", meta)
    with pytest.raises(CheckpointError, match=r"ae: the autoencoder has no latent_scale in model\.json; finish its"):
        runs.load_autoencoder(folder)
    runs.write_model_json(folder / "model.json", {**meta, "latent_scale": 2.0})
    ae, back = runs.load_autoencoder(folder)
    assert back["latent_scale"] == 2.0 and not ae.training and not any(p.requires_grad for p in ae.parameters())
    _baseline_run(tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"b: is a baseline checkpoint, which holds no autoencoder; pass an "
                                              r"autoencoder run or an ldm run"):
        runs.load_autoencoder(tmp_path / "b")
