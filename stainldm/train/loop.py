"""The training loop for the three models: autoencoder, latent diffusion model, regression baseline.

    run = Trainer(kind="ldm", cfg=cfg, run_dir=Path("runs/ldm"), store=Path("store"),
                  autoencoder_run=Path("runs/ae"), device="cpu")
    run.train(progress=True)

Reproducible and resumable: every random draw comes from generators seeded by (seed, step), the
tile stream from :class:`~stainldm.data.dataset.EpochSampler`, so a run interrupted at a
checkpoint and resumed produces the same loss curve as one that was not.

Precision (``train.precision``) is autocast around the forward passes, bf16 on a CPU as on a GPU,
with loss scaling for fp16. Under ``torchrun`` the same command trains with DistributedDataParallel
(NCCL on GPU, gloo on CPU): the trained model and the autoencoder's discriminator each have their
own DDP wrapper, BatchNorm statistics are averaged after every step, gradients are exchanged once
per step under accumulation (``no_sync``), the ranks stay bit-identical, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import stainldm
from stainldm.config import config_hash, save_config, to_dict
from stainldm.data.dataset import BatchPreprocessor, EpochSampler, PairedTileDataset, load_or_compute_stats
from stainldm.data.store import TileStore
from stainldm.device import autocast, bf16_supported, describe, resolve_device, resolve_precision
from stainldm.errors import CheckpointError, ConfigError, InputError, RunError
from stainldm.files import atomic_write_csv
from stainldm.models._runtime import enable_checkpointing
from stainldm.models.autoencoder import AutoencoderLoss, build_autoencoder, downsampling, encode_mean
from stainldm.models.baseline import BaselineUNet
from stainldm.models.ldm import LatentDiffusion
from stainldm.train import checkpoint as ckpt
from stainldm.train.config import TrainConfig, check_train_config
from stainldm.train.tracking import Tracker

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["step", "loss", "lr", "tiles_per_s", "val_psnr", "val_ssim"]


# ---------------------------------------------------------------------------------------------
# Building models from their descriptions
# ---------------------------------------------------------------------------------------------
def build_model(kind: str, cfg: TrainConfig, *, in_channels: int, latent_channels: int | None = None,
                downsample: int | None = None) -> nn.Module:
    """The trainable module of a run kind."""
    if kind == "autoencoder":
        return build_autoencoder(cfg.autoencoder)
    if kind == "ldm":
        return LatentDiffusion(cfg.ldm, in_channels=in_channels, latent_channels=latent_channels,
                               downsampling=downsample)
    if kind == "baseline":
        return BaselineUNet(cfg.baseline, in_channels=in_channels)
    raise ConfigError(f"unknown model kind '{kind}'; use autoencoder, ldm or baseline")


def load_autoencoder(run: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A trained autoencoder (eval mode, frozen) and its model.json, from a run folder."""
    from stainldm.config import from_dict
    from stainldm.models.autoencoder import AutoencoderConfig

    meta = ckpt.read_model_json(run, kind="autoencoder")
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    ae = build_autoencoder(from_dict(AutoencoderConfig, meta["config"], where="autoencoder"))
    ckpt.load_weights(ae, folder / "model.safetensors")
    ae.requires_grad_(False).eval().to(device)
    if not meta.get("latent_scale"):
        raise CheckpointError(f"{folder}: the autoencoder has no latent_scale in model.json; finish its training")
    return ae, meta


