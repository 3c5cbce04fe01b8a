"""The training loop on CPU with configs/ci.yaml: real steps of every kind, run folders, exact resume,
divergence, and the EMA export."""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from stainldm.config import from_dict
from stainldm.errors import ConfigError, RunError
from stainldm.models import runs
from stainldm.models.autoencoder import AutoencoderConfig, build_autoencoder
from stainldm.models.ldm import LatentDiffusion, LDMConfig
from stainldm.train import checkpoint as ckpt
from stainldm.train.config import TrainConfig
from stainldm.train.loop import Trainer
from stainldm.train.tracking import METRIC_COLUMNS


def _trainer(kind, cfg, run, store, *, ae=None, resume=False) -> Trainer:
    return Trainer(kind=kind, cfg=cfg, run_dir=run, store=store, device="cpu", autoencoder_run=ae, resume=resume)


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        assert next(csv.reader(fh)) == METRIC_COLUMNS
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _check_run_folder(run: Path, kind: str, cfg: TrainConfig) -> dict:
    for name in ("config.yaml", "metrics.csv", "model.safetensors", "model.json", "state.pt"):
        assert (run / name).is_file(), f"{run.name}/{name} missing"
    # config.yaml is the resolved config: the device the tests ask for and what precision auto became
    assert from_dict(TrainConfig, yaml.safe_load((run / "config.yaml").read_text()), where="train") == replace(
        cfg, device="cpu", precision="fp32" if cfg.precision == "auto" else cfg.precision)
    rows = _metrics(run)
    assert [int(r["step"]) for r in rows] == list(range(1, cfg.steps + 1))
    assert all(np.isfinite(float(r["loss"])) and float(r["lr"]) > 0 and float(r["tiles_per_s"]) > 0 for r in rows)
    assert rows[-1]["val_psnr"] and rows[-1]["val_ssim"] and not rows[0]["val_psnr"]  # validated at step 6
    assert 0 < float(rows[-1]["val_psnr"]) < 100 and -1 <= float(rows[-1]["val_ssim"]) <= 1
    assert [p.name for p in (run / "samples").glob("*.png")] == [f"step_{cfg.steps:07d}.png"]
    meta = runs.read_model_json(run, kind=kind)
    assert meta["in_channels"] == 2 and meta["tile_px"] == 64 and meta["mpp"] == 1.0 and meta["step"] == cfg.steps
    assert len(meta["input_stats"]["low"]) == len(meta["input_stats"]["high"]) == 2
    state = ckpt.load_state(run / "state.pt")
    assert state["step"] == cfg.steps and state["meta"]["kind"] == kind
    # the EMA is exported, and after warm-up it lags the raw weights
    exported = load_file(run / "model.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in state["ema"].items())
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"]
               if state["model"][k].is_floating_point())
    assert not list(run.glob(".*partial*")), "temporary files left in the run folder"
    return meta


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = ckpt.load_state(a / "state.pt"), ckpt.load_state(b / "state.pt")
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert sa["optimizer"]["state"].keys() == sb["optimizer"]["state"].keys()
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], sb["optimizer"]["state"][k]["exp_avg"])


def _assert_same_curves(a: Path, b: Path) -> None:
    ra, rb = _metrics(a), _metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for col in ("loss", "lr", "val_psnr", "val_ssim"):
        assert [r[col] for r in ra] == [r[col] for r in rb], col


# ---------------------------------------------------------------------------------------------
# The autoencoder (the session's shared run)
# ---------------------------------------------------------------------------------------------
def test_autoencoder_run_folder_and_latent_scale(train_ae_run, train_config):
    cfg = train_config()
    meta = _check_run_folder(train_ae_run, "autoencoder", cfg)
    assert meta["latent_scale"] > 0 and meta["latent_channels"] == 4 and meta["downsampling"] == 2
    assert from_dict(AutoencoderConfig, meta["config"], where="autoencoder") == cfg.autoencoder
    # model.safetensors in a freshly built autoencoder reproduces the EMA of state.pt exactly
    fresh, ema = build_autoencoder(cfg.autoencoder).eval(), build_autoencoder(cfg.autoencoder).eval()
    runs.load_weights(fresh, train_ae_run / "model.safetensors")
    ema.load_state_dict(ckpt.load_state(train_ae_run / "state.pt")["ema"])
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fresh.reconstruct(y), ema.reconstruct(y))
        z = fresh.encode(y)[0] * meta["latent_scale"]
    assert z.shape == (2, 4, 32, 32) and torch.isfinite(z).all()


