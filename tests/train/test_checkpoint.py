"""Checkpoint files: safetensors weights, model.json, state.pt — round trips and every broken file."""

from __future__ import annotations

import collections
import json
import os

import pytest
import torch

from stainldm.errors import CheckpointError
from stainldm.models.baseline import BaselineConfig, BaselineUNet
from stainldm.train import checkpoint as ckpt

SMALL = BaselineConfig(features=(4, 4, 8, 8, 16, 4))


def _net(seed: int, cfg: BaselineConfig = SMALL, in_channels: int = 2) -> BaselineUNet:
    torch.manual_seed(seed)
    return BaselineUNet(cfg, in_channels=in_channels).eval()


@pytest.fixture
def saved(tmp_path):
    net = _net(0)
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(net, path)
    return net, path


def test_weights_round_trip_into_a_fresh_model_gives_identical_outputs(saved):
    net, path = saved
    fresh = _net(1)
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert not torch.equal(fresh(x), net(x))
        ckpt.load_weights(fresh, path)
        assert torch.equal(fresh(x), net(x))
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temporary file left behind


def test_weights_of_another_config_name_the_mismatching_tensor(saved):
    _, path = saved
    wider = _net(0, BaselineConfig(features=(8, 4, 8, 8, 16, 4)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'net\.conv_0\.conv_0\.conv\.weight' has shape "
                                              r"\(4, 2, 3, 3\) but this model expects \(8, 2, 3, 3\)"):
        ckpt.load_weights(wider, path)


def test_weights_with_other_input_channels_are_refused(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match=r"tensor 'net\.conv_0\.conv_0\.conv\.weight' has shape \(4, 2, 3, 3\)"):
        ckpt.load_weights(_net(0, in_channels=3), path)


def test_weights_of_another_architecture_name_a_missing_tensor(saved):
    _, path = saved
    other = torch.nn.Sequential(collections.OrderedDict(stem=torch.nn.Conv2d(2, 4, 3)))
    with pytest.raises(CheckpointError, match=r"has no tensor 'stem\.weight' that this model needs"):
        ckpt.load_weights(other, path)


def test_extra_tensors_are_refused_when_strict_and_skipped_when_not(tmp_path):
    big = torch.nn.Sequential(collections.OrderedDict(a=torch.nn.Linear(2, 2), b=torch.nn.Linear(2, 2)))
    path = tmp_path / "big.safetensors"
    ckpt.save_weights(big, path)
    small = torch.nn.Sequential(collections.OrderedDict(a=torch.nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match=r"big\.safetensors: has tensor 'b\.(weight|bias)' this model does not know"):
        ckpt.load_weights(small, path)
    ckpt.load_weights(small, path, strict=False)
    assert torch.equal(small.a.weight, big.a.weight)


def test_a_missing_weights_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing\.safetensors: weights file not found"):
        ckpt.load_weights(_net(0), tmp_path / "nothing.safetensors")


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
        ckpt.load_weights(_net(0), path)


# -- model.json --------------------------------------------------------------------------------
def test_model_json_round_trip_from_the_file_or_its_folder(tmp_path):
    ckpt.write_model_json(tmp_path / "model.json", {"kind": "baseline", "in_channels": 2})
    meta = ckpt.read_model_json(tmp_path, kind="baseline")
    assert meta == {"format": ckpt.MODEL_FORMAT, "kind": "baseline", "in_channels": 2}
    assert ckpt.read_model_json(tmp_path / "model.json") == meta


def test_model_json_of_another_kind_is_a_checkpoint_error(tmp_path):
    ckpt.write_model_json(tmp_path / "model.json", {"kind": "baseline"})
    with pytest.raises(CheckpointError, match=r"model\.json: is a baseline checkpoint, but a autoencoder checkpoint"):
        ckpt.read_model_json(tmp_path, kind="autoencoder")


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", r"model\.json: not valid JSON; the checkpoint is corrupt"),
    ('{"format": "other-tool/3", "kind": "ldm"}', r"not a stainldm model description \(format 'other-tool/3'"),
    ("{}", r"not a stainldm model description \(format None"),
])
def test_a_model_json_that_is_not_ours_is_a_checkpoint_error(tmp_path, text, match):
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        ckpt.read_model_json(tmp_path)


def test_model_json_binary_garbage_is_a_checkpoint_error(tmp_path):
    (tmp_path / "model.json").write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(CheckpointError, match=r"model\.json: not valid JSON"):
        ckpt.read_model_json(tmp_path)


def test_a_model_json_holding_a_list_is_a_checkpoint_error(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match=r"model\.json: not a stainldm model description"):
        ckpt.read_model_json(tmp_path)


def test_a_missing_model_json_says_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match=r"model\.json: not found; pass a training run folder"):
        ckpt.read_model_json(tmp_path)


# -- state.pt ----------------------------------------------------------------------------------
def test_state_round_trip(tmp_path):
    net = _net(0)
    state = {"step": 3, "model": net.state_dict(), "meta": {"kind": "baseline", "in_channels": 2}, "lr": [1e-3]}
    ckpt.save_state(tmp_path / "state.pt", state)
    back = ckpt.load_state(tmp_path / "state.pt")
    assert back["step"] == 3 and back["meta"] == state["meta"] and back["lr"] == [1e-3]
    assert all(torch.equal(back["model"][k], v) for k, v in state["model"].items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"PK\x03\x04 a truncated zip"])
def test_a_garbage_state_file_is_a_checkpoint_error(tmp_path, content):
    (tmp_path / "state.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"state\.pt: cannot read the training state"):
        ckpt.load_state(tmp_path / "state.pt")


class _Payload:
    """An arbitrary object: unpickling it would run code a user's file chose."""


def test_a_state_file_with_pickled_objects_is_refused(tmp_path):
    torch.save({"step": 1, "evil": _Payload()}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match=r"state\.pt: cannot read the training state \(UnpicklingError\)"):
        ckpt.load_state(tmp_path / "state.pt")


def test_a_missing_state_file_says_to_start_without_resume(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\.pt missing.*without --resume"):
        ckpt.load_state(tmp_path / "state.pt")


def test_sha256_of_a_file(tmp_path):
    import hashlib

    (tmp_path / "f").write_bytes(b"abc" * 1000)
    assert ckpt.sha256(tmp_path / "f") == hashlib.sha256(b"abc" * 1000).hexdigest()