# ---------------------------------------------------------------------------------------------
# One optimisation micro-step per kind, as a module (so DDP sees a forward call)
# ---------------------------------------------------------------------------------------------
class _Step(nn.Module):
    """The loss of one micro-batch. Only the trained model is a submodule (what DDP synchronises):
    the frozen autoencoder of the ldm and the autoencoder's loss terms are plain callables, and the
    discriminator has its own optimiser and wrapper (:class:`_DiscriminatorStep`)."""

    def __init__(self, kind: str, model: nn.Module, *, encode=None, latent_scale: float = 1.0, loss=None):
        super().__init__()
        self.kind, self.model, self.latent_scale = kind, model, latent_scale
        self._encode = encode  # ldm: H&E -> latent mean, float32 (frozen autoencoder)
        self._loss = loss  # autoencoder: AutoencoderLoss.generator_loss
        self.recon: torch.Tensor | None = None  # autoencoder: the last reconstruction, for the discriminator

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, step: int):
        if self.kind == "autoencoder":
            recon, mu, sigma = self.model(y)
            self.recon = recon
            return self._loss(y, recon, mu, sigma, step)
        if self.kind == "ldm":
            with torch.no_grad():
                z0 = self._encode(y) * self.latent_scale  # (B, C_lat, H/f, W/f): μ, scaled, float32
            loss = self.model.training_loss(z0, x, generator=generator)
            return loss, {}
        pred = self.model(x)
        return (pred.float() - y).abs().mean(), {}


