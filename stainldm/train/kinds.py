"""What differs between the three kinds a :class:`~stainldm.train.loop.Trainer` trains: one small
class each for its model, its loss, its validation prediction and what its ``model.json`` records.

    task = make_kind("ldm", cfg, in_channels=2, tile_px=256, store=Path("store"), device=device,
                     autoencoder_run=Path("runs/ae"))
    model = task.build_model()
    loss, parts = task.loss(model, x, y, generator, step)

:func:`make_kind` picks the class by name in plain code (as timm's ``create_model`` does); the
trainer itself has no per-kind branches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stainldm.config import to_dict
from stainldm.data.dataset import BatchPreprocessor, PairedTileDataset
from stainldm.errors import CheckpointError, ConfigError
from stainldm.models.autoencoder import (
    ENCODER_PARTS,
    AutoencoderLoss,
    architecture_diff,
    build_autoencoder,
    decoder_blocks,
    downsampling,
    encode_mean,
    load_deepened,
)
from stainldm.models.runs import (
    autoencoder_in,
    build_model,
    load_autoencoder,
    load_weights,
    model_config,
    save_weights,
)
from stainldm.train.config import TrainConfig


class TrainKind:
    """The per-kind parts of training; the defaults are those of a kind without extras.

    Args:
        cfg: the run's training config (the kind reads its own section).
        in_channels: unstained channels of the tile store.
        tile_px: tile side of the tile store, px.
        store: the tile store folder.
        device: where the models compute.
    """

    name = ""
    #: the frozen autoencoder the kind trains on (ldm only)
    ae: nn.Module | None = None

    def __init__(self, cfg: TrainConfig, *, in_channels: int, tile_px: int, store: Path, device: torch.device):
        self.cfg, self.in_channels, self.tile_px, self.store, self.device = cfg, in_channels, tile_px, store, device

    @property
    def section(self) -> Any:
        """The config section of the model (what model.json records; resuming checks its hash)."""
        return getattr(self.cfg, self.name)

    def build_model(self) -> nn.Module:
        """The trainable model, freshly initialised from the global torch seed."""
        return build_model(self.name, self.section, in_channels=self.in_channels)

    def build_loss(self, device: torch.device) -> _DiscriminatorStep | None:
        """Builds the modules the loss owns (after the model: they continue its seeded stream).

        Returns:
            the discriminator's step when the loss trains one, else None.
        """
        return None

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, step: int
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch: normalised unstained ``x`` ``(B, C_in, H, W)``, H&E ``y``
        ``(B, 3, H, W)`` in [-1, 1], the micro-batch's ``generator`` and the optimisation ``step``.

        Returns:
            the scalar loss and its named parts (floats, for logging).
        """
        raise NotImplementedError

    def take_fake(self) -> torch.Tensor | None:
        """The last micro-batch's generated H&E for the discriminator (None without one); clears it."""
        return None

    def validation_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the model maps to H&E in validation: the unstained tile."""
        return x

    def predict(self, ema: nn.Module, x: torch.Tensor, *, generator: torch.Generator | None) -> torch.Tensor:
        """The EMA model's H&E ``(B, 3, H, W)`` in [-1, 1] for :meth:`validation_input` ``x``."""
        return ema(x).clamp(-1, 1)

    def meta(self, ema: nn.Module) -> dict[str, Any]:
        """The kind's entries of model.json (after the common ones)."""
        return {"config": to_dict(self.section)}

    def save_extra(self, run_dir: Path) -> None:
        """Writes what the exported model needs beside model.safetensors."""


