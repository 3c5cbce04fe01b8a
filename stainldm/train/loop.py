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

What differs between the kinds (model, loss, validation prediction, model.json) is a small class
each in :mod:`stainldm.train.kinds`; models are built and loaded by :mod:`stainldm.models.runs`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
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
from stainldm.models._runtime import enable_checkpointing
from stainldm.models.runs import save_weights, write_model_json
from stainldm.seeds import Stream, derive_seed
from stainldm.train import checkpoint as ckpt
from stainldm.train._distributed import average_buffers, init_distributed
from stainldm.train._optim import ema_update, lr_lambda
from stainldm.train.config import TrainConfig, check_train_config
from stainldm.train.kinds import TrainKind, make_kind
from stainldm.train.tracking import Tracker, append_metrics, start_metrics, truncate_metrics

log = logging.getLogger(__name__)


class _Step(nn.Module):
    """The loss of one micro-batch, as a module so that DDP sees a forward call. Only the trained
    model is a submodule (what DDP synchronises): the kind's frozen autoencoder and loss terms are
    held by ``task``, a plain object, and the discriminator has its own optimiser and wrapper."""

    def __init__(self, task: TrainKind, model: nn.Module):
        super().__init__()
        self.model, self._task = model, task

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, step: int):
        return self._task.loss(self.model, x, y, generator, step)