class _DiscriminatorStep(nn.Module):
    """The discriminator's loss on real and reconstructed H&E, as a module of its own, so that under
    DDP its gradients are averaged across ranks like the generator's."""

    def __init__(self, loss: AutoencoderLoss):
        super().__init__()
        self.discriminator = loss.discriminator
        self._loss = loss.discriminator_loss

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return self._loss(real, fake)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Owns a run folder: model, optimiser, EMA, data stream, checkpoints, metrics, samples."""

    def __init__(self, *, kind: str, cfg: TrainConfig, run_dir: Path, store: Path, device: str | None = None,
                 autoencoder_run: Path | None = None, resume: bool = False):
        check_train_config(cfg)
        self.kind, self.run_dir = kind, Path(run_dir)
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        requested = cfg.device if device is None else device
        self.device = resolve_device(requested, env=os.environ, cuda_count=torch.cuda.device_count(),
                                     processes=self.world)
        self.precision = resolve_precision(cfg.precision, self.device, bf16_supported=bf16_supported(self.device),
                                           where="train.precision")
        # config.yaml records what auto became; the device by kind (each rank picks its own index)
        self.cfg = cfg = replace(cfg, precision=self.precision,
                                 device=self.device.type if requested == "auto" else requested)
        self.distributed = self.world > 1
        if self.distributed:
            _init_distributed(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # tiles have one size: pick the fastest kernels once
        self.is_main = self.rank == 0
        self.store_path = Path(store)
        store_obj = TileStore.open(self.store_path)
        self.in_channels = store_obj.channels_in
        self.tile_px = store_obj.tile_px
        self.tile_mpp = store_obj.rows[0].mpp if store_obj.rows else None
        self.stats = load_or_compute_stats(store_obj)
        self.train_set = PairedTileDataset(self.store_path, split=cfg.data.split, augment=cfg.data.augment,
                                           seed=cfg.seed)
        self.val_set = PairedTileDataset(self.store_path, split=cfg.data.val_split, augment=None, seed=cfg.seed)
        self.prep = BatchPreprocessor(self.stats, augment=cfg.data.augment)
        self.val_prep = BatchPreprocessor(self.stats, augment=None)

        self.ae, self.ae_meta, latent_scale = None, None, 1.0
        latent_channels = downsample = None
        if kind == "ldm":
            if autoencoder_run is None:
                raise ConfigError("training the ldm needs a trained autoencoder: pass --autoencoder RUN "
                                  "(or set train.autoencoder_run)")
            self.ae, self.ae_meta = load_autoencoder(autoencoder_run, self.device)
            self.autoencoder_run = Path(autoencoder_run)
            latent_scale = float(self.ae_meta["latent_scale"])
            latent_channels = int(self.ae_meta["latent_channels"])
            downsample = int(self.ae_meta["downsampling"])
            if self.tile_px % (downsample * 2 ** (len(cfg.ldm.denoiser.channels) - 1)):
                raise ConfigError(f"tiles of {self.tile_px} px do not divide into the latent UNet's levels "
                                  f"(downsampling {downsample} × 2^{len(cfg.ldm.denoiser.channels) - 1}); "
                                  "change ldm.denoiser.channels or the tile size")
        if kind == "baseline" and (self.tile_px < 32 or self.tile_px % 16):
            raise ConfigError(f"tiles of {self.tile_px} px are too small or uneven for the baseline U-Net (four 2× "
                              "poolings): prepare tiles of at least 32 px, a multiple of 16 (prepare tiles.size)")
        torch.manual_seed(cfg.seed)  # weight initialisation
        self.model = build_model(kind, cfg, in_channels=self.in_channels, latent_channels=latent_channels,
                                 downsample=downsample).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        if cfg.gradient_checkpointing:  # the trained copy only; the EMA never runs a backward pass
            enable_checkpointing(self.model)
        self.ae_loss = AutoencoderLoss(cfg.autoencoder).to(self.device) if kind == "autoencoder" else None
        self.step_module = _Step(kind, self.model, latent_scale=latent_scale,
                                 encode=functools.partial(encode_mean, self.ae) if self.ae is not None else None,
                                 loss=self.ae_loss.generator_loss if self.ae_loss is not None else None)
        self.latent_scale = latent_scale
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        # fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.d_optimizer = self.d_step = None
        if self.ae_loss is not None and self.ae_loss.discriminator is not None:
            self.d_step = _DiscriminatorStep(self.ae_loss)
            self.d_optimizer = torch.optim.AdamW(self.d_step.parameters(), lr=o.lr, betas=(0.5, 0.9))
            self.d_scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ddp = self.d_ddp = None
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers (BatchNorm statistics) are averaged after every step instead (_average_buffers).
            self.ddp = DDP(self.step_module, device_ids=ids, broadcast_buffers=False)
            if self.d_step is not None:
                self.d_ddp = DDP(self.d_step, device_ids=ids, broadcast_buffers=False)
        if self.d_step is not None:  # a fixed critic in the generator's step; trained only in its own
            self.d_step.requires_grad_(False)
        self.step = 0
        if resume:
            self._resume()
        elif self.is_main:
            self._start_run_dir()

    # -- run folder -----------------------------------------------------------------------------
    def _start_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if (self.run_dir / "state.pt").exists():
            raise InputError(f"{self.run_dir}: already holds a training run; use --resume {self.run_dir} to continue "
                             "it, or choose another --out")
        save_config(self.cfg, self.run_dir / "config.yaml")
        (self.run_dir / "samples").mkdir(exist_ok=True)
        with open(self.run_dir / "metrics.csv", "w", newline="") as fh:
            csv.writer(fh).writerow(METRIC_COLUMNS)

    def _resume(self) -> None:
        state = ckpt.load_state(self.run_dir / "state.pt")
        meta = state.get("meta", {})
        if meta.get("kind") != self.kind:
            raise CheckpointError(f"{self.run_dir}: is a {meta.get('kind')} run; cannot resume it as {self.kind}")
        if meta.get("in_channels") != self.in_channels:
            raise InputError(f"{self.store_path}: has {self.in_channels}-channel unstained tiles but the run in "
                             f"{self.run_dir} was trained on {meta.get('in_channels')}; resume with its own store")
        if meta.get("model_hash") != _model_hash(self.kind, self.cfg):
            raise ConfigError(f"{self.run_dir}: the model section of the config differs from the run's "
                              f"(see {self.run_dir / 'config.yaml'}); resume with the same model settings")
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.d_optimizer is not None:
                self.ae_loss.discriminator.load_state_dict(state["discriminator"])
                self.d_optimizer.load_state_dict(state["d_optimizer"])
            if self.scaler.is_enabled() and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
                if self.d_optimizer is not None:
                    self.d_scaler.load_state_dict(state["d_scaler"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{self.run_dir / 'state.pt'}: does not fit this model ({exc})") from None
        self.step = int(state["step"])
        if self.is_main:
            _truncate_metrics(self.run_dir / "metrics.csv", self.step)
        log.info("resumed %s at step %d", self.run_dir, self.step)

    # -- the loop -------------------------------------------------------------------------------
    def _loader(self):
        cfg = self.cfg
        consumed = self.step * cfg.data.batch_size * cfg.optim.accumulate
        sampler = EpochSampler(len(self.train_set), seed=cfg.seed, start=consumed, rank=self.rank, world=self.world)
        return torch.utils.data.DataLoader(
            self.train_set, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=cfg.data.workers,
            persistent_workers=cfg.data.workers > 0, pin_memory=self.device.type == "cuda")

    def _generator(self, step: int, micro: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.cfg.seed * 1_000_003 + step * 1_009 + micro * 17 + self.rank * 7_919) % 2**63)
        return g

    def train(self, *, progress: bool = False, until: int | None = None) -> dict[str, Any]:
        """Runs to ``cfg.steps`` (or stops after step ``until``, as an interruption would, keeping
        only what the checkpoints saved); returns the last logged values."""
        from tqdm import tqdm

        cfg = self.cfg
        # Workers fork when the iterator is created: before wandb starts its service threads, which
        # a forked child must not touch (wandb raises ForkedError from its import hooks).
        it = iter(self._loader())
        tracker = Tracker(mode=cfg.wandb, run_dir=self.run_dir, config=to_dict(cfg), name=self.run_dir.name,
                          enabled=self.is_main)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.kind}", unit="step",
                   disable=not (progress and self.is_main))
        last: dict[str, Any] = {}
        window_t, window_tiles, losses = time.perf_counter(), 0, []
        try:
            while self.step < min(cfg.steps, until if until is not None else cfg.steps):
                total, tiles = self.optimisation_step(it)
                window_tiles += tiles
                self.step += 1
                losses.append(total)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    dt = time.perf_counter() - window_t
                    last = {"step": self.step, "loss": float(np.mean(losses)), "lr": self.scheduler.get_last_lr()[0],
                            "tiles_per_s": window_tiles * self.world / max(dt, 1e-9)}
                    bar.set_postfix(loss=f"{last['loss']:.4f}")
                    val = self.validate() if (self.step % cfg.val_every == 0 or self.step == cfg.steps) else {}
                    last.update(val)
                    if self.is_main:
                        _append_metrics(self.run_dir / "metrics.csv", last)
                        tracker.log({k: v for k, v in last.items() if k != "step"}, step=self.step)
                    window_t, window_tiles, losses = time.perf_counter(), 0, []
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
        finally:
            bar.close()
            tracker.finish()
        return last

    def optimisation_step(self, batches) -> tuple[float, int]:
        """One optimisation step at ``self.step`` from the iterator ``batches`` (DataLoader batches:
        ``accumulate`` of them): forward and backward in the run's precision, gradients exchanged
        across ranks, optimiser, discriminator, EMA. Returns the mean loss and the tiles used."""
        cfg = self.cfg
        tiles = 0
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(cfg.optim.accumulate):
            batch = next(batches)
            g = self._generator(self.step, micro)
            x, y = self.prep({k: v.to(self.device, non_blocking=True) for k, v in batch.items()
                              if k != "index"}, generator=g)
            # under accumulation, ranks exchange gradients once, after the last micro-batch
            last_micro = micro == cfg.optim.accumulate - 1
            with contextlib.nullcontext() if self.ddp is None or last_micro else self.ddp.no_sync():
                with autocast(self.device, self.precision):
                    loss, _parts = (self.ddp or self.step_module)(x, y, g, self.step)
                if not torch.isfinite(loss):
                    raise RunError(f"training {self.kind} at step {self.step}: the loss is "
                                   f"{float(loss.detach())}; the last good checkpoint in {self.run_dir} is "
                                   "kept — lower train.optim.lr or check the data, then --resume")
                self.scaler.scale(loss / cfg.optim.accumulate).backward()
            total += float(loss.detach()) / cfg.optim.accumulate
            tiles += x.shape[0]
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.d_step is not None and self.step >= cfg.autoencoder.adversarial_start:
            self._discriminator_step(y, self.step_module.recon.detach())
        self.step_module.recon = None
        if self.distributed:
            _average_buffers(self.model, self.world)
            if self.d_step is not None:
                _average_buffers(self.d_step, self.world)
        _ema_update(self.ema, self.model, cfg.ema_decay if self.step >= cfg.optim.warmup_steps else 0.0)
        return total, tiles

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """One step of the patch discriminator on the last micro-batch (in the run's precision)."""
        self.d_step.requires_grad_(True)
        self.d_optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            d_loss = (self.d_ddp or self.d_step)(real, fake)
        self.d_scaler.scale(d_loss).backward()
        self.d_scaler.step(self.d_optimizer)
        self.d_scaler.update()
        self.d_step.requires_grad_(False)

    # -- saving ---------------------------------------------------------------------------------
    def model_meta(self) -> dict[str, Any]:
        cfg = self.cfg
        meta: dict[str, Any] = {
            "kind": self.kind, "version": stainldm.__version__, "step": self.step,
            "in_channels": self.in_channels, "tile_px": self.tile_px, "mpp": self.tile_mpp,
            "input_stats": self.stats, "config_hash": config_hash(cfg),
            "trained_on": {"device": describe(self.device), "processes": self.world, "precision": self.precision},
        }
        if self.kind == "autoencoder":
            meta.update(config=to_dict(cfg.autoencoder), latent_channels=cfg.autoencoder.latent_channels,
                        downsampling=downsampling(cfg.autoencoder), latent_scale=self.measure_latent_scale())
        elif self.kind == "ldm":
            meta.update(config=to_dict(cfg.ldm), latent_channels=self.ae_meta["latent_channels"],
                        downsampling=self.ae_meta["downsampling"], latent_scale=self.latent_scale,
                        autoencoder={k: self.ae_meta[k] for k in ("config", "latent_channels", "downsampling",
                                                                  "latent_scale")})
        else:
            meta.update(config=to_dict(cfg.baseline))
        return meta

    def save(self) -> None:
        """Checkpoint: export (EMA) weights + model.json, then state.pt last (what resume reads)."""
        if self.distributed:
            torch.distributed.barrier()
        if not self.is_main:
            return
        meta = self.model_meta()
        ckpt.save_weights(self.ema, self.run_dir / "model.safetensors")
        if self.kind == "ldm":  # a self-contained checkpoint: the autoencoder travels with it
            ckpt.save_weights(self.ae, self.run_dir / "autoencoder.safetensors")
        ckpt.write_model_json(self.run_dir / "model.json", meta)
        state = {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "meta": {"kind": self.kind, "in_channels": self.in_channels,
                          "model_hash": _model_hash(self.kind, self.cfg)}}
        if self.d_optimizer is not None:
            state["discriminator"] = self.ae_loss.discriminator.state_dict()
            state["d_optimizer"] = self.d_optimizer.state_dict()
        if self.scaler.is_enabled():  # fp16: the loss scale, for an exact resume
            state["scaler"] = self.scaler.state_dict()
            if self.d_optimizer is not None:
                state["d_scaler"] = self.d_scaler.state_dict()
        ckpt.save_state(self.run_dir / "state.pt", state)

    @torch.no_grad()
    def measure_latent_scale(self, tiles: int = 64) -> float:
        """1 / std of the EMA autoencoder's latent means over up to ``tiles`` training tiles."""
        ds = PairedTileDataset(self.store_path, split=self.cfg.data.split, augment=None)
        idx = np.linspace(0, len(ds) - 1, min(tiles, len(ds))).astype(int)
        zs = []
        for start in range(0, len(idx), 16):
            y = torch.stack([ds[int(i)]["stained"] for i in idx[start : start + 16]]).to(self.device)
            zs.append(self.ema.encode(BatchPreprocessor.target(y))[0].float().cpu())
        std = float(torch.cat(zs).std())
        return 1.0 / max(std, 1e-6)

    # -- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """EMA model's H&E for normalised inputs ``x`` (autoencoder: reconstructs ``x`` = H&E)."""
        self.ema.eval()
        if self.kind == "autoencoder":
            return self.ema.reconstruct(x).clamp(-1, 1)
        if self.kind == "baseline":
            return self.ema(x).clamp(-1, 1)
        cfg = self.cfg
        z = self.ema.sample_latent(x, sampler=cfg.sampler, steps=cfg.sample_steps, guidance=cfg.guidance,
                                   generator=generator)
        return self.ae.decode(z / self.latent_scale).clamp(-1, 1)

    def validate(self) -> dict[str, float]:
        """PSNR/SSIM of EMA outputs against the real H&E on the first val tiles; writes a grid."""
        if not self.is_main:
            return {}
        from stainldm.train.validation import psnr_ssim, sample_grid

        n = min(self.cfg.val_tiles, len(self.val_set))
        batch = [self.val_set[i] for i in range(n)]
        u = torch.stack([b["unstained"] for b in batch]).to(self.device)
        s = torch.stack([b["stained"] for b in batch]).to(self.device)
        x, y = self.val_prep({"unstained": u, "stained": s})
        g = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        outs = []
        for start in range(0, n, 8):
            xin = y[start : start + 8] if self.kind == "autoencoder" else x[start : start + 8]
            outs.append(self.predict(xin, generator=g))
        pred = torch.cat(outs)
        psnr, ssim = psnr_ssim(pred, y)
        sample_grid(x, pred, y, self.run_dir / "samples" / f"step_{self.step:07d}.png")
        return {"val_psnr": psnr, "val_ssim": ssim}


# ---------------------------------------------------------------------------------------------
def _init_distributed(device: torch.device) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)