class AutoencoderKind(TrainKind):
    """The autoencoder: L1 + KL (+ adversarial, + perceptual) on H&E; it reconstructs H&E."""

    name = "autoencoder"

    def __init__(self, cfg: TrainConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.terms: AutoencoderLoss | None = None
        self.recon: torch.Tensor | None = None  # the last reconstruction, for the discriminator
        self.init_meta: dict[str, Any] | None = None  # model.json entries of ``autoencoder.init``

    def build_model(self) -> nn.Module:
        """The autoencoder: seeded, or ``autoencoder.init``'s weights; with ``train_encoder`` false the
        encoder and latent projections are frozen (the optimiser and DDP see only the decoder).

        Raises:
            CheckpointError: ``init`` holds no autoencoder, or one of another architecture.
        """
        model = super().build_model()
        ae = self.cfg.autoencoder
        if ae.init:
            self.init_meta, weights = autoencoder_in(ae.init)
            init = model_config("autoencoder", self.init_meta["config"])
            differ = architecture_diff(ae, init, encoder_only=True)
            if differ:
                raise CheckpointError(f"{ae.init}: its autoencoder differs in {', '.join(differ)} from "
                                      f"train.autoencoder; set those keys as `autoencoder.init` has them")
            if decoder_blocks(ae) < decoder_blocks(init):
                raise CheckpointError(f"{ae.init}: its decoder has {decoder_blocks(init)} residual blocks per level, "
                                      f"train.autoencoder {decoder_blocks(ae)}; autoencoder.decoder_res_blocks can add "
                                      "blocks to a trained decoder, not remove them")
            if decoder_blocks(ae) == decoder_blocks(init):
                load_weights(model, weights)
            else:  # a deeper decoder, starting as init's
                trained = build_autoencoder(init)
                load_weights(trained, weights)
                load_deepened(model, trained)
        if not ae.train_encoder:
            for part in ENCODER_PARTS:
                getattr(model, part).requires_grad_(False)
        return model

    def build_loss(self, device: torch.device) -> _DiscriminatorStep | None:
        self.terms = AutoencoderLoss(self.cfg.autoencoder).to(device)
        if self.terms.discriminator is None:
            return None
        return _DiscriminatorStep(self.terms, start=self.cfg.autoencoder.adversarial_start)

    def loss(self, model, x, y, generator, step):
        recon, mu, sigma = model(y)
        self.recon = recon
        return self.terms.generator_loss(y, recon, mu, sigma, step)

    def take_fake(self) -> torch.Tensor | None:
        recon, self.recon = self.recon, None
        return recon

    def validation_input(self, x, y):
        return y

    def predict(self, ema, x, *, generator):
        return ema.reconstruct(x).clamp(-1, 1)

    def meta(self, ema):
        ae = self.cfg.autoencoder
        # a frozen encoder keeps init's scale exactly: the ldms trained on init divide by it
        scale = float(self.init_meta["latent_scale"]) if not ae.train_encoder else self.measure_latent_scale(ema)
        return {"config": to_dict(ae), "latent_channels": ae.latent_channels, "downsampling": downsampling(ae),
                "latent_scale": scale}

    @torch.no_grad()
    def measure_latent_scale(self, ema: nn.Module, tiles: int = 64) -> float:
        """1 / std of ``ema``'s latent means over up to ``tiles`` training tiles (Rombach et al.
        2022, sec. 4.3.2: the diffusion model then sees latents of unit variance)."""
        ds = PairedTileDataset(self.store, split=self.cfg.data.split, augment=None)
        idx = np.linspace(0, len(ds) - 1, min(tiles, len(ds))).astype(int)
        zs = []
        for start in range(0, len(idx), 16):
            y = torch.stack([ds[int(i)]["stained"] for i in idx[start : start + 16]]).to(self.device)
            zs.append(ema.encode(BatchPreprocessor.target(y))[0].float().cpu())
        std = float(torch.cat(zs).std())
        return 1.0 / max(std, 1e-6)


class LdmKind(TrainKind):
    """The latent diffusion model, on the latents of a trained, frozen autoencoder.

    Args:
        autoencoder_run: the trained autoencoder's run folder.

    Raises:
        ConfigError: no ``autoencoder_run``, or tiles that do not divide into the UNet's levels.
        CheckpointError: the autoencoder run is missing, corrupt, unfinished or of another kind.
    """

    name = "ldm"

    def __init__(self, cfg: TrainConfig, *, autoencoder_run: Path | None, **kwargs):
        super().__init__(cfg, **kwargs)
        if autoencoder_run is None:
            raise ConfigError("training the ldm needs a trained autoencoder: pass `autoencoder_run` (its run "
                              "folder) or set train.autoencoder_run")
        self.ae, self.ae_meta = load_autoencoder(autoencoder_run, self.device)
        self.latent_scale = float(self.ae_meta["latent_scale"])
        self.latent_channels = int(self.ae_meta["latent_channels"])
        self.downsampling = int(self.ae_meta["downsampling"])
        levels = len(cfg.ldm.denoiser.channels) - 1
        if self.tile_px % (self.downsampling * 2**levels):
            raise ConfigError(f"tiles of {self.tile_px} px do not divide into the latent UNet's levels "
                              f"(downsampling {self.downsampling} × 2^{levels}); "
                              "change ldm.denoiser.channels or the tile size")

    def build_model(self):
        return build_model("ldm", self.cfg.ldm, in_channels=self.in_channels, latent_channels=self.latent_channels,
                           downsampling=self.downsampling)

    def loss(self, model, x, y, generator, step):
        with torch.no_grad():
            z0 = encode_mean(self.ae, y) * self.latent_scale  # (B, C_lat, H/f, W/f): μ, scaled, float32
        return model.training_loss(z0, x, generator=generator), {}

    def predict(self, ema, x, *, generator):
        cfg = self.cfg
        z = ema.sample_latent(x, sampler=cfg.sampler, steps=cfg.sample_steps, guidance=cfg.guidance,
                              generator=generator)
        return self.ae.decode(z / self.latent_scale).clamp(-1, 1)

    def meta(self, ema):
        ae = self.ae_meta
        return {"config": to_dict(self.cfg.ldm), "latent_channels": ae["latent_channels"],
                "downsampling": ae["downsampling"], "latent_scale": self.latent_scale,
                "autoencoder": {k: ae[k] for k in ("config", "latent_channels", "downsampling", "latent_scale")}}

    def save_extra(self, run_dir: Path) -> None:
        save_weights(self.ae, run_dir / "autoencoder.safetensors")  # a self-contained checkpoint


class BaselineKind(TrainKind):
    """The regression baseline: L1 from the unstained tile to H&E.

    Raises:
        ConfigError: tiles too small or uneven for the U-Net's four 2× poolings.
    """

    name = "baseline"

    def __init__(self, cfg: TrainConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        if self.tile_px < 32 or self.tile_px % 16:
            raise ConfigError(f"tiles of {self.tile_px} px are too small or uneven for the baseline U-Net (four 2× "
                              "poolings): prepare tiles of at least 32 px, a multiple of 16 (prepare tiles.size)")

    def loss(self, model, x, y, generator, step):
        pred = model(x)
        return (pred.float() - y).abs().mean(), {}


def make_kind(name: str, cfg: TrainConfig, *, in_channels: int, tile_px: int, store: Path, device: torch.device,
              autoencoder_run: Path | None = None) -> TrainKind:
    """The training parts of model kind ``name``.

    Args:
        name: ``autoencoder``, ``ldm`` or ``baseline``.
        cfg, in_channels, tile_px, store, device: as :class:`TrainKind`.
        autoencoder_run: the trained autoencoder (ldm only).

    Raises:
        ConfigError: an unknown ``name``, or a store or config the kind cannot train on.
    """
    common = {"in_channels": in_channels, "tile_px": tile_px, "store": Path(store), "device": device}
    if name == "autoencoder":
        return AutoencoderKind(cfg, **common)
    if name == "ldm":
        return LdmKind(cfg, autoencoder_run=autoencoder_run, **common)
    if name == "baseline":
        return BaselineKind(cfg, **common)
    raise ConfigError(f"unknown model kind '{name}'; use autoencoder, ldm or baseline")


class _DiscriminatorStep(nn.Module):
    """The discriminator's loss on real and reconstructed H&E, as a module of its own, so that under
    DDP its gradients are averaged across ranks like the generator's.

    Args:
        terms: the autoencoder's loss, which owns the discriminator.
        start: the step from which it trains (and the generator's loss includes it).
    """

    def __init__(self, terms: AutoencoderLoss, *, start: int):
        super().__init__()
        self.discriminator = terms.discriminator
        self._loss = terms.discriminator_loss
        self.start = start

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return self._loss(real, fake)
