"""Training configuration: one frozen dataclass tree, the ``train:`` section of a workflow YAML."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

from stainldm.config import apply_overrides, from_dict, load_yaml
from stainldm.data.augment import AugmentConfig
from stainldm.errors import ConfigError, InputError
from stainldm.models.autoencoder import AutoencoderConfig
from stainldm.models.baseline import BaselineConfig
from stainldm.models.ldm import LDMConfig


@dataclass(frozen=True)
class DataConfig:
    """Where tiles come from and how they are batched.

    Attributes:
        store: tile store folder (``--store`` overrides).
        split: split to train on.
        val_split: split used for validation metrics and sample grids.
        batch_size: tiles per optimisation step per process (before accumulation).
        workers: DataLoader worker processes (0 = in the main process).
        augment: paired augmentation.
    """

    store: str | None = None
    split: str = "train"
    val_split: str = "val"
    batch_size: int = 8
    workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio · lr``.

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        betas: Adam betas.
        warmup_steps: linear warm-up steps.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        grad_clip: max global gradient norm (0 = off).
        accumulate: micro-batches per optimisation step.
    """

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    accumulate: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """A training run (autoencoder, ldm or baseline: the command picks which section applies).

    Attributes:
        seed: drives every random draw (tile order, augmentation, noise, timesteps, dropout).
        steps: optimisation steps.
        precision: ``fp32``, ``bf16`` (autocast, on CUDA or CPU) or ``fp16`` (autocast with loss
            scaling, CUDA only); ``auto`` is bf16 on a GPU that has it, fp16 on an older GPU, fp32 on a
            CPU. The run's config.yaml records what ``auto`` became.
        device: ``auto``, ``cpu``, ``cuda`` (under torchrun or srun each process takes
            ``cuda:LOCAL_RANK``) or ``cuda:N`` (one process); ``--device`` overrides, and the run's
            config.yaml records what ``auto`` became.
        gradient_checkpointing: recompute activations in the backward pass instead of keeping them
            (the autoencoder's encoder and decoder, the denoiser's UNet blocks): less GPU memory for
            about a third more compute. The baseline has no such switch.
        ema_decay: exponential moving average of the weights (exported and validated).
        checkpoint_every, val_every, log_every: intervals in steps.
        val_tiles: validation tiles per evaluation (first N of the val split).
        sample_steps, sampler, guidance: how the LDM samples during validation.
        wandb: experiment tracking mode (``--wandb`` overrides).
        autoencoder_run: trained autoencoder run folder (ldm only; ``--autoencoder`` overrides).
    """

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "amp": "use precision: bf16 (was amp: true) or precision: fp32 (was amp: false); precision also takes "
               "fp16 and auto",
    }

    seed: int = 0
    steps: int = 1000
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    gradient_checkpointing: bool = False
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    val_every: int = 200
    log_every: int = 10
    val_tiles: int = 16
    sample_steps: int = 10
    sampler: str = "dpmpp_2m"
    guidance: float = 1.0
    wandb: Literal["online", "offline", "disabled"] = "offline"
    autoencoder_run: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    ldm: LDMConfig = field(default_factory=LDMConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)


def check_train_config(cfg: TrainConfig) -> None:
    """Value checks types cannot express; ConfigError names the key."""
    for key in ("steps", "checkpoint_every", "val_every", "log_every"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"train.{key} ({getattr(cfg, key)}) must be positive")
    if cfg.data.batch_size <= 0:
        raise ConfigError(f"train.data.batch_size ({cfg.data.batch_size}) must be positive")
    if cfg.data.workers < 0:
        raise ConfigError(f"train.data.workers ({cfg.data.workers}) must be 0 or more")
    if cfg.optim.accumulate <= 0:
        raise ConfigError(f"train.optim.accumulate ({cfg.optim.accumulate}) must be positive")
    if not 0 <= cfg.ema_decay < 1:
        raise ConfigError(f"train.ema_decay ({cfg.ema_decay}) must be in [0, 1)")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"train.optim.lr ({cfg.optim.lr}) must be positive")
    from stainldm.diffusion.samplers import SAMPLERS

    if not 0 < cfg.sample_steps <= cfg.ldm.schedule.train_steps:
        raise ConfigError(f"train.sample_steps ({cfg.sample_steps}) must be from 1 to "
                          f"ldm.schedule.train_steps ({cfg.ldm.schedule.train_steps})")
    if cfg.sampler not in SAMPLERS:
        raise ConfigError(f"train.sampler '{cfg.sampler}' is not one of {', '.join(SAMPLERS)}")
    if cfg.val_tiles < 1:
        raise ConfigError(f"train.val_tiles ({cfg.val_tiles}) must be at least 1")


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The ``train:`` section of a workflow YAML (or the defaults), with ``key=value`` overrides.

    Raises:
        ConfigError: the file has no ``train:`` section, or a key, type or value is wrong.
    """
    data = load_yaml(path) if path else {}
    if path is not None and "train" not in data:
        raise ConfigError(f"{path}: has no 'train:' section")
    section = (data.get("train") or {}) if path else {}
    return from_dict(TrainConfig, apply_overrides(section, list(overrides)), where="train")


def load_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config a training run saved (its ``config.yaml``), with overrides: what resuming it continues.

    Raises:
        InputError: ``run_dir`` is not a training run.
    """
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise InputError(f"{run_dir}: not a training run (no config.yaml)")
    return from_dict(TrainConfig, apply_overrides(load_yaml(saved), list(overrides)), where="train")


def resolve_config(cfg: TrainConfig, *, store: Path | None, autoencoder_run: Path | None, wandb: str | None
                   ) -> TrainConfig:
    """Folds command-line paths into the config (so config.yaml records what was used).

    Args:
        cfg: the config as loaded.
        store: the tile store, when given apart from the config.
        autoencoder_run: the trained autoencoder's run folder, when given.
        wandb: the tracking mode, when given.
    """
    data = cfg.data if store is None else replace(cfg.data, store=str(store))
    out = replace(cfg, data=data)
    if autoencoder_run is not None:
        out = replace(out, autoencoder_run=str(autoencoder_run))
    if wandb is not None:
        out = replace(out, wandb=wandb)
    return out
