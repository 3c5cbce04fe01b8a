"""The conditional latent diffusion model: condition encoders + denoiser + noise schedule.

    ldm = LatentDiffusion(cfg, in_channels=2, latent_channels=4, downsampling=4)
    loss = ldm.training_loss(z0, unstained, generator=g)         # v-prediction MSE
    z = ldm.sample_latent(unstained, sampler="dpmpp_2m", steps=10, guidance=1.5, generator=g)

Training drops the condition with probability ``condition.dropout`` so that sampling can use
classifier-free guidance (Ho & Salimans 2022): ``out = out_uncond + w · (out_cond − out_uncond)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from stainldm.diffusion.samplers import sample as run_sampler
from stainldm.diffusion.schedule import NoiseSchedule, ScheduleConfig
from stainldm.models.denoiser import DenoiserConfig, build_denoiser
from stainldm.models.encoder import ConditionConfig, SemanticEncoder, SpatialStem, check_condition_config


@dataclass(frozen=True)
class LDMConfig:
    """The diffusion model: denoiser architecture, conditioning and noise schedule."""

    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class Condition:
    """Encoded condition of a batch: spatial features and/or cross-attention tokens."""

    spatial: torch.Tensor | None  # (B, c, h, w) at latent resolution
    tokens: torch.Tensor | None  # (B, S, D)

    def cat(self, other: Condition) -> Condition:
        return Condition(None if self.spatial is None else torch.cat([self.spatial, other.spatial]),
                         None if self.tokens is None else torch.cat([self.tokens, other.tokens]))


class LatentDiffusion(nn.Module):
    """Predicts v (or ε) for a noisy latent given the unstained tile."""

    def __init__(self, cfg: LDMConfig, *, in_channels: int, latent_channels: int, downsampling: int):
        super().__init__()
        check_condition_config(cfg.condition)
        self.cfg = cfg
        self.latent_channels = latent_channels
        self.downsampling = downsampling
        c = cfg.condition
        self.stem = SpatialStem(in_channels, c.spatial_channels, downsampling) if c.spatial else None
        self.semantic = SemanticEncoder(c, in_channels) if c.semantic else None
        self.null_tokens = nn.Parameter(torch.zeros(1, 1, c.token_dim)) if c.semantic else None
        self.unet = build_denoiser(cfg.denoiser, in_channels=latent_channels + (c.spatial_channels if c.spatial else 0),
                                   out_channels=latent_channels, cross_attention_dim=c.token_dim if c.semantic else None)
        self.schedule = NoiseSchedule(cfg.schedule)

    # -- conditioning ---------------------------------------------------------------------------
    def encode_condition(self, x_cond: torch.Tensor, drop: torch.Tensor | None = None) -> Condition:
        """Encodes ``(B, C_in, H, W)`` unstained tiles; rows where ``drop`` is True get the null
        condition.

        With ``drop`` given the null tokens are always part of the graph, also when no row is dropped
        (they then get a zero gradient): under DDP every parameter must take part in every step."""
        spatial = self.stem(x_cond) if self.stem is not None else None  # (B, c, H/f, W/f)
        tokens = self.semantic(x_cond) if self.semantic is not None else None  # (B, S, D)
        cond = Condition(spatial, tokens)
        if drop is not None:
            null = self.null_condition(cond)
            keep = (~drop).to(x_cond.dtype)
            if spatial is not None:
                cond.spatial = spatial * keep.view(-1, 1, 1, 1)
            if tokens is not None:
                cond.tokens = torch.where(drop.view(-1, 1, 1), null.tokens, tokens)
        return cond

    def null_condition(self, cond: Condition) -> Condition:
        """The "no condition" of classifier-free guidance, shaped like ``cond``."""
        spatial = torch.zeros_like(cond.spatial) if cond.spatial is not None else None
        tokens = self.null_tokens.expand_as(cond.tokens).to(cond.tokens.dtype) if cond.tokens is not None else None
        return Condition(spatial, tokens)

    # -- the network ----------------------------------------------------------------------------
    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Model output (v or ε) for noisy latents ``(B, C_lat, h, w)`` at timesteps ``t`` (B,)."""
        x = z_t if cond.spatial is None else torch.cat([z_t, cond.spatial], dim=1)
        return self.unet(x, timesteps=t, context=cond.tokens)

    def training_loss(self, z0: torch.Tensor, x_cond: torch.Tensor, *, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """MSE between the model output and the v (or ε) target at random timesteps."""
        b = z0.shape[0]
        t = self.schedule.sample_timesteps(b, generator=generator, device=z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        drop = torch.rand(b, generator=generator, device=z0.device) < self.cfg.condition.dropout
        z_t = self.schedule.q_sample(z0, t, noise)
        if self.cfg.schedule.prediction == "v":
            target = self.schedule.v_target(z0, t, noise)  # Salimans & Ho 2022
        else:
            target = noise
        out = self(z_t, t, self.encode_condition(x_cond, drop))
        return nn.functional.mse_loss(out.float(), target.float())

    def guided(self, cond: Condition, guidance: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A ``model_fn(z_t, t)`` for the samplers, with classifier-free guidance ``w``."""
        if guidance == 1.0:
            return lambda z, t: self(z, t, cond)
        both = cond.cat(self.null_condition(cond))

        def model_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = self(torch.cat([z, z]), torch.cat([t, t]), both)
            out_c, out_u = out.float().chunk(2)  # extrapolate in float32, whatever autocast computed in
            return out_u + guidance * (out_c - out_u)

        return model_fn

    @torch.no_grad()
    def sample_latent(self, x_cond: torch.Tensor, *, sampler: str = "dpmpp_2m", steps: int = 10,
                      guidance: float = 1.0, generator: torch.Generator | None = None, eta: float = 0.0,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
        """Samples clean latents ``(B, C_lat, H/f, W/f)`` for unstained tiles ``(B, C_in, H, W)``."""
        b, _, h, w = x_cond.shape
        shape = (b, self.latent_channels, h // self.downsampling, w // self.downsampling)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=x_cond.device, dtype=x_cond.dtype)
        cond = self.encode_condition(x_cond)
        kwargs = {"eta": eta} if sampler == "ddim" else {}
        return run_sampler(sampler, self.guided(cond, guidance), self.schedule, noise, steps=steps,
                           generator=generator, **kwargs)
