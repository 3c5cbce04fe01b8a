"""Decoder-only fine-tuning of a trained autoencoder (``autoencoder.init`` + ``train_encoder: false``):
the encoder, the latent scale and so every ldm trained on it stay as they were, and the sharper
decoder replaces the one an ldm carries through ``export_run(..., autoencoder=)``."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from stainldm.errors import CheckpointError, ConfigError
from stainldm.models import runs
from stainldm.models.autoencoder import ENCODER_PARTS
from stainldm.train.loop import Trainer


def _is_encoder(name: str) -> bool:
    return name.split(".")[0] in ENCODER_PARTS


@pytest.fixture(scope="module")
def finetuned(train_store, train_config, train_ae_run, tmp_path_factory):
    """An ldm on the shared autoencoder, and that autoencoder's decoder fine-tuned for 3 bf16 steps
    with the frequency and adversarial terms (the lab path's precision)."""
    base = tmp_path_factory.mktemp("decoder_ft")
    Trainer(kind="ldm", cfg=train_config("steps=2", "checkpoint_every=2", "val_every=2"), run_dir=base / "ldm",
            store=train_store, device="cpu", autoencoder_run=train_ae_run).train()
    cfg = train_config("steps=3", "checkpoint_every=3", "val_every=3", "precision=bf16", "optim.warmup_steps=0",
                       f"autoencoder.init={train_ae_run}", "autoencoder.train_encoder=false",
                       "autoencoder.frequency_weight=0.1", "autoencoder.adversarial_weight=0.1",
                       "autoencoder.adversarial_start=0")
    trainer = Trainer(kind="autoencoder", cfg=cfg, run_dir=base / "ft", store=train_store, device="cpu")
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    return {"ldm": base / "ldm", "ft": base / "ft", "trainable": trainable, "base": base}


def test_only_the_decoder_trains_and_the_latent_scale_is_kept(finetuned, train_ae_run):
    assert finetuned["trainable"] and not any(_is_encoder(n) for n in finetuned["trainable"])
    assert {n.split(".")[0] for n in finetuned["trainable"]} == {"decoder", "post_quant_conv"}
    before, after = load_file(train_ae_run / "model.safetensors"), load_file(finetuned["ft"] / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if _is_encoder(k))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    meta, init = (runs.read_model_json(p, kind="autoencoder") for p in (finetuned["ft"], train_ae_run))
    assert meta["latent_scale"] == init["latent_scale"]
    assert meta["config"]["init"] == str(train_ae_run) and meta["config"]["train_encoder"] is False


def test_the_decoder_replaces_the_one_the_ldm_carries(finetuned, tmp_path):
    dest = tmp_path / "shipped"
    runs.export_run(finetuned["ldm"], dest, autoencoder=finetuned["ft"])
    run = runs.load_run(dest)
    meta = runs.read_model_json(dest, kind="ldm")
    assert meta["autoencoder"]["decoder_from"] == "ft" and meta["autoencoder"]["config"]["train_encoder"] is False
    assert meta["latent_scale"] == meta["autoencoder"]["latent_scale"]  # the ldm's own scale is unchanged
    ft = runs.load_autoencoder(finetuned["ft"])[0]
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ft.half().float()  # the shipped form rounds weights to float16
    with torch.no_grad():
        assert torch.equal(run.autoencoder.decode(z), ft.decode(z))
    # and the ldm itself is untouched
    a, b = load_file(finetuned["ldm"] / "model.safetensors"), load_file(dest / "model.safetensors")
    assert all(torch.equal(a[k].half(), b[k]) for k in a)


def test_init_from_an_ldm_checkpoint_takes_the_autoencoder_it_carries(finetuned, train_store, train_config, tmp_path):
    cfg = train_config("steps=1", "checkpoint_every=1", "val_every=1", f"autoencoder.init={finetuned['ldm']}",
                       "autoencoder.train_encoder=false")
    trainer = Trainer(kind="autoencoder", cfg=cfg, run_dir=tmp_path / "ft", store=train_store, device="cpu")
    carried = load_file(finetuned["ldm"] / "autoencoder.safetensors")
    assert all(torch.equal(v, carried[k]) for k, v in trainer.model.state_dict().items())


def test_an_autoencoder_with_another_encoder_cannot_replace_the_ldms(finetuned, train_store, train_config, tmp_path):
    cfg = train_config("steps=1", "checkpoint_every=1", "val_every=1", f"autoencoder.init={finetuned['ft']}")
    Trainer(kind="autoencoder", cfg=cfg, run_dir=tmp_path / "all", store=train_store, device="cpu").train()
    with pytest.raises(CheckpointError, match=r"all: its encoder or latent scale differs from the autoencoder .*ldm "
                                              r"carries; only a decoder fine-tuned from it"):
        runs.export_run(finetuned["ldm"], tmp_path / "out", autoencoder=tmp_path / "all")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_decoder_only_without_init_is_a_config_error(train_store, train_config, tmp_path):
    with pytest.raises(ConfigError, match=r"autoencoder\.train_encoder false \(decoder-only fine-tuning\) needs "
                                          r"autoencoder\.init"):
        Trainer(kind="autoencoder", cfg=train_config("autoencoder.train_encoder=false"), run_dir=tmp_path / "a",
                store=train_store, device="cpu")


def test_init_of_another_architecture_or_kind_is_refused(finetuned, train_store, train_config, train_ae_run, tmp_path):
    cfg = train_config(f"autoencoder.init={train_ae_run}", "autoencoder.latent_channels=8")
    with pytest.raises(CheckpointError, match=r"its autoencoder differs in latent_channels from train\.autoencoder"):
        Trainer(kind="autoencoder", cfg=cfg, run_dir=tmp_path / "a", store=train_store, device="cpu")
    baseline = tmp_path / "baseline"
    Trainer(kind="baseline", cfg=train_config("steps=1", "checkpoint_every=1", "val_every=1"), run_dir=baseline,
            store=train_store, device="cpu").train()
    with pytest.raises(CheckpointError, match=r"baseline: is a baseline checkpoint, which holds no autoencoder"):
        Trainer(kind="autoencoder", cfg=train_config(f"autoencoder.init={baseline}"), run_dir=tmp_path / "b",
                store=train_store, device="cpu")
    missing = tmp_path / "gone"
    shutil.copytree(train_ae_run, missing)
    (missing / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"gone/model\.safetensors: weights file not found"):
        Trainer(kind="autoencoder", cfg=train_config(f"autoencoder.init={missing}"), run_dir=tmp_path / "c",
                store=train_store, device="cpu")


def test_a_deeper_decoder_starts_from_the_trained_one_and_can_replace_the_ldms(finetuned, train_store, train_config,
                                                                                train_ae_run, tmp_path):
    cfg = train_config("steps=2", "checkpoint_every=2", "val_every=2", "optim.warmup_steps=0",
                       f"autoencoder.init={train_ae_run}", "autoencoder.train_encoder=false",
                       "autoencoder.decoder_res_blocks=2", "autoencoder.frequency_weight=1.0")
    trainer = Trainer(kind="autoencoder", cfg=cfg, run_dir=tmp_path / "deep", store=train_store, device="cpu")
    trained = runs.load_autoencoder(train_ae_run)[0]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(trainer.model.eval().reconstruct(x), trained.reconstruct(x), atol=1e-6)
    assert sum(p.numel() for p in trainer.model.decoder.parameters()) > sum(
        p.numel() for p in trained.decoder.parameters())
    trainer.model.train()
    trainer.train()
    runs.export_run(finetuned["ldm"], tmp_path / "shipped", autoencoder=tmp_path / "deep")
    run = runs.load_run(tmp_path / "shipped")  # builds the deeper decoder from the model.json it carries
    deep = runs.load_autoencoder(tmp_path / "deep")[0].half().float()
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(run.autoencoder.decode(z), deep.decode(z))
        assert not torch.allclose(deep.decode(z), trained.decode(z), atol=1e-4)
    # a decoder cannot lose blocks it was trained with
    less = train_config(f"autoencoder.init={tmp_path / 'deep'}", "autoencoder.train_encoder=false")
    with pytest.raises(CheckpointError, match=r"deep: its decoder has 2 residual blocks per level, train\.autoencoder 1; "
                                              r"autoencoder\.decoder_res_blocks can add blocks"):
        Trainer(kind="autoencoder", cfg=less, run_dir=tmp_path / "less", store=train_store, device="cpu")