# ---------------------------------------------------------------------------------------------
# The baseline: a run, and the same run interrupted between checkpoints and resumed
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def baseline_runs(train_store, train_config, tmp_path_factory):
    base = tmp_path_factory.mktemp("baseline")
    cfg = train_config()
    a = _trainer("baseline", cfg, base / "a", train_store)
    a.train()
    # interrupted after step 4: the checkpoint is at step 3, and step 4's metrics row must go
    _trainer("baseline", cfg, base / "b", train_store).train(until=4)
    assert ckpt.load_state(base / "b" / "state.pt")["step"] == 3 and len(_metrics(base / "b")) == 4
    b = _trainer("baseline", cfg, base / "b", train_store, resume=True)
    assert b.step == 3
    b.train()
    return a, base / "a", base / "b"


def test_baseline_trains_into_a_complete_run_folder(baseline_runs, train_config):
    _, run, _ = baseline_runs
    meta = _check_run_folder(run, "baseline", train_config())
    assert meta["config"] == {"features": [8, 8, 16, 32, 64, 8]}


def test_baseline_export_reloads_to_the_ema_outputs(baseline_runs, train_config):
    trainer, run, _ = baseline_runs
    fresh = runs.build_model("baseline", train_config().baseline, in_channels=2).eval()
    runs.load_weights(fresh, run / "model.safetensors")
    x = torch.rand(2, 2, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fresh(x), trainer.ema(x))
        assert not torch.equal(trainer.ema(x), trainer.model.eval()(x))


def test_baseline_resumed_run_is_exactly_the_uninterrupted_run(baseline_runs):
    _, a, b = baseline_runs
    _assert_same_curves(a, b)
    _assert_same_weights(a, b)