def _lr_lambda(cfg: TrainConfig):
    o = cfg.optim
    warm, total = max(1, o.warmup_steps), max(1, cfg.steps)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    params = list(zip(ema.parameters(), model.parameters(), strict=True))
    torch._foreach_lerp_([e for e, _ in params], [p.detach() for _, p in params], 1 - decay)  # one kernel per group
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


@torch.no_grad()
def _average_buffers(module: nn.Module, world: int) -> None:
    """Averages the floating-point buffers (BatchNorm running statistics) of ``module`` over the
    ranks: each rank updated them from its own batch, and the ranks must stay identical."""
    import torch.distributed as dist

    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat)
    flat /= world
    for b, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
        b.copy_(part.view_as(b))


def _model_hash(kind: str, cfg: TrainConfig) -> str:
    section = {"autoencoder": cfg.autoencoder, "ldm": cfg.ldm, "baseline": cfg.baseline}[kind]
    return config_hash(section)


def _append_metrics(path: Path, values: dict[str, Any]) -> None:
    with open(path, "a", newline="") as fh:
        csv.writer(fh).writerow([_fmt(values.get(k)) for k in METRIC_COLUMNS])


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops rows logged after the checkpoint being resumed (they will be logged again)."""
    if not path.is_file():
        return
    rows = list(csv.reader(path.open()))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    atomic_write_csv(path, keep)


def resolve_config(cfg: TrainConfig, *, store: Path | None, autoencoder_run: Path | None, wandb: str | None
                   ) -> TrainConfig:
    """Folds command-line paths into the config (so config.yaml records what was used)."""
    data = cfg.data if store is None else replace(cfg.data, store=str(store))
    out = replace(cfg, data=data)
    if autoencoder_run is not None:
        out = replace(out, autoencoder_run=str(autoencoder_run))
    if wandb is not None:
        out = replace(out, wandb=wandb)
    return out
