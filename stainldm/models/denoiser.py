"""The denoiser: MONAI ``DiffusionModelUNet`` over [noisy latent ‖ spatial condition]."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from stainldm.errors import ConfigError


@dataclass(frozen=True)
class DenoiserConfig:
    """UNet architecture.

    Attributes:
        channels: feature channels per level.
        num_res_blocks: residual blocks per level.
        attention_levels: self-attention (and cross-attention when conditioned) per level.
        num_head_channels: channels per attention head.
        norm_num_groups: GroupNorm groups (divides every entry of ``channels``).
        transformer_num_layers: transformer blocks per attention layer.
    """

    channels: tuple[int, ...] = (64, 128, 256)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, True, True)
    num_head_channels: int = 32
    norm_num_groups: int = 32
    transformer_num_layers: int = 1


def build_denoiser(cfg: DenoiserConfig, *, in_channels: int, out_channels: int,
                   cross_attention_dim: int | None) -> nn.Module:
    """The UNet; ``cross_attention_dim`` None builds it without cross-attention."""
    from monai.networks.nets import DiffusionModelUNet

    if len(cfg.attention_levels) != len(cfg.channels):
        raise ConfigError(f"ldm.denoiser.attention_levels has {len(cfg.attention_levels)} entries for "
                          f"{len(cfg.channels)} levels in ldm.denoiser.channels")
    if any(c % cfg.norm_num_groups for c in cfg.channels):
        raise ConfigError(f"ldm.denoiser.norm_num_groups ({cfg.norm_num_groups}) must divide every entry of "
                          f"ldm.denoiser.channels {list(cfg.channels)}")
    if any(c % cfg.num_head_channels for c, a in zip(cfg.channels, cfg.attention_levels, strict=True) if a):
        raise ConfigError(f"ldm.denoiser.num_head_channels ({cfg.num_head_channels}) must divide the channels of "
                          "every attention level")
    n = len(cfg.channels)
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=tuple(cfg.channels),
        num_res_blocks=(cfg.num_res_blocks,) * n, attention_levels=tuple(cfg.attention_levels),
        norm_num_groups=cfg.norm_num_groups, num_head_channels=cfg.num_head_channels,
        with_conditioning=cross_attention_dim is not None, cross_attention_dim=cross_attention_dim,
        transformer_num_layers=cfg.transformer_num_layers,
        use_flash_attention=True,  # SDPA: same function, memory linear in the tokens (models/_runtime.py)
    )
