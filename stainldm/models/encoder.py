"""Condition encoders of the unstained tile: a spatial conv stem and a semantic timm backbone.

* **spatial** — a small conv stem maps the ``C_in``-channel unstained tile to ``spatial_channels``
  feature maps at latent resolution, concatenated to the noisy latent: it keeps the generated
  H&E aligned with the tissue structure pixel for pixel.
* **semantic** — a timm backbone (``features_only``) whose last feature map becomes tokens for
  the denoiser's cross-attention: context about the tissue type beyond the local window.
  Built with ``pretrained=False`` unless a local weights file is given (timm adapts the first
  convolution to ``C_in`` channels); never downloads.

Both can be dropped for classifier-free guidance (Ho & Salimans 2022): the spatial features
become zeros and the tokens a learned "null" sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from stainldm.errors import ConfigError, one_line


@dataclass(frozen=True)
class ConditionConfig:
    """How the unstained tile conditions the denoiser.

    Attributes:
        spatial: use the conv stem (concatenated features).
        spatial_channels: its output channels.
        semantic: use the timm backbone (cross-attention tokens).
        backbone: timm model name (``resnet18``, ``convnext_atto``, ``efficientnet_b0``, ...).
        backbone_weights: local weights file for the backbone, or None (random init).
        freeze_backbone: keep the backbone's weights fixed.
        token_dim: width of the tokens (the denoiser's cross-attention dim).
        dropout: probability of dropping the condition during training (for guidance).
    """

    spatial: bool = True
    spatial_channels: int = 32
    semantic: bool = False
    backbone: str = "resnet18"
    backbone_weights: str | None = None
    freeze_backbone: bool = False
    token_dim: int = 128
    dropout: float = 0.1


class SpatialStem(nn.Module):
    """``(B, C_in, H, W)`` -> ``(B, c, H/f, W/f)`` with ``log2 f`` stride-2 stages."""

    def __init__(self, in_channels: int, out_channels: int, downsampling: int):
        super().__init__()
        stages = int(math.log2(downsampling))
        width = max(16, out_channels // 2)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU()]
        for i in range(stages):
            nxt = out_channels if i == stages - 1 else width
            layers += [nn.Conv2d(width, nxt, 3, stride=2, padding=1), nn.GroupNorm(8, nxt), nn.SiLU()]
            width = nxt
        if stages == 0:
            layers += [nn.Conv2d(width, out_channels, 3, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SemanticEncoder(nn.Module):
    """timm backbone -> ``(B, S, D)`` tokens (last feature map, projected, + position embedding)."""

    def __init__(self, cfg: ConditionConfig, in_channels: int):
        super().__init__()
        import timm

        weights = cfg.backbone_weights
        if weights is not None and not Path(weights).is_file():
            raise ConfigError(f"ldm.condition.backbone_weights: {weights} is not a file; give a local weights file "
                              "or null (nothing is downloaded)")
        kwargs = dict(features_only=True, in_chans=in_channels, out_indices=(-1,))
        try:
            if weights is None:
                self.backbone = timm.create_model(cfg.backbone, pretrained=False, **kwargs)
            else:
                _check_backbone_file(cfg.backbone, Path(weights))
                self.backbone = timm.create_model(cfg.backbone, pretrained=True,
                                                  pretrained_cfg_overlay={"file": str(weights)}, **kwargs)
        except RuntimeError as exc:
            msg = one_line(exc)[:300]
            raise ConfigError(f"ldm.condition.backbone '{cfg.backbone}': timm cannot build it ({msg})") from exc
        if cfg.freeze_backbone:
            self.backbone.requires_grad_(False)
        feat = self.backbone.feature_info.channels()[-1]
        self.proj = nn.Conv2d(feat, cfg.token_dim, 1)
        self.pos = nn.Parameter(torch.zeros(1, cfg.token_dim, 8, 8))
        nn.init.normal_(self.pos, std=0.02)

    @property
    def reduction(self) -> int:
        """Input pixels per token."""
        return int(self.backbone.feature_info.reduction()[-1])

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Projected last feature map ``(B, D, H/r, W/r)``; the backbone is convolutional, so a
        whole canvas can be encoded once and cropped per window (:meth:`tokens`)."""
        return self.proj(self.backbone(x)[-1])

    def tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        """Feature map (or a crop of it) + position embedding -> ``(B, S, D)`` tokens."""
        pos = nn.functional.interpolate(self.pos, size=fmap.shape[-2:], mode="bilinear", align_corners=False)
        return (fmap + pos).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(self.feature_map(x))  # (B, h*w, D)


def _check_backbone_file(name: str, path: Path) -> None:
    """The weights file must hold exactly the backbone's tensors (timm would ignore extra keys,
    so weights of a sibling network — resnet34 for resnet18 — would load silently)."""
    import timm

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"ldm.condition.backbone_weights: {path} is not a readable weights file "
                          f"({type(exc).__name__})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    own = set(timm.create_model(name, pretrained=False).state_dict())
    extra = sorted(set(state) - own)
    missing = sorted(k for k in own - set(state) if not k.startswith(("fc.", "head.", "classifier.")))
    if extra or missing:
        key = extra[0] if extra else missing[0]
        raise ConfigError(f"ldm.condition.backbone_weights: {path} does not match backbone '{name}' "
                          f"({'unexpected' if extra else 'missing'} tensor '{key}'); give weights of that network")


def check_condition_config(cfg: ConditionConfig) -> None:
    if not (cfg.spatial or cfg.semantic):
        raise ConfigError("ldm.condition: at least one of spatial and semantic must be true")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"ldm.condition.dropout ({cfg.dropout}) must be in [0, 1)")
    if cfg.spatial and cfg.spatial_channels % 8:
        raise ConfigError(f"ldm.condition.spatial_channels ({cfg.spatial_channels}) must be a multiple of 8")
    if cfg.semantic:
        import timm

        if not timm.is_model(cfg.backbone):
            raise ConfigError(f"ldm.condition.backbone '{cfg.backbone}' is not a timm model name")
