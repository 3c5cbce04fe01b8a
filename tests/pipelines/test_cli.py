"""The console script: --help, --version, info, and the one-line error policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import stainldm
from pipelines.cli import main

SCRIPT = Path(sys.executable).with_name("stainldm")


def test_console_script_version_and_help():
    out = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"stainldm {stainldm.__version__}"
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    assert "info" in out.stdout and "make-sample" in out.stdout


def test_info_prints_levels_mpp_and_associated(cmu_path, capsys):
    assert main(["info", str(cmu_path)]) == 0
    out = capsys.readouterr().out
    assert "aperio" in out and "2220 x 2967 px" in out and "0.499" in out
    assert "0: 2220 x 2967 px, downsample 1" in out and "label" in out and "uint8" in out


def test_info_continues_past_a_bad_slide_and_exits_2(cmu_path, tmp_path, capsys):
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    assert main(["info", str(bad), str(cmu_path)]) == 2
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and "broken.svs" in errors[0]
    assert "aperio" in captured.out


def test_error_is_one_line_exit_2_and_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing.svs"
    proc = subprocess.run([str(SCRIPT), "info", str(missing)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: no such file or folder; check the path"]
    proc = subprocess.run([str(SCRIPT), "info", "--debug", str(missing)], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "InputError" in proc.stderr


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: stainldm" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_library_messages_name_parameters_and_the_cli_shows_flags(tmp_path, capsys):
    from stainldm.diffusion.schedule import NoiseSchedule, ScheduleConfig
    from stainldm.errors import InputError, with_flags

    assert with_flags("`batch_size` must be positive; `other` stays", {"batch_size": "--batch-size"}) == \
        "--batch-size must be positive; `other` stays"
    with pytest.raises(InputError, match=r"^`steps` \(0\)"):  # the library speaks of its parameter
        NoiseSchedule(ScheduleConfig(train_steps=20)).inference_timesteps(0)
    assert main(["stain", str(tmp_path / "none.tiff"), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --steps") and "`" not in err, err