class Trainer:
    """Owns a run folder: model, optimiser, EMA, data stream, checkpoints, metrics, samples.

    Args:
        kind: ``autoencoder``, ``ldm`` or ``baseline``.
        cfg: the training config.
        run_dir: the run folder (created; with ``resume``, an interrupted run's).
        store: the tile store to train on.
        device: overrides ``cfg.device`` when given.
        autoencoder_run: the trained autoencoder's run folder (ldm only).
        resume: continue the run in ``run_dir`` from its last checkpoint, exactly.

    Raises:
        ConfigError: a bad config value, or a config or store the kind cannot train on.
        InputError: ``run_dir`` already holds a run (without ``resume``), or a store that does not fit it.
        CheckpointError: an autoencoder run or training state that cannot be read or does not fit.
    """

    def __init__(self, *, kind: str, cfg: TrainConfig, run_dir: Path, store: Path, device: str | None = None,
                 autoencoder_run: Path | None = None, resume: bool = False):
        check_train_config(cfg)
        self.kind, self.run_dir = kind, Path(run_dir)
        self._place(cfg, device)
        self._open_store(Path(store))
        self.task = make_kind(kind, self.cfg, in_channels=self.in_channels, tile_px=self.tile_px,
                              store=self.store_path, device=self.device, autoencoder_run=autoencoder_run)
        self._build_models()
        self._build_optimisers()
        self._wrap_distributed()
        self.step = 0
        if resume:
            self._resume()
        elif self.is_main:
            self._start_run_dir()

    # -- construction, in order -----------------------------------------------------------------
    def _place(self, cfg: TrainConfig, device: str | None) -> None:
        """This process's rank, device and precision; joins the process group under torchrun."""
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        requested = cfg.device if device is None else device
        self.device = resolve_device(requested, env=os.environ, cuda_count=torch.cuda.device_count(),
                                     processes=self.world)
        self.precision = resolve_precision(cfg.precision, self.device, bf16_supported=bf16_supported(self.device),
                                           where="train.precision")
        # config.yaml records what auto became; the device by kind (each rank picks its own index)
        self.cfg = replace(cfg, precision=self.precision, device=self.device.type if requested == "auto" else requested)
        self.distributed = self.world > 1
        if self.distributed:
            init_distributed(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # tiles have one size: pick the fastest kernels once
        self.is_main = self.rank == 0

    def _open_store(self, store: Path) -> None:
        """The tile store's facts (channels, tile size, mpp, input statistics) and its datasets."""
        cfg = self.cfg
        self.store_path = store
        tiles = TileStore.open(store)
        self.in_channels = tiles.channels_in
        self.channel_names = list(tiles.channel_names or ())  # model.json; staining picks channels by them
        self.tile_px = tiles.tile_px
        self.tile_mpp = tiles.rows[0].mpp if tiles.rows else None
        self.stats = load_or_compute_stats(tiles)
        self.train_set = PairedTileDataset(store, split=cfg.data.split, augment=cfg.data.augment, seed=cfg.seed)
        self.val_set = PairedTileDataset(store, split=cfg.data.val_split, augment=None, seed=cfg.seed)
        self.prep = BatchPreprocessor(self.stats, augment=cfg.data.augment)
        self.val_prep = BatchPreprocessor(self.stats, augment=None)

    def _build_models(self) -> None:
        """The trained model (seeded initialisation), its EMA, and the kind's loss modules."""
        torch.manual_seed(self.cfg.seed)  # weight initialisation
        self.model = self.task.build_model().to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        if self.cfg.gradient_checkpointing:  # the trained copy only; the EMA never runs a backward pass
            enable_checkpointing(self.model)
        self.d_step = self.task.build_loss(self.device)  # the autoencoder's discriminator, when it has one
        self.step_module = _Step(self.task, self.model)

    def _build_optimisers(self) -> None:
        """AdamW with warm-up and cosine decay; the discriminator's own AdamW; fp16 loss scalers."""
        o = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.cfg))
        # fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.d_optimizer = None
        if self.d_step is not None:
            self.d_optimizer = torch.optim.AdamW(self.d_step.parameters(), lr=o.lr, betas=(0.5, 0.9))
            self.d_scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _wrap_distributed(self) -> None:
        """DDP wrappers of the step module and the discriminator (under torchrun)."""
        self.ddp = self.d_ddp = None
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers (BatchNorm statistics) are averaged after every step instead (average_buffers).
            self.ddp = DDP(self.step_module, device_ids=ids, broadcast_buffers=False)
            if self.d_step is not None:
                self.d_ddp = DDP(self.d_step, device_ids=ids, broadcast_buffers=False)
        if self.d_step is not None:  # a fixed critic in the generator's step; trained only in its own
            self.d_step.requires_grad_(False)

    @property
    def ae(self) -> nn.Module | None:
        """The frozen autoencoder the ldm trains on (None for the other kinds)."""
        return self.task.ae

    # -- run folder -----------------------------------------------------------------------------
    def _start_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if (self.run_dir / "state.pt").exists():
            raise InputError(f"{self.run_dir}: already holds a training run; continue it with `resume`, or choose "
                             "another `run_dir`")
        save_config(self.cfg, self.run_dir / "config.yaml")
        (self.run_dir / "samples").mkdir(exist_ok=True)
        start_metrics(self.run_dir / "metrics.csv")

    def _resume(self) -> None:
        state = ckpt.load_state(self.run_dir / "state.pt")
        meta = state.get("meta", {})
        if meta.get("kind") != self.kind:
            raise CheckpointError(f"{self.run_dir}: is a {meta.get('kind')} run; cannot resume it as {self.kind}")
        if meta.get("in_channels") != self.in_channels:
            raise InputError(f"{self.store_path}: has {self.in_channels}-channel unstained tiles but the run in "
                             f"{self.run_dir} was trained on {meta.get('in_channels')}; resume with its own store")
        if meta.get("model_hash") != config_hash(self.task.section):
            raise ConfigError(f"{self.run_dir}: the model section of the config differs from the run's "
                              f"(see {self.run_dir / 'config.yaml'}); resume with the same model settings")
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.d_optimizer is not None:
                self.d_step.discriminator.load_state_dict(state["discriminator"])
                self.d_optimizer.load_state_dict(state["d_optimizer"])
            if self.scaler.is_enabled() and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
                if self.d_optimizer is not None:
                    self.d_scaler.load_state_dict(state["d_scaler"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{self.run_dir / 'state.pt'}: does not fit this model ({exc})") from exc
        self.step = int(state["step"])
        if self.is_main:
            truncate_metrics(self.run_dir / "metrics.csv", self.step)
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
        g.manual_seed(derive_seed(self.cfg.seed, Stream.TRAIN_STEP, step, micro, self.rank))
        return g

    def train(self, *, progress: bool = False, until: int | None = None) -> dict[str, Any]:
        """Runs to ``cfg.steps`` (or stops after step ``until``, as an interruption would, keeping
        only what the checkpoints saved); returns the last logged values."""
        from tqdm import tqdm

        cfg = self.cfg
        if self.is_main:  # a full disk stops the run now, not at its first checkpoint hours later
            ckpt.require_free_space(self.run_dir, self.checkpoint_bytes(), "a checkpoint (model.safetensors, state.pt)")
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
                        append_metrics(self.run_dir / "metrics.csv", last)
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
                                   "kept — lower train.optim.lr or check the data, then `resume`")
                self.scaler.scale(loss / cfg.optim.accumulate).backward()
            total += float(loss.detach()) / cfg.optim.accumulate
            tiles += x.shape[0]
        if cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        fake = self.task.take_fake()  # taken every step: it holds the last micro-batch's graph
        if self.d_step is not None and self.step >= self.d_step.start:
            self._discriminator_step(y, fake.detach())
        if self.distributed:
            average_buffers(self.model, self.world)
            if self.d_step is not None:
                average_buffers(self.d_step, self.world)
        ema_update(self.ema, self.model, cfg.ema_decay if self.step >= cfg.optim.warmup_steps else 0.0)
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
        """What model.json records: the run's common facts, then the kind's own."""
        return {
            "kind": self.kind, "version": stainldm.__version__, "step": self.step,
            "in_channels": self.in_channels, "channel_names": self.channel_names, "tile_px": self.tile_px,
            "mpp": self.tile_mpp,
            "input_stats": self.stats, "config_hash": config_hash(self.cfg),
            "trained_on": {"device": describe(self.device), "processes": self.world, "precision": self.precision},
            **self.task.meta(self.ema),
        }

    def save(self) -> None:
        """Checkpoint: export (EMA) weights + model.json, then state.pt last (what resume reads)."""
        if self.distributed:
            torch.distributed.barrier()
        if not self.is_main:
            return
        ckpt.require_free_space(self.run_dir, self.checkpoint_bytes(), f"the step-{self.step} checkpoint")
        state = self._state()
        meta = self.model_meta()
        save_weights(self.ema, self.run_dir / "model.safetensors")
        self.task.save_extra(self.run_dir)
        write_model_json(self.run_dir / "model.json", meta)
        ckpt.save_state(self.run_dir / "state.pt", state)

    def checkpoint_bytes(self) -> int:
        """What one checkpoint writes (model.safetensors and state.pt), from the parameters, so it is
        known before the first step: AdamW keeps two fp32 moments per trained parameter."""
        def moments(optimizer: torch.optim.Optimizer) -> int:
            return sum(2 * 4 * p.numel() for group in optimizer.param_groups for p in group["params"])

        size = ckpt.tensor_bytes(self.model.state_dict()) + 2 * ckpt.tensor_bytes(self.ema.state_dict())
        size += moments(self.optimizer)
        if self.d_optimizer is not None:
            size += ckpt.tensor_bytes(self.d_step.discriminator.state_dict()) + moments(self.d_optimizer)
        return size

    def _state(self) -> dict:
        """What resume needs: model, EMA, optimiser(s), scheduler, step, loss scale(s)."""
        state = {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "meta": {"kind": self.kind, "in_channels": self.in_channels,
                          "model_hash": config_hash(self.task.section)}}
        if self.d_optimizer is not None:
            state["discriminator"] = self.d_step.discriminator.state_dict()
            state["d_optimizer"] = self.d_optimizer.state_dict()
        if self.scaler.is_enabled():  # fp16: the loss scale, for an exact resume
            state["scaler"] = self.scaler.state_dict()
            if self.d_optimizer is not None:
                state["d_scaler"] = self.d_scaler.state_dict()
        return state

    # -- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """EMA model's H&E for normalised inputs ``x`` (autoencoder: reconstructs ``x`` = H&E)."""
        self.ema.eval()
        return self.task.predict(self.ema, x, generator=generator)

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
        g = torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg.seed, Stream.VALIDATION))
        inputs = self.task.validation_input(x, y)
        pred = torch.cat([self.predict(inputs[start : start + 8], generator=g) for start in range(0, n, 8)])
        psnr, ssim = psnr_ssim(pred, y)
        sample_grid(x, pred, y, self.run_dir / "samples" / f"step_{self.step:07d}.png")
        return {"val_psnr": psnr, "val_ssim": ssim}