# ---------------------------------------------------------------------------------------------
# The ldm on the shared autoencoder
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ldm_runs(train_store, train_config, train_ae_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("ldm")
    cfg = train_config()
    a = _trainer("ldm", cfg, base / "a", train_store, ae=train_ae_run)
    a.train()
    _trainer("ldm", cfg, base / "b", train_store, ae=train_ae_run).train(until=3)
    _trainer("ldm", cfg, base / "b", train_store, ae=train_ae_run, resume=True).train()
    return a, base / "a", base / "b"


def test_ldm_trains_into_a_self_contained_run_folder(ldm_runs, train_config, train_ae_run):
    _, run, _ = ldm_runs
    cfg = train_config()
    meta = _check_run_folder(run, "ldm", cfg)
    ae_meta = runs.read_model_json(train_ae_run, kind="autoencoder")
    assert meta["latent_scale"] == ae_meta["latent_scale"] > 0
    assert meta["autoencoder"]["config"] == ae_meta["config"] and meta["downsampling"] == 2
    ae_weights, own = load_file(run / "autoencoder.safetensors"), load_file(train_ae_run / "model.safetensors")
    assert all(torch.equal(ae_weights[k], own[k]) for k in own)


def test_ldm_export_reloads_to_the_ema_outputs(ldm_runs):
    trainer, run, _ = ldm_runs
    meta = runs.read_model_json(run, kind="ldm")
    fresh = LatentDiffusion(from_dict(LDMConfig, meta["config"], where="ldm"), in_channels=meta["in_channels"],
                            latent_channels=meta["latent_channels"], downsampling=meta["downsampling"]).eval()
    runs.load_weights(fresh, run / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    x, z = torch.rand(2, 2, 64, 64, generator=g) * 2 - 1, torch.randn(2, 4, 32, 32, generator=g)
    t = torch.tensor([50, 900])
    with torch.no_grad():
        out = fresh(z, t, fresh.encode_condition(x))
        assert torch.equal(out, trainer.ema(z, t, trainer.ema.encode_condition(x)))
        assert float(out.abs().max()) > 0
        a = fresh.sample_latent(x, steps=2, generator=torch.Generator().manual_seed(1))
        b = trainer.ema.sample_latent(x, steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_ldm_resumed_run_is_exactly_the_uninterrupted_run(ldm_runs):
    _, a, b = ldm_runs
    _assert_same_curves(a, b)
    _assert_same_weights(a, b)


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------
def test_a_diverging_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(train_store, train_config, tmp_path):
    cfg = train_config("optim.lr=1e30", "optim.grad_clip=0", "checkpoint_every=1")
    run = tmp_path / "nan"
    trainer = _trainer("baseline", cfg, run, train_store)
    with pytest.raises(RunError, match=r"training baseline at step (\d+): the loss is (nan|inf|-inf); the last good "
                                       r"checkpoint in .*nan is kept — lower train\.optim\.lr") as exc:
        trainer.train()
    bad_step = int(str(exc.value).split("at step ")[1].split(":")[0])
    assert 1 <= bad_step < cfg.steps
    state = ckpt.load_state(run / "state.pt")
    assert state["step"] == bad_step  # the checkpoint after the last finite step
    assert [int(r["step"]) for r in _metrics(run)] == list(range(1, bad_step + 1))
    assert all(np.isfinite(float(r["loss"])) for r in _metrics(run))
    assert runs.read_model_json(run, kind="baseline")["step"] == bad_step
    runs.load_weights(runs.build_model("baseline", cfg.baseline, in_channels=2), run / "model.safetensors")


def test_a_new_run_refuses_a_folder_that_holds_a_run(baseline_runs, train_store, train_config, tmp_path):
    from stainldm.errors import InputError

    _, run, _ = baseline_runs
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    before = (copy / "metrics.csv").read_text()
    with pytest.raises(InputError, match=r"copy: already holds a training run; continue it with `resume`"):
        _trainer("baseline", train_config(), copy, train_store)
    assert (copy / "metrics.csv").read_text() == before


def _small_tile_store(root: Path, px: int) -> Path:
    from stainldm.data.store import TileRow, TileStore

    rng = np.random.default_rng(0)
    store = TileStore.create(root, tile_px=px, channels_in=2, dtype_in="uint16")
    rows = [TileRow("s", "A1", split, 0, 0, 1.0, 1.0, 0.5, 0.5) for split in ("train", "train", "val")]
    store.append(rng.integers(0, 4000, (3, px, px, 2), dtype=np.uint16),
                 rng.integers(0, 256, (3, px, px, 3), dtype=np.uint8), rows)
    return root


def test_ldm_tiles_that_do_not_divide_into_the_unet_levels_are_a_config_error(train_config, train_ae_run, tmp_path):
    store = _small_tile_store(tmp_path / "store", 24)
    cfg = train_config("ldm.denoiser.channels=[16,16,16,16]", "ldm.denoiser.attention_levels=[false,false,false,false]",
                       "ldm.denoiser.norm_num_groups=8")
    with pytest.raises(ConfigError, match=r"tiles of 24 px do not divide into the latent UNet's levels"):
        _trainer("ldm", cfg, tmp_path / "run", store, ae=train_ae_run)


def test_baseline_tiles_too_small_for_the_unet_are_a_config_error(train_config, tmp_path):
    store = _small_tile_store(tmp_path / "store", 24)
    with pytest.raises(ConfigError, match=r"24 px"):
        _trainer("baseline", train_config("steps=1"), tmp_path / "run", store).train()


# ---------------------------------------------------------------------------------------------
# Mixed precision: bf16 autocast on this CPU runs the code path labs take on GPUs
# ---------------------------------------------------------------------------------------------
def _record_dtypes(module: torch.nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    module.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    return seen


def _check_precision_recorded(run: Path, precision: str) -> None:
    assert yaml.safe_load((run / "config.yaml").read_text())["precision"] == precision
    trained_on = runs.read_model_json(run)["trained_on"]
    assert trained_on == {"device": "cpu", "processes": 1, "precision": precision}


def test_bf16_autoencoder_with_the_adversarial_term_switching_on_mid_run(train_store, train_config, tmp_path):
    """The discriminator starts at step 2 of 4 and trains on the bf16 reconstruction (this crashed
    with "Input type (c10::BFloat16) and bias type (float) should be the same")."""
    cfg = train_config("precision=bf16", "steps=4", "checkpoint_every=2", "val_every=4",
                       "autoencoder.adversarial_weight=0.1", "autoencoder.adversarial_start=2")
    run = tmp_path / "ae"
    trainer = _trainer("autoencoder", cfg, run, train_store)
    decoded = _record_dtypes(trainer.model.decoder)
    initial = {k: v.clone() for k, v in trainer.d_step.discriminator.state_dict().items()}
    trainer.train(until=2)
    before = ckpt.load_state(run / "state.pt")
    assert before["step"] == 2
    assert all(torch.equal(before["discriminator"][k], v) for k, v in initial.items())  # not trained before its start
    trainer.train()
    after = ckpt.load_state(run / "state.pt")
    assert after["step"] == 4
    changed = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(after["discriminator"][k], v)]
    assert len(changed) > 5  # weights and BatchNorm statistics both trained
    assert torch.bfloat16 in decoded  # the decoder really ran under autocast
    assert all(np.isfinite(float(r["loss"])) for r in _metrics(run))
    _check_precision_recorded(run, "bf16")


def test_bf16_autoencoder_with_the_frequency_term(train_store, train_config, tmp_path):
    """The log-amplitude spectrum term trains under bf16 autocast (its FFT in float32) to a finite loss
    and is recorded in model.json; the loss it adds is its weight times a positive term."""
    cfg = train_config("precision=bf16", "steps=3", "checkpoint_every=3", "val_every=3",
                       "autoencoder.frequency_weight=0.1")
    run = tmp_path / "ae"
    trainer = _trainer("autoencoder", cfg, run, train_store)
    items = [trainer.train_set[i] for i in range(2)]
    g = torch.Generator().manual_seed(0)
    x, y = trainer.prep({k: torch.stack([b[k] for b in items]) for k in ("unstained", "stained")}, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = trainer.task.loss(trainer.model, x, y, g, 0)
    assert parts["frequency"] > 0 and math.isfinite(float(loss.detach()))
    expected = parts["l1"] + cfg.autoencoder.kl_weight * parts["kl"] + 0.1 * parts["frequency"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-3)
    trainer.task.take_fake()
    trainer.train()
    rows = _metrics(run)
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert math.isfinite(float(rows[-1]["val_psnr"]))
    assert runs.read_model_json(run, kind="autoencoder")["config"]["frequency_weight"] == 0.1
    _check_precision_recorded(run, "bf16")


def test_a_negative_frequency_weight_is_a_config_error(train_store, train_config, tmp_path):
    with pytest.raises(ConfigError, match=r"autoencoder\.frequency_weight \(-1\.0\) must be 0 \(off\) or more"):
        _trainer("autoencoder", train_config("autoencoder.frequency_weight=-1"), tmp_path / "ae", train_store)


def test_bf16_ldm_with_semantic_tokens_and_condition_dropout(train_store, train_config, train_ae_run, tmp_path):
    cfg = train_config("precision=bf16", "steps=3", "checkpoint_every=3", "val_every=3",
                       "ldm.condition.semantic=true", "ldm.condition.backbone=resnet18", "ldm.condition.token_dim=32",
                       "ldm.condition.dropout=0.5")
    run = tmp_path / "ldm"
    trainer = _trainer("ldm", cfg, run, train_store, ae=train_ae_run)
    denoised = _record_dtypes(trainer.model.unet)
    trainer.train()
    assert torch.bfloat16 in denoised
    assert all(np.isfinite(float(r["loss"])) for r in _metrics(run))
    _check_precision_recorded(run, "bf16")
    # the exported model stains in fp32
    meta = runs.read_model_json(run, kind="ldm")
    fresh = LatentDiffusion(from_dict(LDMConfig, meta["config"], where="ldm"), in_channels=2, latent_channels=4,
                            downsampling=2)
    runs.load_weights(fresh, run / "model.safetensors")
    z = fresh.sample_latent(torch.rand(1, 2, 64, 64) * 2 - 1, steps=2, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()


def test_bf16_baseline(train_store, train_config, tmp_path):
    run = tmp_path / "baseline"
    trainer = _trainer("baseline", train_config("precision=bf16", "steps=2", "checkpoint_every=2", "val_every=2"),
                       run, train_store)
    predicted = _record_dtypes(trainer.model.net)
    trainer.train()
    assert torch.bfloat16 in predicted and all(np.isfinite(float(r["loss"])) for r in _metrics(run))
    _check_precision_recorded(run, "bf16")


def test_gradient_checkpointing_trains_the_ldm_like_without_it(train_store, train_config, train_ae_run, tmp_path):
    """Same seed, same data: checkpointing recomputes activations, it does not change the training."""
    runs = {}
    for on in (False, True):
        cfg = train_config("steps=2", "checkpoint_every=2", "val_every=2", f"gradient_checkpointing={str(on).lower()}")
        runs[on] = tmp_path / f"ckpt-{on}"
        _trainer("ldm", cfg, runs[on], train_store, ae=train_ae_run).train()
    a, b = (ckpt.load_state(r / "state.pt")["model"] for r in (runs[False], runs[True]))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert yaml.safe_load((runs[True] / "config.yaml").read_text())["gradient_checkpointing"] is True


# ---------------------------------------------------------------------------------------------
# Every workflow config trains: its architectures, precision and options, one step each
# ---------------------------------------------------------------------------------------------
TRAINED_CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")
                         if "train" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("config", TRAINED_CONFIGS, ids=lambda p: p.stem)
def test_every_workflow_config_trains_each_kind_one_step(config, train_store, tmp_path):
    """configs/demo.yaml and lab-f4.yaml (bf16, the lab's full architectures) as well as ci.yaml: one
    optimisation step of each kind on the 64 px test store, checkpointed and validated."""
    from stainldm.train.config import load_train_config, resolve_config

    one_step = ["steps=1", "data.batch_size=1", "data.workers=0", "val_tiles=1", "sample_steps=1",
                "checkpoint_every=1", "val_every=1", "log_every=1", "wandb=disabled"]
    for kind in ("autoencoder", "ldm", "baseline"):
        ae = tmp_path / "autoencoder" if kind == "ldm" else None
        cfg = resolve_config(load_train_config(config, one_step), store=train_store, autoencoder_run=ae, wandb=None)
        trainer = Trainer(kind=kind, cfg=cfg, run_dir=tmp_path / kind, store=train_store, device="cpu",
                          autoencoder_run=ae)
        last = trainer.train()
        assert trainer.step == 1 and math.isfinite(last["loss"]), (config.name, kind, last)
        written = sum((tmp_path / kind / name).stat().st_size for name in ("model.safetensors", "state.pt"))
        # the free-space check's estimate bounds what a checkpoint writes, and not by a wide margin
        assert written <= trainer.checkpoint_bytes() + ckpt._SLACK <= 1.05 * written + ckpt._SLACK, (kind, written)
    demo = (yaml.safe_load(config.read_text()) or {}).get("demo") or {}
    if demo.get("decoder_steps"):  # what `stainldm demo --train` then fine-tunes: the ldm's decoder
        decoder = [f"autoencoder.init={tmp_path / 'ldm'}", "autoencoder.train_encoder=false", *demo["decoder_set"]]
        cfg = resolve_config(load_train_config(config, [*one_step, *decoder]), store=train_store, autoencoder_run=None,
                             wandb=None)
        last = Trainer(kind="autoencoder", cfg=cfg, run_dir=tmp_path / "decoder", store=train_store,
                       device="cpu").train()
        assert math.isfinite(last["loss"]) and (tmp_path / "decoder" / "model.safetensors").is_file()
