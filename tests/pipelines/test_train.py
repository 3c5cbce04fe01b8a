"""``stainldm train``: a run end to end through the CLI, and every bad input as a one-line error."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "configs" / "ci.yaml"
FAST = ["--set", "data.batch_size=2", "--set", "val_tiles=2", "--set", "sample_steps=2"]


def _train(kind: str, *args: str, store: Path | None = None) -> int:
    argv = ["train", kind, "--config", str(CI), "--wandb", "disabled", "--device", "cpu", "--quiet", *FAST]
    if store is not None:
        argv += ["--store", str(store)]
    return main([*argv, *args])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def baseline_run(train_store, tmp_path_factory) -> Path:
    """A 3-step baseline trained through the CLI (shared by the error tests: copy it before changing it)."""
    run = tmp_path_factory.mktemp("cli") / "baseline"
    assert _train("baseline", "--out", str(run), "--set", "steps=3", store=train_store) == 0
    return run


def test_train_baseline_through_the_cli(baseline_run, train_store, capsys):
    rows = list(csv.DictReader((baseline_run / "metrics.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and rows[-1]["val_psnr"]
    saved = (baseline_run / "config.yaml").read_text()
    assert f"store: {train_store}" in saved and "wandb: disabled" in saved and "steps: 3" in saved
    assert not list(baseline_run.glob("wandb"))


def test_train_prints_a_summary_line(train_store, tmp_path, capsys):
    run = tmp_path / "r"
    assert _train("baseline", "--out", str(run), "--set", "steps=1", "--set", "val_every=1", store=train_store) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"{run}: baseline trained to step 1 in ") and "val_psnr" in out[-1]


def test_resume_continues_a_cli_run_to_more_steps(baseline_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(baseline_run, run)
    assert main(["train", "baseline", "--resume", str(run), "--set", "steps=4", "--quiet", "--device", "cpu"]) == 0
    assert [r["step"] for r in csv.DictReader((run / "metrics.csv").open())] == ["1", "2", "3", "4"]
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 4


# ---------------------------------------------------------------------------------------------
# Bad config
# ---------------------------------------------------------------------------------------------
def test_a_config_typo_names_the_full_key(train_store, tmp_path, capsys):
    assert _train("baseline", "--out", str(tmp_path / "r"), "--set", "optim.lrr=1", store=train_store) == 2
    assert "train.optim.lrr" in _error(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("override", "key"), [
    ("optim.lr=-1", "train.optim.lr (-1"), ("steps=0", "train.steps (0)"), ("ema_decay=1", "train.ema_decay (1"),
    ("data.batch_size=0", "train.data.batch_size (0)"), ("optim.accumulate=0", "train.optim.accumulate (0)"),
    ("sample_steps=0", "train.sample_steps (0)"), ("data.workers=-1", "train.data.workers (-1)"),
    ("optim.lr=fast", "train.optim.lr"),
])
def test_a_bad_config_value_names_the_key(train_store, tmp_path, capsys, override, key):
    assert _train("baseline", "--out", str(tmp_path / "r"), "--set", override, store=train_store) == 2
    assert key in _error(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("override", "key"), [
    ("sampler=heun", "train.sampler"), ("sample_steps=5000", "train.sample_steps"), ("val_tiles=0", "train.val_tiles"),
])
def test_bad_validation_settings_fail_before_training(train_store, train_ae_run, tmp_path, capsys, override, key):
    run = tmp_path / "r"
    code = _train("ldm", "--out", str(run), "--autoencoder", str(train_ae_run), "--set", "steps=1", "--set", override,
                  store=train_store)
    msg = _error(capsys)
    assert code == 2 and key in msg
    assert not (run / "metrics.csv").is_file() or len((run / "metrics.csv").read_text().splitlines()) == 1


def test_a_config_file_without_a_train_section(train_store, tmp_path, capsys):
    cfg = tmp_path / "prepare-only.yaml"
    cfg.write_text("prepare:\n  tiles: {size: 64}\n")
    assert main(["train", "baseline", "--config", str(cfg), "--store", str(train_store), "--quiet"]) == 2
    assert _error(capsys) == f"error: {cfg}: has no 'train:' section"


def test_no_store_anywhere(tmp_path, capsys):
    assert _train("baseline", "--out", str(tmp_path / "r")) == 2
    assert "no tile store: pass --store" in _error(capsys)


def test_a_store_that_is_not_a_store(tmp_path, capsys):
    assert _train("baseline", "--out", str(tmp_path / "r"), store=tmp_path) == 2
    assert f"{tmp_path}: not a tile store" in _error(capsys)


@pytest.mark.parametrize(("override", "split"), [("data.val_split=test", "test"), ("data.split=test", "test")])
def test_a_store_without_the_requested_split(train_bf_store, tmp_path, capsys, override, split):
    assert _train("baseline", "--out", str(tmp_path / "r"), "--set", override, store=train_bf_store) == 2
    msg = _error(capsys)
    assert f"no tiles in split '{split}'" in msg and str(train_bf_store) in msg


def test_an_unknown_split_name(train_store, tmp_path, capsys):
    assert _train("baseline", "--out", str(tmp_path / "r"), "--set", "data.split=training", store=train_store) == 2
    assert "unknown split 'training'" in _error(capsys)


# ---------------------------------------------------------------------------------------------
# The autoencoder the ldm needs
# ---------------------------------------------------------------------------------------------
def test_the_ldm_without_an_autoencoder(train_store, tmp_path, capsys):
    assert _train("ldm", "--out", str(tmp_path / "r"), store=train_store) == 2
    assert "training the ldm needs a trained autoencoder: pass --autoencoder" in _error(capsys)


def test_the_ldm_with_a_baseline_run_as_autoencoder(baseline_run, train_store, tmp_path, capsys):
    assert _train("ldm", "--out", str(tmp_path / "r"), "--autoencoder", str(baseline_run), store=train_store) == 2
    assert "baseline: is a baseline checkpoint, which holds no autoencoder; pass an autoencoder run" in _error(capsys)


def test_the_ldm_with_a_corrupt_autoencoder(train_ae_run, train_store, tmp_path, capsys):
    ae = tmp_path / "ae"
    shutil.copytree(train_ae_run, ae)
    weights = ae / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert _train("ldm", "--out", str(tmp_path / "r"), "--autoencoder", str(ae), store=train_store) == 2
    msg = _error(capsys)
    assert str(weights) in msg and "not a readable safetensors file" in msg


def test_the_ldm_with_a_missing_autoencoder_folder(train_store, tmp_path, capsys):
    assert _train("ldm", "--out", str(tmp_path / "r"), "--autoencoder", str(tmp_path / "nope"), store=train_store) == 2
    assert f"{tmp_path / 'nope'}: not found; pass a training run folder" in _error(capsys)


# ---------------------------------------------------------------------------------------------
# Run folders and resume
# ---------------------------------------------------------------------------------------------
def test_out_on_an_existing_run_suggests_resume(baseline_run, train_store, capsys):
    before = (baseline_run / "metrics.csv").read_text()
    assert _train("baseline", "--out", str(baseline_run), store=train_store) == 2
    msg = _error(capsys)
    assert "already holds a training run" in msg and f"--resume {baseline_run}" in msg
    assert (baseline_run / "metrics.csv").read_text() == before


def test_resume_with_a_store_of_other_input_channels(baseline_run, train_bf_store, capsys):
    before = (baseline_run / "metrics.csv").read_text()
    assert main(["train", "baseline", "--resume", str(baseline_run), "--store", str(train_bf_store), "--quiet",
                 "--device", "cpu"]) == 2
    msg = _error(capsys)
    assert "has 1-channel unstained tiles but the run" in msg and "trained on 2" in msg
    assert (baseline_run / "metrics.csv").read_text() == before


def test_resume_of_a_folder_without_state(baseline_run, tmp_path, capsys):
    run = tmp_path / "never-checkpointed"
    run.mkdir()
    shutil.copy(baseline_run / "config.yaml", run / "config.yaml")
    assert main(["train", "baseline", "--resume", str(run), "--quiet", "--device", "cpu"]) == 2
    assert "state.pt missing" in _error(capsys)


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["train", "baseline", "--resume", str(tmp_path), "--quiet"]) == 2
    assert _error(capsys) == f"error: {tmp_path}: not a training run (no config.yaml)"


def test_resume_as_another_kind(baseline_run, capsys):
    assert main(["train", "autoencoder", "--resume", str(baseline_run), "--quiet", "--device", "cpu"]) == 2
    assert "is a baseline run; cannot resume it as autoencoder" in _error(capsys)


def test_resume_with_another_model_config(baseline_run, capsys):
    assert main(["train", "baseline", "--resume", str(baseline_run), "--set", "baseline.features=[8,8,16,32,64,16]",
                 "--quiet", "--device", "cpu"]) == 2
    assert "the model section of the config differs from the run's" in _error(capsys)


def test_resume_of_a_corrupt_state(baseline_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(baseline_run, run)
    (run / "state.pt").write_bytes(b"\x00" * 64)
    assert main(["train", "baseline", "--resume", str(run), "--quiet", "--device", "cpu"]) == 2
    assert f"{run / 'state.pt'}: cannot read the training state" in _error(capsys)


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_cuda_without_cuda(train_store, tmp_path, capsys):
    argv = ["train", "baseline", "--config", str(CI), "--store", str(train_store), "--out", str(tmp_path / "r"),
            "--device", "cuda", "--quiet"]
    assert main(argv) == 2
    assert _error(capsys).startswith("error: device cuda: no CUDA GPU is visible to this process; use device cpu")
    assert not (tmp_path / "r").exists()


def test_an_unknown_device(train_store, tmp_path, capsys):
    assert main(["train", "baseline", "--config", str(CI), "--store", str(train_store), "--out",
                 str(tmp_path / "r"), "--device", "tpu", "--quiet"]) == 2
    assert "device 'tpu': use cpu, cuda, cuda:N or auto" in _error(capsys)


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------
def test_an_old_config_with_amp_names_precision(train_store, tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text(CI.read_text().replace("  precision: fp32", "  amp: true"))
    assert "amp: true" in old.read_text()
    assert main(["train", "baseline", "--config", str(old), "--store", str(train_store), "--out",
                 str(tmp_path / "r"), "--quiet"]) == 2
    assert _error(capsys) == ("error: config key 'train.amp' was removed: use precision: bf16 (was amp: true) or "
                              "precision: fp32 (was amp: false); precision also takes fp16 and auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_fp16_on_a_cpu_is_refused_naming_the_key(train_store, tmp_path, capsys):
    assert main(["train", "baseline", "--config", str(CI), "--store", str(train_store), "--out",
                 str(tmp_path / "r"), "--set", "precision=fp16", "--quiet"]) == 2
    assert _error(capsys) == "error: train.precision fp16 needs a CUDA GPU (fp16 with loss scaling); on cpu use bf16 or fp32"
    assert main(["train", "baseline", "--config", str(CI), "--store", str(train_store), "--out",
                 str(tmp_path / "r"), "--set", "precision=fp8", "--quiet"]) == 2
    assert "'train.precision': 'fp8' is not one of 'auto', 'fp32', 'bf16', 'fp16'" in _error(capsys)


def test_set_takes_several_pairs_after_one_flag_like_make_sample(train_store, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "baseline", "--config", str(CI), "--store", str(train_store), "--out", str(run),
                 "--quiet", "--device", "cpu", "--set", "steps=2", "checkpoint_every=2", "--set", "val_every=2"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["steps"], saved["checkpoint_every"], saved["val_every"]) == (2, 2, 2)


def test_offline_wandb_with_forked_loader_workers(train_store, tmp_path):
    """wandb's service must not be touched from forked DataLoader workers (it raises ForkedError)."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("stainldm")), "train", "baseline", "--config", str(CI), "--store",
         str(train_store), "--out", str(run), "--wandb", "offline", "--device", "cpu", "--quiet",
         "--set", "steps=2", "--set", "data.workers=2", "--set", "val_every=2", "--set", "checkpoint_every=2"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "model.safetensors").is_file()
    assert list((run / "wandb").glob("offline-run-*")), "wandb wrote no offline run"
