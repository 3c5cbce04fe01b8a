"""The training state (state.pt): round trip and every broken file. The exported model's files
(model.safetensors, model.json) are the registry's: tests/models/test_runs.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from stainldm.errors import CheckpointError, RunError
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


# -- a full disk ---------------------------------------------------------------------------------
def test_a_checkpoint_larger_than_the_free_space_is_refused_naming_the_folder(tmp_path):
    free, folder = shutil.disk_usage(tmp_path).free, re.escape(str(tmp_path))
    ckpt.require_free_space(tmp_path, free // 2, "the step-5 checkpoint")  # fits: no error
    with pytest.raises(RunError, match=rf"^{folder}: the step-5 checkpoint needs [\d.]+ GB but only [\d.]+ GB is "
                                       r"free there; free space there and start the run again"):
        ckpt.require_free_space(tmp_path, free + 10**12, "the step-5 checkpoint")
    ckpt.save_state(tmp_path / "state.pt", {"step": 4})
    with pytest.raises(RunError, match=rf"continue with `--resume {folder}` \(its last checkpoint is intact\)$"):
        ckpt.require_free_space(tmp_path, free + 10**12, "the step-5 checkpoint")


def test_a_state_write_that_fails_midway_is_one_line_and_keeps_the_previous_state(tmp_path):
    """The file system refuses the write part-way (a 1 MiB file-size limit stands in for a full
    disk: the same short write, made by the kernel), as torch's zip writer meets it."""
    script = textwrap.dedent("""
        import resource, signal, sys
        from pathlib import Path
        import torch
        from stainldm.errors import RunError
        from stainldm.train import checkpoint as ckpt
        path = Path(sys.argv[1])
        ckpt.save_state(path, {"step": 1, "w": torch.zeros(1000)})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
        try:
            ckpt.save_state(path, {"step": 2, "w": torch.zeros(2**20)})
        except RunError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "state.pt")], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.count("\n") == 1, out
    assert out.startswith(f"{tmp_path / 'state.pt'}: writing the training state (4.0 MiB) failed "
                          "(the file system took only part of it: disk full or a file-size limit; ")
    assert out.rstrip().endswith(f"continue with `--resume {tmp_path}` (its last checkpoint is intact)"), out
    assert ckpt.load_state(tmp_path / "state.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no partial file left behind
