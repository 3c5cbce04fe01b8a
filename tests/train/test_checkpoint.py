"""The training state (state.pt): round trip and every broken file. The exported model's files
(model.safetensors, model.json) are the registry's: tests/models/test_runs.py."""

from __future__ import annotations

import pytest
import torch

from stainldm.errors import CheckpointError
from stainldm.models.baseline import BaselineConfig, BaselineUNet
from stainldm.train import checkpoint as ckpt

SMALL = BaselineConfig(features=(4, 4, 8, 8, 16, 4))


def _net(seed: int, cfg: BaselineConfig = SMALL, in_channels: int = 2) -> BaselineUNet:
    torch.manual_seed(seed)
    return BaselineUNet(cfg, in_channels=in_channels).eval()


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
    with pytest.raises(CheckpointError, match=r"state\.pt missing.*without `resume`"):
        ckpt.load_state(tmp_path / "state.pt")
